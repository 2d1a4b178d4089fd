"""One seedable source of randomness for initialisation, dropout and shuffling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_rng = np.random.default_rng()
_local = threading.local()  # .rng: this thread's own generator inside thread_stream


def manual_seed(seed: int) -> None:
    """Make initialisation, dropout masks and shuffling reproducible (like ``torch.manual_seed``)."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    """The current generator: this thread's own inside ``thread_stream``, else the global one (replaced
    by ``manual_seed``)."""
    own = getattr(_local, "rng", None)
    return _rng if own is None else own


@contextmanager
def thread_stream(seed: int) -> Iterator[None]:
    """This thread draws from a generator of its own, seeded with ``seed``, until the block ends: each
    shard of a pooled step gets the same masks whatever order the threads reach the generator in."""
    _local.rng = np.random.default_rng(seed)
    try:
        yield
    finally:
        _local.rng = None
