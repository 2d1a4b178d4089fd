"""Small matrix products on one OpenBLAS thread, large ones on all of them.

NumPy's OpenBLAS splits every GEMM over its threads. For the small per-step products of a recurrent
layer (e.g. 64x128 @ 128x512) the split costs more than it saves, and the second thread then spins
waiting for work while the Numba cell kernels run: measured 2026-12-06 on 2 cores, an LSTM training
step took 61-89 ms with 2 OpenBLAS threads and 15-18 ms with 1 (lightly loaded), and 420-1368 ms
without this switch against 71-122 ms with it (loaded), alternating in one process.
``before_product`` switches OpenBLAS to one thread for products under ``SMALL_GEMM`` multiply-adds and
back to the thread count that was set before for larger ones; it touches the library only when the
choice changes. Without a bundled OpenBLAS it does nothing.

An idle OpenBLAS worker spins (sched_yield) for 2^28 cycles, 0.1 s, before it sleeps: in a training loop
with a GEMM every few milliseconds it never sleeps, and holds a core that the NumPy backend's own
threads (row_threads) need. ``SPIN_LOG2`` shortens the spin to 2^14 cycles (~6 us) once, when this
module loads, unless OPENBLAS_THREAD_TIMEOUT or GOTO_THREAD_TIMEOUT is set (the user's choice wins).
Measured 2026-12-06 on 2 cores, training step medians over 4 process starts each, 2^18 cycles against
2^28: LSTM 8.3-9.7 ms against 11.4-15.3 ms; the MLP and the char GPT within the host's spread (2.97-5.04
against 3.16-5.77 ms, 45.8-58.4 against 44.2-54.3 ms). A spin of 2^4 cycles slowed the MLP and GPT.
2026-12-07, 2^14 against 2^18: after the char GPT's threaded products the row worker saw its next task
~60 us late (OpenBLAS's worker spun on its core) against ~4 us; steps, with row_threads' grace, five
alternating processes each: char GPT 27.1 against 27.9 ms, the others even (LSTM 4.29 against 4.30).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
from collections.abc import Iterator

import numpy as np

SMALL_GEMM = 1 << 23  # multiply-adds of one product below which it runs single-threaded
SPIN_LOG2 = 14  # an idle OpenBLAS worker spins 2^SPIN_LOG2 cycles before it sleeps (OpenBLAS: 28)
_SPIN_VARIABLES = ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")


@functools.cache
def _openblas_library():
    """(library, set_num_threads, get_num_threads) of NumPy's bundled OpenBLAS (ctypes), or None."""
    folder = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(folder, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                               ("openblas_", "")):
            setter = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                return lib, setter, getter
    return None


def _openblas():
    """(set_num_threads, get_num_threads) of NumPy's bundled OpenBLAS, its workers' spin shortened; or
    None."""
    found = _openblas_library()
    if found is None:
        return None
    _shorten_spin(found[0])
    return found[1:]


def _shorten_spin(lib) -> None:
    """Restart OpenBLAS's workers with a spin of 2^SPIN_LOG2 cycles: the library reads the timeout from
    the environment (openblas_read_env) when it starts its workers, and starts them again on the next
    threaded product after blas_thread_shutdown_ (as after a fork). The variable is removed again, so
    that child processes see the environment they were given."""
    read_env, shutdown = getattr(lib, "openblas_read_env", None), getattr(lib, "blas_thread_shutdown_", None)
    if read_env is None or shutdown is None or any(name in os.environ for name in _SPIN_VARIABLES):
        return
    os.environ[_SPIN_VARIABLES[0]] = str(SPIN_LOG2)
    try:
        read_env()
    finally:
        del os.environ[_SPIN_VARIABLES[0]]
    shutdown()


_LIB = _openblas()
_saved: list[int] = []  # the thread count to restore while a small product holds OpenBLAS at one
_held: list[bool] = []  # non-empty inside one_thread() or limit(): no product changes the thread count
_caps: list[int] = []  # inside limit(n): the threads every product and row block may use


def library():
    """NumPy's bundled OpenBLAS itself (a ctypes library), or None."""
    found = _openblas_library()
    return None if found is None else found[0]


def bundled():
    """NumPy's bundled OpenBLAS as (set_num_threads, get_num_threads), or None (NumPy on another BLAS)."""
    return _LIB


def threads() -> int:
    """The OpenBLAS threads a large product runs on (1 without a bundled OpenBLAS)."""
    if _LIB is None:
        return 1
    if _caps:
        return _caps[-1]
    return _saved[-1] if _saved else _LIB[1]()


@contextlib.contextmanager
def limit(n: int) -> Iterator[None]:
    """Every product on ``n`` OpenBLAS threads, and ``threads()`` n, until the block ends; then the count
    from before. For a worker pool's replicas, each with its share of the cores: a small product's
    switch to one thread, if one is pending, is undone first, so that no replica restores the full count
    (and runs its products on every core) inside the block."""
    use_all_threads()
    before = _LIB[1]() if _LIB is not None else 1
    _caps.append(n)
    _held.append(True)
    if _LIB is not None:
        _LIB[0](n)
    try:
        yield
    finally:
        _held.pop()
        _caps.pop()
        if _LIB is not None:
            _LIB[0](before)


class _OneThread:
    """``one_thread()``'s context: a plain class, where a generator's context machinery cost ~3 us of
    Python a row-thread region (35 regions a char GPT step)."""

    def __enter__(self) -> None:
        before_product(0, 0, 0)
        _held.append(True)

    def __exit__(self, *exc) -> None:
        _held.pop()


_ONE_THREAD = _OneThread()


def one_thread() -> _OneThread:
    """Hold every product at one OpenBLAS thread, whatever its size, inside a ``with`` block: for threads
    that each run their own products at once (row_threads)."""
    return _ONE_THREAD


def before_product(m: int, k: int, n: int) -> None:
    """Set OpenBLAS's threads for an (m x k) @ (k x n) product."""
    if _LIB is None or _held:
        return
    small = m * k * n < SMALL_GEMM
    if small and not _saved:
        threads = _LIB[1]()
        if threads > 1:
            _saved.append(threads)
            _LIB[0](1)
    elif not small:
        use_all_threads()


def use_all_threads() -> None:
    """Undo a small product's switch to one thread (not inside ``one_thread``)."""
    if _held:
        return
    try:
        threads = _saved.pop()
    except IndexError:  # (nothing to undo; checked this way because threads may race here)
        return
    _LIB[0](threads)
