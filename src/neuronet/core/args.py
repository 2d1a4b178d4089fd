"""Checks of constructor arguments, shared by layers: each returns the clean value or raises ConfigError
naming the class, the argument, what it must be and what it got (so a hostile ``.nnet`` or YAML config
is rejected in the constructor, before anything is allocated)."""

from __future__ import annotations

import math
import numbers

from ..errors import ConfigError

MAX_SIZE = 2**31 - 1  # any one dimension


def size(owner: str, name: str, value, lo: int = 1, hi: int = MAX_SIZE) -> int:
    """An integer (not a bool, not a float) in [lo, hi]."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ConfigError(f"{owner}: {name} must be an integer, got {value!r:.80}")
    if not lo <= value <= hi:
        bound = f">= {lo}" if value < lo else f"<= {hi}"
        raise ConfigError(f"{owner}: {name} must be {bound}, got {value!r:.80}")
    return int(value)


def real(owner: str, name: str, value, lo: float = -math.inf, hi: float = math.inf, *,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite real number in the interval [lo, hi] (ends open as asked)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and \
        (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:  # an infinite bound is shown open: inf and nan are never accepted
        interval = f"{'(' if lo_open or lo == -math.inf else '['}{lo:g}, " \
                   f"{hi:g}{')' if hi_open or hi == math.inf else ']'}"
        raise ConfigError(f"{owner}: {name} must be in {interval}, got {value!r:.80}")
    return float(value)


def flag(owner: str, name: str, value) -> bool:
    """True or False (0 and 1 accepted)."""
    if value not in (True, False) or not isinstance(value, (bool, numbers.Integral)):
        raise ConfigError(f"{owner}: {name} must be True or False, got {value!r:.80}")
    return bool(value)
