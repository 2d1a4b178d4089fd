"""blas_threads: small products switch NumPy's OpenBLAS to one thread and large ones restore the count; its
idle workers spin briefly."""

import os
import subprocess
import sys

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


def _spin_in_child(env):
    """(the spin OpenBLAS read from the environment, whether the variable is left set) in a new process."""
    code = ("import ctypes, os; from neuronet.backend import blas_threads as b; "
            "lib = b._openblas_library()[0]; "
            "print(lib.openblas_thread_timeout(), os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(blas_threads._LIB is None, reason="NumPy has no bundled OpenBLAS here")
def test_idle_workers_spin_briefly_and_the_environment_is_left_as_it_was():
    env = {k: v for k, v in os.environ.items() if k not in blas_threads._SPIN_VARIABLES}
    assert _spin_in_child(env) == [str(blas_threads.SPIN_LOG2), "None"]


@pytest.mark.skipif(blas_threads._LIB is None, reason="NumPy has no bundled OpenBLAS here")
def test_the_users_own_spin_wins():
    assert _spin_in_child(dict(os.environ, OPENBLAS_THREAD_TIMEOUT="25")) == ["25", "25"]


@pytest.mark.skipif(blas_threads._LIB is None, reason="NumPy has no bundled OpenBLAS here")
def test_one_thread_holds_every_product_at_one_thread(monkeypatch):
    set_threads, get_threads = blas_threads._LIB
    before = get_threads()
    monkeypatch.setattr(blas_threads, "_saved", [])
    set_threads(2)
    try:
        a = np.ones((512, 512), np.float32)
        with blas_threads.one_thread():
            get_ops("numpy").matmul(a, a, np.empty_like(a))  # large: would restore 2 threads outside
            assert get_threads() == 1 and blas_threads.threads() == 2
        assert not blas_threads._held
    finally:
        set_threads(before)


@pytest.mark.skipif(blas_threads._LIB is None, reason="NumPy has no bundled OpenBLAS here")
def test_limit_holds_products_and_row_blocks_to_a_workers_share(monkeypatch):
    """A worker pool's replicas run inside limit(1): a small product's pending switch back to every
    thread, left by a step outside the pool, must not give them every core (the char GPT example ran
    3x slower when an evaluation's last product had been small)."""
    set_threads, get_threads = blas_threads._LIB
    before = get_threads()
    monkeypatch.setattr(blas_threads, "_saved", [])
    set_threads(2)
    ops = get_ops("numpy")
    try:
        blas_threads.before_product(8, 8, 8)  # small: one thread, the count of 2 pending
        with blas_threads.limit(1):
            assert blas_threads.threads() == 1 and len(ops.row_blocks(64)) == 1
            blas_threads.before_product(4096, 4096, 4096)  # large: would restore 2 outside the limit
            assert get_threads() == 1
        assert get_threads() == 2 and blas_threads.threads() == 2 and len(ops.row_blocks(64)) == 2
    finally:
        set_threads(before)
