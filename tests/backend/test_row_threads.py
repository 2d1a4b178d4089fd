"""row_threads: independent tasks at once on the NumPy backend's threads, one region at a time."""

import functools
import threading

import numpy as np
import pytest

from neuronet.backend import get_ops, row_threads


def test_split_covers_every_row_once_in_near_equal_blocks():
    for n, parts in ((64, 2), (40, 3), (7, 7), (5, 1)):
        blocks = row_threads.split(n, parts)
        rows = [r for block in blocks for r in range(n)[block]]
        assert rows == list(range(n)) and len(blocks) == parts
        assert max(map(len, (range(n)[b] for b in blocks))) - min(len(range(n)[b]) for b in blocks) <= 1


def test_numpy_blocks_keep_min_rows_each(monkeypatch):
    ops = get_ops("numpy")
    monkeypatch.setattr("neuronet.backend.blas_threads.threads", lambda: 4)
    assert ops.row_blocks(2 * row_threads.MIN_ROWS - 1) == (slice(0, 2 * row_threads.MIN_ROWS - 1),)
    assert len(ops.row_blocks(64)) == 4 and len(ops.row_blocks(40)) == 2
    monkeypatch.setattr("neuronet.backend.blas_threads.threads", lambda: 1)
    assert len(ops.row_blocks(64)) == 1


def test_tasks_run_at_once():
    """Two tasks that each wait for the other can only finish if they run at the same time."""
    meet = threading.Barrier(2, timeout=10)
    done = []
    get_ops("numpy").run_blocks([lambda: done.append(meet.wait()), lambda: done.append(meet.wait())])
    assert sorted(done) == [0, 1]


def test_an_error_in_any_task_is_raised_after_all_have_run():
    finished = threading.Event()

    def slow():
        threading.Event().wait(0.05)
        finished.set()

    def fails():
        raise ValueError("block 1 failed")

    with pytest.raises(ValueError, match="block 1 failed"):
        row_threads.run([slow, fails])
    assert finished.is_set()


def test_a_region_inside_a_region_runs_its_tasks_in_turn():
    order = []
    inner = [lambda: order.append("a"), lambda: order.append("b")]
    row_threads.run([lambda: row_threads.run(inner), lambda: None])
    assert order == ["a", "b"]


def test_stacked_products_split_over_the_threads_match_numpy(monkeypatch):
    from neuronet.backend import numpy_ops

    monkeypatch.setattr(numpy_ops, "STACK_SPLIT_WORK", 1)
    monkeypatch.setattr("neuronet.backend.blas_threads.threads", lambda: 3)
    ops, rng = get_ops("numpy"), np.random.default_rng(0)
    a, b = rng.standard_normal((5, 2, 4, 3)), rng.standard_normal((5, 2, 3, 6))
    assert len(ops._stack_blocks(a, b, np.empty((5, 2, 4, 6)))) == 3
    out = np.empty((5, 2, 4, 6))
    assert ops.matmul(a, b, out) is out and np.array_equal(out, np.matmul(a, b))
    broadcast = rng.standard_normal((1, 2, 3, 6))  # one matrix for every row of a: not split
    assert ops._stack_blocks(a, broadcast, out) == (slice(None),)
    assert np.array_equal(ops.matmul(a, broadcast, out), np.matmul(a, broadcast))


def _one_block_then_per_thread(monkeypatch, compute):
    """compute() with PASS_SPLIT_WORK out of reach (one block), then at 1 (a block per thread, three of
    them); asserts the two results are identical."""
    from neuronet.backend import numpy_ops

    monkeypatch.setattr("neuronet.backend.blas_threads.threads", lambda: 3)
    results = []
    for least in (1 << 62, 1):
        monkeypatch.setattr(numpy_ops, "PASS_SPLIT_WORK", least)
        results.append(compute())
    assert all(np.array_equal(a, b) for a, b in zip(*results, strict=True))


def test_pooling_in_image_blocks_matches_one_block(monkeypatch):
    ops, rng = get_ops("numpy"), np.random.default_rng(1)
    x, dy = rng.standard_normal((5, 3, 8, 8)), rng.standard_normal((5, 3, 4, 4))

    def compute():
        out, index, dx = np.empty((5, 3, 4, 4)), np.empty((5, 3, 4, 4), np.int64), np.empty_like(x)
        ops.max_pool2d(x, (2, 2), (2, 2), (0, 0), out, index)
        ops.max_pool2d_backward(dy, index, dx)
        return out, index, dx
    _one_block_then_per_thread(monkeypatch, compute)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_runs_regions_on_its_own_threads():
    import multiprocessing

    row_threads.run([lambda: None, lambda: None])  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply_async(_region_in_child).get(timeout=60) == [0, 1]


def _region_in_child():
    meet, done = threading.Barrier(2, timeout=10), []
    row_threads.run([lambda: done.append(meet.wait()), lambda: done.append(meet.wait())])
    return sorted(done)


@pytest.mark.parametrize("name", ["relu", "gelu", "tanh", "softmax", "log_softmax"])
def test_elementwise_activations_in_blocks_match_one_block(name, monkeypatch):
    """Elementwise passes in blocks of elements, the softmaxes in blocks of rows."""
    ops, rng = get_ops("numpy"), np.random.default_rng(2)
    z, dy = rng.standard_normal((7, 5, 3)), rng.standard_normal((7, 5, 3))

    def compute():
        y, dz = np.empty_like(z), np.empty_like(z)
        ops.activation(name, z, y)
        ops.activation_backward(name, dy, z, y, dz)
        return y, dz
    _one_block_then_per_thread(monkeypatch, compute)


@pytest.mark.parametrize("name", ["gelu", "relu"])
def test_bias_activations_in_row_blocks_match_one_block(name, monkeypatch):
    """z += bias, act, and act' with the bias gradient (a partial sum per block, added after) over rows in
    three blocks: the values as in one block, the bias gradient up to the order of its sums."""
    from neuronet.backend import numpy_ops

    ops, rng = get_ops("numpy"), np.random.default_rng(3)
    z0, dy, bias = rng.standard_normal((7, 5)), rng.standard_normal((7, 5)), rng.standard_normal(5)
    monkeypatch.setattr("neuronet.backend.blas_threads.threads", lambda: 3)
    results = []
    for least in (1 << 62, 1):
        monkeypatch.setattr(numpy_ops, "PASS_SPLIT_WORK", least)
        z, y, dz, dbias = z0.copy(), np.empty_like(z0), np.empty_like(z0), np.full(5, 0.5)
        ops.activation(name, z, y, bias=bias)
        ops.activation_backward(name, dy, z, y, dz, bias_grad=dbias)
        results.append((z, y, dz, dbias))
    (z1, y1, dz1, db1), (z3, y3, dz3, db3) = results
    assert np.array_equal(z1, z3) and np.array_equal(y1, y3) and np.array_equal(dz1, dz3)
    np.testing.assert_allclose(db3, db1, rtol=1e-12)
    np.testing.assert_allclose(db1, 0.5 + dz1.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("policy, spins", [("passive", False), ("PASSIVE ", False), ("active", True),
                                           ("", True)])
def test_omp_wait_policy_passive_turns_the_polling_off(policy, spins):
    """Under OMP_WAIT_POLICY=passive (OpenMP's and PyTorch's switch) a worker does not poll between
    regions; regions run as before."""
    import os
    import subprocess
    import sys

    code = ("import threading; from neuronet.backend import row_threads\n"
            "meet = threading.Barrier(2, timeout=10)\n"
            "for _ in range(3): row_threads.run([meet.wait, meet.wait])\n"
            "print(row_threads.SPIN_NS > 0)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_WAIT_POLICY": policy},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == str(spins)


def test_workers_wait_briefly_only_where_the_callers_task_goes_native():
    """A region whose task is a compiled function's call gets the short grace; one that runs Python first
    the long one (a worker asking for the GIL before the caller lets go of it sleeps on it)."""
    from neuronet.backend import kernels

    x = np.ones(8, np.float32)
    native = [functools.partial(kernels.activation_forward, 1, 0.0, x, x), functools.partial(np.add, x, x),
              functools.partial(x.fill, 0.0), functools.partial(np.copyto, x, x)]
    assert all(row_threads._goes_native(task) for task in native)
    python = [lambda: None, functools.partial(test_split_covers_every_row_once_in_near_equal_blocks)]
    assert not any(row_threads._goes_native(task) for task in python)
    workers = row_threads._workers()
    row_threads.run([functools.partial(np.add, x, x, out=x)] * 2)
    assert workers.grace[0] == row_threads.QUICK_GRACE_NS
    row_threads.run([lambda: None] * 2)
    assert workers.grace[0] == row_threads.GRACE_NS
