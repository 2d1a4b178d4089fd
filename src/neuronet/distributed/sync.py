"""Keeping K model copies identical: rank 0's weights broadcast once, then averaged gradients every step."""

from __future__ import annotations

import json
import time

import numpy as np

from ..errors import ConfigError
from .comm import Communicator


def broadcast_model(comm: Communicator, model) -> None:
    """Check that every rank built the same architecture, then copy rank 0's parameters and buffers.

    A different architecture raises ConfigError on every rank naming the first parameter (or buffer)
    that differs from rank 0's, instead of reducing mismatched buffers.
    """
    mine = [[name, list(shape)] for name, _, _, shape, _ in model.param_specs()]
    mine += [[name, list(value.shape)] for name, value in model.named_buffers()]
    mine.append(["dtype", str(model.dtype)])
    text = np.frombuffer(json.dumps(mine).encode(), np.uint8)
    size = comm.broadcast(np.array([text.size], np.int64), what="the architecture check")
    theirs = np.zeros(int(size[0]), np.uint8)
    if comm.rank == 0:
        theirs[:] = text
    root = json.loads(comm.broadcast(theirs, what="the architecture check").tobytes())
    first = next((i for i, (a, b) in enumerate(zip(mine, root, strict=False)) if a != b),
                 None if len(mine) == len(root) else min(len(mine), len(root)))
    where = np.zeros(comm.size, np.float64)  # rank r's first difference + 1, 0 when it matches
    where[comm.rank] = 0 if first is None else first + 1
    comm.allreduce(where, what="the architecture check")
    bad = [(r, int(i) - 1) for r, i in enumerate(where) if i]
    if bad:
        r, i = bad[0]
        def describe(entries, who):
            if i >= len(entries):
                return f"{who} has no entry {i}"
            name, shape = entries[i]
            return f"{who} has {name!r} " + (f"= {shape}" if name == "dtype" else f"of shape {tuple(shape)}")

        here = f", rank {r} {describe(mine, 'here')[5:]}" if r == comm.rank else ""
        raise ConfigError(f"distributed: the model architectures differ across ranks: the first difference "
                          f"is at parameter {i}: {describe(root, 'rank 0')}{here} ({len(bad)} rank(s) differ "
                          "from rank 0). Every rank must build the same model")
    comm.broadcast(model.flat_params, what="the initial parameter broadcast")
    broadcast_buffers(comm, model)


def broadcast_buffers(comm: Communicator, model) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank, as DDP's broadcast_buffers."""
    handles = [comm.ibroadcast(value) for _, value in model.named_buffers()]
    comm.wait(handles, "the buffer broadcast")


class GradientSync:
    """Average ``model.flat_grads`` over the ranks in buckets, each started as soon as it is final.

    The flat buffer is laid out in layer order and backward runs the last layer first, so the tail of
    the buffer is final first. A model that calls ``model.grad_ready(layer)`` after each layer's
    backward (Sequential does) lets every finished bucket of at least ``bucket_bytes`` start its
    non-blocking allreduce while earlier layers still compute, as PyTorch DDP does; ``finish`` starts
    the rest and waits. Layers may report in any order: a bucket starts only below the contiguous
    finished tail. Each rank scales its gradient by (its samples / the global batch) before the sum,
    so the result is the gradient of the mean loss over the global batch, also for uneven shards.
    """

    def __init__(self, comm: Communicator, model, bucket_bytes: int = 1 << 20, overlap: bool = True):
        self.comm, self.model = comm, model
        self.overlap = overlap and hasattr(type(model), "grad_ready")
        self.bucket = max(1, bucket_bytes // model.dtype.itemsize)
        self.total = model.num_params()
        self.ranges: list[tuple[int, int]] = []
        self.index: dict[int, int] = {}
        offset = sum(int(np.prod(shape)) for shape, _ in model._param_specs.values())
        for child in model.children.values():
            n = child.num_params()
            if n:
                self.index[id(child)] = len(self.ranges)
                self.ranges.append((offset, offset + n))
            offset += n
        self.wait_seconds = 0.0  # time finish() spent blocked on communication, summed over steps
        self.steps = 0
        self._handles: list = []

    def begin(self, scale: float) -> None:
        """Before backward: gradients will be scaled by ``scale`` (local / global batch) then summed."""
        self.scale = float(scale)
        self.done = [False] * len(self.ranges)
        self.frontier = len(self.ranges)  # ranges[frontier:] are all final
        self.launched = self.total  # grads[launched:] are being reduced
        self._handles.clear()
        if self.overlap:
            self.model.grad_ready = self.ready

    def ready(self, layer) -> None:
        i = self.index.get(id(layer))
        if i is None:
            return
        self.done[i] = True
        while self.frontier and self.done[self.frontier - 1]:
            self.frontier -= 1
        start = self.ranges[self.frontier][0] if self.frontier < len(self.ranges) else self.total
        if self.launched - start >= self.bucket:
            self._launch(start)
        elif self._handles:
            self.comm.progress(self._handles)

    def _launch(self, start: int) -> None:
        grads = self.model.flat_grads[start:self.launched]
        if self.scale != 1.0:
            if isinstance(grads, np.ndarray):
                np.multiply(grads, grads.dtype.type(self.scale), out=grads)
            else:
                grads.mul_(self.scale)
        self._handles.append(self.comm.iallreduce(grads))
        self.launched = start

    def finish(self) -> None:
        """After backward: reduce what is left and wait for every bucket."""
        self.model.__dict__.pop("grad_ready", None)
        if self.launched:
            self._launch(0)
        start = time.perf_counter()
        self.comm.wait(self._handles, "the gradient allreduce")
        self.wait_seconds += time.perf_counter() - start
        self.steps += 1

    def cancel(self) -> None:
        """Backward failed: stop listening (the error ends this rank; the others time out or abort)."""
        self.model.__dict__.pop("grad_ready", None)
