"""How numbers read in verdicts, advice, tables and reports: one formatter for each kind.

A missing or non-finite value is never printed as ``nan``: prose (verdicts, advice) says ``n/a``,
tables pass ``missing="–"`` so an empty cell stays narrow.
"""

from __future__ import annotations

import math

NA = "n/a"


def _usable(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def num(x: float | None, digits: int = 3, missing: str = NA) -> str:
    """A score or a rate: ``0.912``."""
    return f"{x:.{digits}f}" if _usable(x) else missing


def signed(x: float | None, digits: int = 3, missing: str = NA) -> str:
    """A difference, with its sign: ``+0.041``."""
    return f"{x:+.{digits}f}" if _usable(x) else missing


def p_value(p: float | None, missing: str = NA, tiny: str | None = None) -> str:
    """A p-value: three decimals, and below 0.001 two significant digits (``4.2e-05``), or
    ``tiny`` where given (tables print ``<0.001``: the exact size of a tiny p says nothing more)."""
    if p is None or not math.isfinite(p):
        return missing
    if p < 0.001:
        return tiny if tiny is not None else f"{p:.2g}"
    return f"{p:.3f}"


# Table cells: a dash for a missing value, and "<0.001" for a tiny p.
DASH = "–"


def cell(x: float | None, digits: int = 3) -> str:
    return num(x, digits, DASH)


def signed_cell(x: float | None) -> str:
    return signed(x, missing=DASH)


def p_cell(p: float | None) -> str:
    return p_value(p, DASH, tiny="<0.001")
