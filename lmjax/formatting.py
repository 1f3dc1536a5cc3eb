"""Numbers as people read them, for the sweep's tables and the report (one format each)."""

from __future__ import annotations

import math


def finite(v) -> bool:
    """A real, finite number (not None, NaN, a string or a bool)."""
    if v is None or isinstance(v, (bool, str)):
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def si(v, digits: int = 3, *, empty: str = "") -> str:
    """12345 -> '12.3k' (k, M, G, T; `digits` significant digits)."""
    if not finite(v):
        return empty
    v = float(v)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.{digits}g}{unit}"
    return f"{v:.{digits}g}"


def sci(v, *, empty: str = "") -> str:
    """1.23456e10 -> '1.235e10'."""
    if not finite(v):
        return empty
    mant, exp = f"{float(v):.3e}".split("e")
    return f"{mant}e{int(exp)}"


def fixed(v, spec: str = ".4f", *, empty: str = "") -> str:
    """format(v, spec) for a finite number, else `empty`."""
    return format(float(v), spec) if finite(v) else empty


def duration(v, *, empty: str = "") -> str:
    """Seconds -> '9.6 s', '1m05s', '2h03m'."""
    if not finite(v):
        return empty
    s = float(v)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"
