"""Small matrix products on one OpenBLAS thread, large ones on all of them.

NumPy's OpenBLAS splits every GEMM over its threads. For the small per-step products of a recurrent
layer (e.g. 64x128 @ 128x512) the split costs more than it saves, and the second thread then spins
waiting for work while the Numba cell kernels run: measured 2026-12-06 on 2 cores, an LSTM training
step took 61-89 ms with 2 OpenBLAS threads and 15-18 ms with 1 (lightly loaded), and 420-1368 ms
without this switch against 71-122 ms with it (loaded), alternating in one process.
``before_product`` switches OpenBLAS to one thread for products under ``SMALL_GEMM`` multiply-adds and
back to the thread count that was set before for larger ones; it touches the library only when the
choice changes. Without a bundled OpenBLAS it does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

SMALL_GEMM = 1 << 23  # multiply-adds of one product below which it runs single-threaded


def _openblas():
    """(set_num_threads, get_num_threads) of NumPy's bundled OpenBLAS, or None."""
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
                return setter, getter
    return None


_LIB = _openblas()
_saved: list[int] = []  # the thread count to restore while a small product holds OpenBLAS at one


def before_product(m: int, k: int, n: int) -> None:
    """Set OpenBLAS's threads for an (m x k) @ (k x n) product."""
    if _LIB is None:
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
    """Undo a small product's switch to one thread."""
    try:
        threads = _saved.pop()
    except IndexError:  # (nothing to undo; checked this way because threads may race here)
        return
    _LIB[0](threads)
