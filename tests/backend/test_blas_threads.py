"""blas_threads: small products switch NumPy's OpenBLAS to one thread and large ones restore the count."""

import numpy as np
import pytest

from neuronet.backend import blas_threads, get_ops


@pytest.mark.skipif(blas_threads._LIB is None, reason="NumPy has no bundled OpenBLAS here")
def test_small_products_run_single_threaded_and_large_ones_restore_the_count(monkeypatch):
    set_threads, get_threads = blas_threads._LIB
    before = get_threads()
    monkeypatch.setattr(blas_threads, "_saved", [])  # whatever earlier products left
    set_threads(2)
    try:
        ops = get_ops("numpy")
        a, b = np.ones((8, 8), np.float32), np.ones((8, 8), np.float32)
        out = np.empty((8, 8), np.float32)
        ops.matmul(a, b, out)
        assert get_threads() == 1 and np.all(out == 8)
        monkeypatch.setattr(blas_threads, "SMALL_GEMM", 1)  # now every product counts as large
        ops.matmul(a, b, out)
        assert get_threads() == 2
    finally:
        set_threads(before)
