"""Parameter models shared by the config file and the plug-ins (pydantic, unknown keys forbidden)."""
from __future__ import annotations

from fractions import Fraction
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


class StrictModel(BaseModel):
    """Every config table: a misspelled key is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def parse_number(value):
    """Accept 0.03, 3, "0.03" or a fraction such as "8/255" (how the papers write budgets)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction like \"8/255\", got {value!r}") from None
    raise ValueError(f"expected a number or a fraction like \"8/255\", got {type(value).__name__}")


Number = Annotated[float, BeforeValidator(parse_number)]


def parse_step(value):
    """A step size: absolute (0.004, "1/255") or relative to the budget ("eps", "eps/8", "2.5*eps")."""
    if isinstance(value, str) and "eps" in value:
        expr = value.replace(" ", "")
        try:
            if expr == "eps":
                factor = 1.0
            elif expr.startswith("eps/"):
                factor = 1.0 / float(Fraction(expr[4:]))
            elif expr.endswith("*eps"):
                factor = float(Fraction(expr[:-4]))
            elif expr.startswith("eps*"):
                factor = float(Fraction(expr[4:]))
            else:
                raise ValueError
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a step like \"1/255\", \"eps/8\" or \"2.5*eps\", got {value!r}") from None
        if factor <= 0:
            raise ValueError(f"step size must be positive, got {value!r}")
        return f"eps*{factor!r}"
    number = parse_number(value)
    if number <= 0:
        raise ValueError(f"step size must be positive, got {value!r}")
    return number


def step_value(step, eps: float) -> float:
    return eps * float(step[4:]) if isinstance(step, str) else float(step)


StepSize = Annotated[float | str, BeforeValidator(parse_step)]
