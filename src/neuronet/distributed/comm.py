"""Communicators: the few collectives data parallelism needs, on MPI (mpi4py) or torch.distributed.

Every collective is started non-blocking and waited for by polling against a deadline, so a rank that
died or stopped answering turns into a DistributedError on the others within ``timeout`` seconds
instead of a hang. Arrays are NumPy arrays or torch tensors; reductions are in place and sum.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

import numpy as np

# Seconds a failing rank waits between printing its error and aborting the job: mpiexec and torchrun
# forward output asynchronously, and an abort can otherwise cut off the message's last line.
ABORT_GRACE_S = 0.5


class DistributedError(RuntimeError):
    """A collective failed or timed out: a rank died, stopped answering or disagrees."""


class Communicator:
    """Base: ``rank``, ``size``, non-blocking ``iallreduce``/``ibroadcast`` and a bounded ``wait``."""

    name = ""

    def __init__(self, rank: int, size: int, timeout: float):
        self.rank, self.size, self.timeout = rank, size, float(timeout)

    # ---------------------------------------------------------------- primitives (subclasses)
    def iallreduce(self, array) -> Any:
        """Start an in-place sum of ``array`` over all ranks; returns a handle for ``wait``."""
        raise NotImplementedError

    def ibroadcast(self, array, root: int = 0) -> Any:
        """Start copying rank ``root``'s ``array`` into every rank's ``array``."""
        raise NotImplementedError

    def _done(self, handle) -> bool:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every process of the job (used after an error that the other ranks cannot see)."""
        os._exit(code)

    def close(self) -> None:
        """Leave the job cleanly (every rank calls it)."""

    # ---------------------------------------------------------------- built on them
    def wait(self, handles: list, what: str) -> None:
        """Wait for every handle, at most ``timeout`` seconds; DistributedError naming ``what`` after."""
        deadline = time.monotonic() + self.timeout
        pending = list(handles)
        spins = 0
        while pending:
            pending = [h for h in pending if not self._done(h)]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"rank {self.rank}/{self.size} ({self.name}): {what} got no answer from the other ranks "
                    f"within {self.timeout:g} s: a rank died, stopped answering, or skipped this step "
                    "(set the limit with nn.distributed.init(timeout=...) or NEURONET_DIST_TIMEOUT)")
            spins += 1
            time.sleep(0 if spins < 200 else 0.0002)  # spin briefly (latency), then yield the core

    def progress(self, handles: list) -> None:
        """Let the library move pending transfers along (MPI progresses only inside MPI calls)."""
        for h in handles:
            self._done(h)

    def allreduce(self, array, what: str = "allreduce"):
        self.wait([self.iallreduce(array)], what)
        return array

    def broadcast(self, array, root: int = 0, what: str = "broadcast"):
        self.wait([self.ibroadcast(array, root)], what)
        return array


class MPIComm(Communicator):
    """MPI_COMM_WORLD through mpi4py (launched by ``mpiexec``/``srun``)."""

    name = "mpi"

    def __init__(self, timeout: float):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        super().__init__(self.comm.Get_rank(), self.comm.Get_size(), timeout)
        _abort_on_uncaught(self)

    def iallreduce(self, array):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, _host(array), op=self.MPI.SUM)

    def ibroadcast(self, array, root: int = 0):
        return self.comm.Ibcast(_host(array), root=root)

    def _done(self, handle) -> bool:
        return handle.Test()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


class TorchComm(Communicator):
    """torch.distributed (launched by ``torchrun``): gloo for CPU tensors and NumPy, NCCL for CUDA.

    With CUDA available the process group is ``"cpu:gloo,cuda:nccl"``: each collective goes to the
    backend of its tensor's device, so NumPy models and CUDA models both work (the CUDA path is not
    exercised by the test suite, which has no GPU).
    """

    name = "torch"

    def __init__(self, timeout: float, backend: str | None = None):
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        if not dist.is_initialized():
            backend = backend or ("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
            if "nccl" in backend:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        self.backend = dist.get_backend()
        super().__init__(dist.get_rank(), dist.get_world_size(), timeout)
        _abort_on_uncaught(self)

    def _tensor(self, array):
        return self.torch.from_numpy(array) if isinstance(array, np.ndarray) else array

    def iallreduce(self, array):
        return self.dist.all_reduce(self._tensor(array), op=self.dist.ReduceOp.SUM, async_op=True)

    def ibroadcast(self, array, root: int = 0):
        return self.dist.broadcast(self._tensor(array), src=root, async_op=True)

    def _done(self, handle) -> bool:
        if not handle.is_completed():
            return False
        handle.wait()  # raises when the collective failed (a peer closed its connection)
        return True

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


def _host(array) -> np.ndarray:
    """MPI takes NumPy buffers; a CPU torch tensor is viewed as one (no copy)."""
    if isinstance(array, np.ndarray):
        return array
    if getattr(array, "device", None) is not None and array.device.type != "cpu":
        raise DistributedError("the MPI backend reduces host memory only: train a CUDA model under torchrun "
                               "(NCCL), or keep the model on the CPU")
    return array.numpy()


def _abort_on_uncaught(comm: Communicator) -> None:
    """An uncaught exception on one rank ends the whole job (as ``python -m mpi4py`` does for MPI)
    instead of leaving the other ranks blocked in their next collective."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
            return
        traceback.print_exception(kind, value, tb)
        sys.stderr.write(f"neuronet.distributed: rank {comm.rank} failed; ending the job\n")
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)  # the launcher forwards output asynchronously: let it pass the message on
        comm.abort(1)

    sys.excepthook = hook
