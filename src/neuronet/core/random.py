"""One seedable source of randomness for initialisation, dropout and shuffling."""

from __future__ import annotations

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Make initialisation, dropout masks and shuffling reproducible (like ``torch.manual_seed``)."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    """The current generator (replaced by ``manual_seed``)."""
    return _rng
