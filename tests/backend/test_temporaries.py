"""ops.temporary: one grow-only buffer per (name, dtype) and thread, shared by every layer."""

import threading

import numpy as np
import pytest

import neuronet as nn
from neuronet.backend import get_ops


def _address(ops, a) -> int:
    return a.data_ptr() if ops.name == "torch" else a.__array_interface__["data"][0]


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_one_buffer_per_name_and_dtype_grown_to_the_largest_request(name):
    if name == "torch":
        pytest.importorskip("torch")
    ops = get_ops(name)
    big = ops.temporary("test.a", (4, 5), np.float32)
    small = ops.temporary("test.a", (2, 3), np.float32)
    assert tuple(small.shape) == (2, 3) and _address(ops, small) == _address(ops, big)
    other = ops.temporary("test.b", (2, 3), np.float32)
    double = ops.temporary("test.a", (2, 3), np.float64)
    assert len({_address(ops, big), _address(ops, other), _address(ops, double)}) == 3
    grown = ops.temporary("test.a", (10, 10), np.float32)
    assert tuple(grown.shape) == (10, 10) and ops.temporary("test.a", (4, 5), np.float32).shape == (4, 5)


def test_each_thread_has_its_own():
    ops = get_ops("numpy")
    here = ops.temporary("test.thread", (8,), np.float32)
    there = []
    worker = threading.Thread(target=lambda: there.append(ops.temporary("test.thread", (8,), np.float32)))
    worker.start()
    worker.join(timeout=10)
    assert not np.shares_memory(here, there[0])


def test_layers_share_their_backward_temporaries():
    """Two Dense layers of one model get dL/dz in the same memory (one buffer, not one per layer)."""
    model = nn.Sequential(nn.Dense(6, 6, activation="relu"), nn.Dense(6, 6, activation="relu"))
    model.build((6,))
    a, b = model.layers
    assert np.shares_memory(a.temporary("dz", (3, 6)), b.temporary("dz", (3, 6)))
