"""GradientSync in one process, against a recording communicator: buckets start during backward, from the
tail of the flat buffer, each scaled once, and every gradient is reduced exactly once."""

from __future__ import annotations

import numpy as np

import neuronet as nn
from neuronet.distributed import GradientSync
from neuronet.distributed.comm import Communicator


class Recorder(Communicator):
    """Two identical ranks: a sum doubles the array. Records each reduced range and when it started."""

    name = "recorder"

    def __init__(self, model):
        super().__init__(0, 2, timeout=5)
        self.model, self.calls, self.in_backward = model, [], False

    def iallreduce(self, array):
        start = (array.__array_interface__["data"][0] - self.model.flat_grads.__array_interface__["data"][0])
        self.calls.append((start // array.itemsize, array.size, self.in_backward))
        array *= 2
        return None

    def _done(self, handle):
        return True


def _model():
    model = nn.Sequential(nn.Dense(8, 64, activation="relu"), nn.Dense(64, 64, activation="relu"),
                          nn.Dense(64, 64), nn.ReLU(), nn.Dense(64, 3)).compile("sgd", "cross_entropy")
    model.build((8,))
    return model


def test_buckets_start_during_backward_and_cover_the_buffer_once():
    model = _model()
    x, y = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), np.arange(16) % 3
    model._gradients(x, y)
    want = np.array(model.flat_grads)
    comm = Recorder(model)
    sync = GradientSync(comm, model, bucket_bytes=4 * 64 * 65)  # about one hidden layer per bucket
    sync.begin(0.25)
    comm.in_backward = True
    model._gradients(x, y)
    comm.in_backward = False
    sync.finish()
    assert model.grad_ready is None  # the listener is gone after the step
    covered = np.zeros(model.num_params(), int)
    for start, size, _ in comm.calls:
        covered[start:start + size] += 1
    assert (covered == 1).all()
    assert sum(during for *_, during in comm.calls) >= 2, comm.calls  # overlapped with backward
    assert comm.calls[0][0] + comm.calls[0][1] == model.num_params()  # the tail first
    np.testing.assert_allclose(model.flat_grads, want * 0.25 * 2, rtol=1e-6)


def test_layers_may_report_out_of_order():
    model = _model()
    comm = Recorder(model)
    sync = GradientSync(comm, model, bucket_bytes=4)
    model.flat_grads[:] = 1.0
    sync.begin(1.0)
    sync.ready(model.layers[2])  # not yet contiguous with the tail: nothing may start
    assert comm.calls == []
    sync.ready(model.layers[4])  # the tail: layers 2..4 are now final (the ReLU has no gradient)
    assert [c[0] for c in comm.calls] == [model.num_params() - 64 * 3 - 3 - 64 * 64 - 64]
    sync.finish()
    np.testing.assert_array_equal(model.flat_grads, 2.0)


def test_a_synchronised_step_allocates_nothing_in_steady_state():
    from neuronet.testing import assert_step_allocates_nothing

    model = _model()
    comm = Recorder(model)
    comm.calls = _Forget()
    sync = GradientSync(comm, model, bucket_bytes=4 * 64 * 65)
    x, y = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), np.arange(16) % 3

    def step():
        sync.begin(0.5)
        model._gradients(x, y)
        sync.finish()
        model.optimizer.step(model.flat_params, model.flat_grads)

    assert_step_allocates_nothing(step)


class _Forget(list):
    def append(self, item):  # the recorder's log would grow: keep nothing
        pass
