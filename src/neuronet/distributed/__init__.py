"""Data-parallel training across processes: MPI (``mpiexec``) or torch.distributed (``torchrun``).

    nn.distributed.init()          # which launcher started this process, from the environment
    nn.distributed.rank(), nn.distributed.world_size()
    model.fit(x, y, batch_size=64, distributed=True)

Every process holds the whole model; rank 0's initial parameters are broadcast, gradients are averaged
by allreduce on the flat gradient buffer (bucket by bucket, overlapped with backward), and every rank
takes the same optimizer step, so parameters and optimizer state stay identical. See docs/parallel.md.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from .comm import Communicator, DistributedError
from .sync import GradientSync, broadcast_model

__all__ = ["init", "is_initialized", "rank", "world_size", "backend", "launcher", "shutdown",
           "communicator", "DistributedError", "GradientSync", "broadcast_model", "LAUNCH_HELP"]

LAUNCH_HELP = ("launch one process per rank with `mpiexec -n K python script.py` (MPI, needs mpi4py: "
               "pip install 'neuronet[mpi]') or `torchrun --nproc-per-node K script.py` (torch.distributed); "
               "on a cluster see docs/parallel.md (hostfile, srun, torchrun rendezvous)")
DEFAULT_TIMEOUT = 300.0

_comm: Communicator | None = None


def launcher() -> str | None:
    """"torch" under torchrun, "mpi" under mpiexec/srun with PMI, else None (a plain process)."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or {"RANK", "WORLD_SIZE", "MASTER_ADDR"} <= env.keys():
        return "torch"
    if any(k in env for k in ("PMI_RANK", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID")):
        return "mpi"
    return None


def init(backend: str | None = None, timeout: float | None = None) -> Communicator:
    """Join the job that launched this process (idempotent); returns the communicator.

    Args:
        backend: "mpi" or "torch" (default: the launcher found in the environment). For "torch" the
            process-group backend is NCCL when CUDA is available, else gloo.
        timeout: seconds any collective may wait for the other ranks before DistributedError
            (default: NEURONET_DIST_TIMEOUT, else 300).
    """
    global _comm
    if _comm is not None:
        return _comm
    kind = backend or launcher()
    if kind is None:
        raise ConfigError(f"nn.distributed.init: this process was not started by a launcher; {LAUNCH_HELP}")
    if kind not in ("mpi", "torch"):
        raise ConfigError(f"nn.distributed.init: backend must be 'mpi' or 'torch', got {kind!r}")
    if timeout is None:
        timeout = os.environ.get("NEURONET_DIST_TIMEOUT", DEFAULT_TIMEOUT)
    limit = float(timeout)
    if kind == "mpi":
        try:
            from .comm import MPIComm
        except ImportError:
            raise ConfigError("nn.distributed: the MPI backend needs mpi4py (pip install 'neuronet[mpi]')") \
                from None
        _comm = MPIComm(limit)
    else:
        from .comm import TorchComm

        _comm = TorchComm(limit)
    return _comm


def is_initialized() -> bool:
    return _comm is not None


def communicator() -> Communicator:
    if _comm is None:
        raise ConfigError("nn.distributed: call nn.distributed.init() first (or fit(..., distributed=True))")
    return _comm


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return _comm.rank if _comm is not None else 0


def world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    return _comm.size if _comm is not None else 1


def backend() -> str | None:
    return _comm.name if _comm is not None else None


def shutdown() -> None:
    """Leave the job (torch: destroy the process group). Safe to call when not initialized."""
    global _comm
    if _comm is not None:
        _comm.close()
        _comm = None
