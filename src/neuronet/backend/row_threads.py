"""Independent row blocks of work, one per core: the NumPy backend's own threads.

A recurrent layer's time loop cannot be split over time, but the rows of its batch never meet: rows
0..31 and 32..63 of a batch of 64 run the same loop on their own states. On the NumPy backend each
step is a small GEMM (OpenBLAS splits it badly) and a Numba cell kernel; both release the GIL, so two
Python threads, each looping over its own rows with OpenBLAS held at one thread, keep two cores busy
where one was before. The same holds for a convolution's image chunks, attention's samples, pooling and
elementwise passes (NumpyOps). ``run`` is the mechanism, ``split`` the blocks; one region runs at a time
(a second caller, e.g. a replica on another thread, runs its tasks itself, one after the other). A
region costs about 75 us (two cores), so callers split only work well above that.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from . import blas_threads

MIN_ROWS = 16  # rows per block below which the GEMM gains less than the hand-off costs

_busy = threading.Lock()


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="neuronet-rows")


def _after_fork() -> None:
    """A forked child has none of the parent's threads (nor its region): it starts its own."""
    global _busy
    _pool.cache_clear()
    _busy = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


@functools.lru_cache(maxsize=1024)
def split(n: int, parts: int) -> tuple[slice, ...]:
    """``parts`` near-equal ranges of n rows."""
    bounds = [n * k // parts for k in range(parts + 1)]
    return tuple(slice(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False))


def run(tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` (independent of each other) at once, the first on this thread, and wait for all;
    an exception in any of them is raised here once all have finished."""
    if len(tasks) == 1 or not _busy.acquire(blocking=False):
        for task in tasks:
            task()
        return
    try:
        with blas_threads.one_thread():
            futures = [_pool(len(tasks) - 1).submit(task) for task in tasks[1:]]
            try:
                tasks[0]()
            finally:
                for future in futures:  # wait for every block before the buffers are reused
                    future.exception()
            for future in futures:
                future.result()
    finally:
        _busy.release()
