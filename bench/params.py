"""Parameter models shared by the config file and the plug-ins (pydantic, unknown keys forbidden)."""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Annotated, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_serializer


class StrictModel(BaseModel):
    """Every config table: a misspelled key is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # options added after results were keyed by these params: left out of the serialized params while at these
    # values, so every earlier checkpoint or cell key stays valid (a subclass extends the dict)
    omit_at_default: ClassVar[dict] = {}

    @model_serializer(mode="wrap")
    def _omit_later_options_at_default(self, handler):
        data = handler(self)
        for key, default in self.omit_at_default.items():
            if key in data and data[key] == default:
                data.pop(key)
        return data


def parse_number(value):
    """Accept 0.03, 3, "0.03" or a fraction such as "8/255" (how the papers write budgets); finite numbers only."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(Fraction(value.replace(" ", "")))
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"expected a number or a fraction like \"8/255\", got {value!r}") from None
        else:
            raise ValueError(f"expected a number or a fraction like \"8/255\", got {type(value).__name__}")
    except OverflowError:
        raise ValueError(f"expected a finite number, got {value!r} (too large)") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


Number = Annotated[float, BeforeValidator(parse_number)]


def parse_step(value):
    """A step size: absolute (0.004, "1/255"), relative to the budget ("eps", "eps/8", "2.5*eps"), or relative to
    the budget and the step count ("2.5*eps/steps": Madry et al.'s rule, a total travel of 2.5 eps whatever the
    number of steps, so that a profile that cuts the steps keeps the attack's reach).

    Relative steps are stored as "eps*F" or "eps*F/steps" (F a float), which parses back to itself."""
    if isinstance(value, str) and "eps" in value:  # note: "steps" contains "eps" too
        expr = value.replace(" ", "")
        per_step = expr.endswith("/steps")
        if per_step:
            expr = expr[:-len("/steps")]
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
            raise ValueError(f"expected a step like \"1/255\", \"eps/8\", \"2.5*eps\" or \"2.5*eps/steps\", "
                             f"got {value!r}") from None
        if factor <= 0:
            raise ValueError(f"step size must be positive, got {value!r}")
        return f"eps*{factor!r}/steps" if per_step else f"eps*{factor!r}"
    number = parse_number(value)
    if number <= 0:
        raise ValueError(f"step size must be positive, got {value!r}")
    return number


def step_value(step, eps: float, steps: int | None = None) -> float:
    """The absolute step size of a parsed step at budget `eps` for an attack of `steps` iterations (needed only
    by a step relative to the step count, "eps*F/steps")."""
    if not isinstance(step, str):
        return float(step)
    if step.endswith("/steps"):
        if steps is None:
            raise ValueError(f"step size {step!r} depends on the step count, and none was given")
        return eps * float(step[4:-len("/steps")]) / steps
    return eps * float(step[4:])


StepSize = Annotated[float | str, BeforeValidator(parse_step)]


def _accepted_types(annotation, metadata=()):
    """The plain types a field accepts (int, float, bool, str, None), or None when a validator of its own, Any or
    a container type decides."""
    import types
    import typing

    from pydantic.functional_validators import BeforeValidator, PlainValidator, WrapValidator

    if any(isinstance(m, (BeforeValidator, PlainValidator, WrapValidator)) for m in metadata):
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        return _accepted_types(base, meta)
    if origin in (typing.Union, types.UnionType):
        kinds: set = set()
        for arg in typing.get_args(annotation):
            k = _accepted_types(arg)
            if k is None:
                return None
            kinds |= k
        return kinds
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if annotation in (int, float, bool, str, type(None)):
        return {annotation}
    return None


def _item_annotation(annotation):
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _item_annotation(typing.get_args(annotation)[0])
    if origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return args[0] if len(args) == 1 or origin is not tuple else None
    return None


def _non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    return False


def _value_problem(annotation, metadata, value) -> str:
    kinds = _accepted_types(annotation, metadata)
    if kinds is not None and isinstance(value, bool) and bool not in kinds:
        wanted = "a whole number" if kinds & {int} and not kinds & {float} else "a number" if kinds & {int, float} else "a string"
        return f"expected {wanted}, got a boolean"
    if kinds is not None and int in kinds and not kinds & {float, str, bool} and isinstance(value, (float, str)):
        return f"expected a whole number, got {type(value).__name__} {value!r}"
    if _non_finite(value):
        return "expected a finite number"
    item = _item_annotation(annotation)
    if item is not None and isinstance(value, list):
        for v in value:
            problem = _value_problem(item, (), v)
            if problem:
                return f"{problem} in the list"
    return ""


def lax_values(model, data) -> list[tuple[tuple, object, str]]:
    """(location, value, problem) of every value pydantic's lax mode would silently coerce or let through:
    a boolean for a number (`steps = true` would run 1 step), a float or string for a whole number, and
    inf / nan anywhere. Nested models are checked field by field."""
    from pydantic import BaseModel

    found = []
    if not isinstance(data, dict):
        return found
    for key, value in data.items():
        info = model.model_fields.get(key)
        if info is None:
            continue  # an unknown key: pydantic reports it
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
            found += [((key, *loc), v, msg) for loc, v, msg in lax_values(annotation, value)]
            continue
        problem = _value_problem(annotation, info.metadata, value)
        if problem:
            found.append(((key,), value, problem))
    return found


def budget_problem(params, shape, dataset: str = "", default_norm: str | None = None) -> str:
    """Why an `eps` (with a `norm`, else `default_norm`) cannot be meant: larger than the largest distance between
    two images in [0, 1] of this shape, where every point would count as fooled ("" when it is fine)."""
    eps, norm = getattr(params, "eps", None), getattr(params, "norm", None) or default_norm
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or norm not in ("linf", "l2", "l1"):
        return ""
    d = math.prod(shape)
    top = {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[norm]
    if eps <= top:
        return ""
    size = "x".join(str(n) for n in shape)
    return (f"larger than the largest {norm} distance between two images in [0, 1] ({top:.6g} for {dataset} "
            f"images of {size}), so every point would count as fooled. Allowed: 0 to {top:.6g}")
