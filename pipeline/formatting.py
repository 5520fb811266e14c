"""How numbers read in ``vidsift stats`` (terminal) and its HTML report: one definition for both."""

from __future__ import annotations

from typing import Any

MISSING = "–"


def fmt(x: Any, digits: int = 4) -> str:
    """A count with thousands separators, a float to ``digits`` significant digits, booleans as yes/no."""
    if x is None:
        return MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 10**digits else f"{x:.{digits}g}"
    return str(x)


def hours(h: float | None) -> str:
    """A duration given in hours: ``2.50 h``, or ``12.5 min`` below an hour."""
    return MISSING if h is None else f"{h:.2f} h" if h >= 1 else f"{h * 60:.1f} min"


def top_values(top: list[dict]) -> str:
    """``value (clips), ...`` of a most-frequent-values list from ``stats``."""
    return ", ".join(f"{x['value']} ({fmt(x['clips'])})" for x in top)
