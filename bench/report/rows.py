"""Reading one result row: its numbers and its threat model (shared by the tables and the checks across cells)."""
from __future__ import annotations


def to_float(value, default=0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def threat_model(row: dict) -> tuple[str, float] | None:
    """(norm, eps) of a row's attack; None for rows without a budget (noise, a minimum-norm attack with no eps)."""
    norm, eps = row.get("norm") or "", row.get("eps")
    if not norm or eps in ("", None):
        return None
    return norm, float(f"{to_float(eps):.6g}")  # '30' and '30.0' are one threat model


def format_eps(norm: str, eps: str) -> str:
    if eps in ("", None):
        return ""
    v = to_float(eps)
    if norm == "linf" and v > 0 and abs(v * 255 - round(v * 255)) < 1e-3:
        return f"{round(v * 255)}/255"
    return f"{v:g}"


NORM_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1", "l0": "L0"}


def threat_label(tm: tuple[str, float]) -> str:
    """'Linf 8/255', 'L2 0.5'."""
    return f"{NORM_NAMES.get(tm[0], tm[0])} {format_eps(tm[0], str(tm[1]))}"
