"""Parallel execution of one model: thread-safe inference, the worker pool, and distributed fit.

All three rest on lightweight replicas (``core.replica``): copies of the layer tree that share the flat
parameter array and own their workspaces.

- ``inference_model(model)``: predict/evaluate run on the model itself when no other thread is using
  it, else on a replica kept for the calling thread, so concurrent calls never share workspaces.
- ``WorkerPool``: ``fit(..., workers=N)`` splits each batch into N contiguous shards computed by N
  persistent training replicas in threads (NumPy's BLAS and the ``nogil`` Numba kernels release the
  GIL), each with a row of one (N, P) gradient array; one matrix product reduces the rows into
  ``model.flat_grads`` (weighted by shard size) before the single optimizer step.
- ``TrainingRun``: what ``fit`` asks for each epoch and step, for one process or many (nn.distributed).
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import numpy as np

from ..backend import blas_threads as openblas
from ..core import random as nnrandom
from ..core.grad_mode import no_grad
from ..core.layer import Workspace
from ..core.replica import copy_buffers, replica
from ..errors import ConfigError

# Callbacks that write files or print run only on rank 0 (a callback may also set rank_zero_only).
_RANK_ZERO_CALLBACKS = {"ModelCheckpoint", "CSVLogger", "TensorBoard", "ProgressBar", "EpochLogger"}


class _Parallel:
    """Per-model state: who is using the model, the per-thread inference replicas, the worker pool."""

    def __init__(self):
        self.lock = threading.RLock()
        self.local = threading.local()
        self.pool: WorkerPool | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.executor_size = 0

    def __deepcopy__(self, memo):  # a copied model starts without threads, locks or replicas
        return _Parallel()

    def threads(self, n: int) -> ThreadPoolExecutor:
        """A persistent executor with at least ``n`` threads."""
        if self.executor_size < n:
            if self.executor is not None:
                self.executor.shutdown(wait=False)
            self.executor = ThreadPoolExecutor(n, thread_name_prefix="neuronet-worker")
            self.executor_size = n
        return self.executor


def _state(model) -> _Parallel:
    state = model.__dict__.get("_parallel")
    if state is None:
        state = model.__dict__.setdefault("_parallel", _Parallel())  # atomic: one winner
    return state


@contextmanager
def inference_model(model):
    """The model itself if no other thread is using it, else this thread's inference replica, under
    ``no_grad`` (no backward follows: layers keep nothing for one).

    A replica is made once per thread and model (and again after the model is rebuilt or moved); it
    sees every weight update at once since it shares the parameter array.
    """
    state = _state(model)
    if not model.built or state.lock.acquire(blocking=False):
        if not model.built:
            state.lock.acquire()  # the first forward builds the model: one thread at a time
        try:
            with model._precision(), no_grad():
                yield model
        finally:
            state.lock.release()
        return
    local = state.local
    if getattr(local, "key", None) is not model.flat_params or local.loss is not model.loss:
        local.replica, local.key, local.loss = replica(model), model.flat_params, model.loss
    local.replica.metric_fns = model.metric_fns
    with model._precision(), no_grad():
        yield local.replica


def predict(model, x, batch_size: int, workers: int):
    """``model.predict`` with ``x`` split into ``workers`` contiguous chunks predicted in threads
    (``"auto"``: one per core)."""
    workers = check_workers(workers, len(x), "predict")
    if workers == "auto":
        workers = min(cores(), len(x))
    if workers == 1:
        return model.predict(x, batch_size=batch_size)
    if not model.built:
        model.predict(x[:1], batch_size=1)  # build once, before the threads
    bounds = _bounds(len(x), workers)
    chunks = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with blas_threads(model, workers):
        pool = _state(model).threads(workers - 1)
        futures = [pool.submit(model.predict, c, batch_size) for c in chunks[1:]]
        first = model.predict(chunks[0], batch_size=batch_size)
        return join_batches([first, *(f.result() for f in futures)])


def to_host(ops, out):
    """One forward's output(s) as NumPy copies (a list for several outputs): the workspace is reused."""
    if isinstance(out, (list, tuple)):
        return [np.array(ops.to_numpy(o)) for o in out]
    return np.array(ops.to_numpy(out))


def join_batches(parts: list):
    """Per-batch predictions joined along the batch axis (one list of arrays for several outputs); one
    batch's own arrays as they are (``to_host`` copied them already)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], list):
        return [np.concatenate(p) for p in zip(*parts, strict=True)]
    return np.concatenate(parts)


# ------------------------------------------------------------------------- threads and BLAS
def cores() -> int:
    """CPU cores this process may use: its affinity set, shared with the other ranks on this node when a
    launcher started several here without binding them to cores, and no more than the threads
    ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` allow (torchrun sets the first to 1 per rank)."""
    total = os.cpu_count() or 1
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:
        mine = total
    env = os.environ
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if env.get(var, "").isdigit() and int(env[var]) > 0:
            mine = min(mine, int(env[var]))
    if mine < total:  # bound to its own cores, or held to fewer threads
        return mine
    local = env.get("LOCAL_WORLD_SIZE") or env.get("OMPI_COMM_WORLD_LOCAL_SIZE") or env.get("MPI_LOCALNRANKS")
    return max(1, mine // int(local)) if local and local.isdigit() else mine


_controller = None


@contextmanager
def blas_threads(model, workers: int):
    """Limit NumPy's BLAS (its bundled OpenBLAS through ``backend.blas_threads.limit``, another through
    threadpoolctl) and torch's intra-op threads so that workers x threads <= cores."""
    global _controller
    if workers == 1:
        yield
        return
    n = max(1, cores() // workers)
    torch_threads = None
    if model.ops.name == "torch":
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(n)
    try:
        with ExitStack() as stack:
            stack.enter_context(openblas.limit(n))
            if openblas.bundled() is None:  # NumPy on another BLAS (MKL, a system OpenBLAS): threadpoolctl
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError:  # that BLAS then keeps its threads: slower, still right
                    pass
                else:
                    if _controller is None:
                        _controller = ThreadpoolController()
                    stack.enter_context(_controller.limit(limits=n, user_api="blas"))
            yield
    finally:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)


def check_workers(workers, batch: int, what: str) -> int | str:
    """``workers`` if it is "auto" or a positive integer no larger than ``batch``; else ConfigError."""
    if workers == "auto":
        return workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{what}: workers must be a positive integer or 'auto', got {workers!r}")
    if workers > batch:
        raise ConfigError(f"{what}: workers={workers} is larger than the batch ({batch} samples): every "
                          "worker needs at least one sample; use fewer workers or a larger batch_size")
    return workers


def check_training_workers(model, workers, batch: int, what: str) -> int | str:
    """``workers`` for a training step of ``model`` (``check_workers``), refused with the options a pooled
    step cannot honour: float16 loss scaling and the CUDA graph."""
    workers = check_workers(workers, batch, what)
    if workers == 1:
        return workers
    if model.__dict__.get("loss_scale") is not None:
        raise ConfigError(f"{what}(workers={workers!r}): float16 loss scaling runs in one process's step; "
                          "use mixed_precision='bfloat16' (no scaling needed) or workers=1")
    if model.__dict__.get("cuda_graph"):
        raise ConfigError(f"{what}(workers={workers!r}): the CUDA graph replays one process's step; use "
                          "workers=1 with cuda_graph=True")
    return workers


def _bounds(n: int, parts: int) -> list[int]:
    """Contiguous split of n rows into ``parts`` shards differing by at most one (np.array_split)."""
    q, r = divmod(n, parts)
    return [k * q + min(k, r) for k in range(parts + 1)]


# ------------------------------------------------------------------------- the worker pool
class WorkerPool(Workspace):
    """``workers`` training replicas of ``model`` computing the shards of one batch in threads.

    BatchNorm: each worker normalises its shard with the shard's own statistics (per-replica
    statistics, as PyTorch DDP does per process); before each step every worker's running statistics
    are copied from the model, and afterwards worker 0's become the model's (DDP's broadcast_buffers).
    """

    def __init__(self, model, workers: int):
        self.model, self.workers = model, workers
        self.ops, self.dtype = model.ops, model.dtype
        self.key = (model.flat_params, model.loss)
        self.grads = self.ops.zeros((workers, model.num_params()), model.dtype)
        self.replicas = [replica(model, grads=self.grads[k]) for k in range(workers)]
        self.has_buffers = any(True for _ in model.named_buffers())
        self.losses = [0.0] * workers

    def _shard(self, k: int, x, y, w, seed: int) -> None:
        with nnrandom.thread_stream(seed):  # its dropout masks from a stream of its own: reproducible
            self.losses[k] = self.replicas[k]._gradients(x, y, w, finite=False)

    def gradients(self, x, y, sample_weight=None) -> float:
        """The mean loss over the batch, with its gradient in ``model.flat_grads``.

        Call it inside ``blas_threads(model, workers)`` (as fit does for the whole step).
        """
        model, n = self.model, len(x)
        k = min(self.workers, n)
        bounds = _bounds(n, k)
        if self.has_buffers:
            for rep in self.replicas[:k]:
                copy_buffers(model, rep)
        w = sample_weight
        parts = [(x[a:b], y[a:b], None if w is None else w[a:b]) for a, b in zip(bounds[:-1], bounds[1:],
                                                                                   strict=True)]
        seeds = nnrandom.generator().integers(0, 2**63 - 1, k).tolist()  # in order, whatever the threads do
        futures = [_state(model).threads(self.workers - 1).submit(self._shard, j, *parts[j], seeds[j])
                   for j in range(1, k)]
        self._shard(0, *parts[0], seeds[0])
        for f in futures:
            f.result()
        shares = self._shares(bounds, sample_weight)
        for j in np.flatnonzero(shares == 0):  # nothing of the mean in it (0/0 is NaN): no gradient either
            self.grads[j] = 0
        weights = self.workspace("weights", (1, k))
        self.ops.copy_(weights, self.ops.asarray(shares.reshape(1, k), self.dtype))
        self.ops.matmul(weights, self.grads[:k], out=model.flat_grads.reshape(1, -1))  # one fused pass
        if self.has_buffers:
            copy_buffers(self.replicas[0], model)
        model._last_output = self._joined_output(bounds)
        per_output = model.loss.__dict__.get("values")
        if per_output is not None:  # several outputs: each output's loss, as the batch's (for the logs)
            for i in range(len(per_output)):
                per_output[i] = _weighted([rep.loss.values[i] for rep in self.replicas[:k]], shares)
        return _weighted(self.losses[:k], shares)

    def _joined_output(self, bounds: list[int]):
        """The replicas' outputs (for the metrics) as the batch's: one array, or a list per output."""
        firsts = self.replicas[0]._last_output
        several = isinstance(firsts, list)
        outs = []
        for i, first in enumerate(firsts if several else [firsts]):
            out = self.workspace(f"output{i}", (bounds[-1], *first.shape[1:]))
            for j in range(len(bounds) - 1):
                part = self.replicas[j]._last_output
                self.ops.copy_(out[bounds[j]:bounds[j + 1]], part[i] if several else part)
            outs.append(out)
        return outs if several else outs[0]

    def _shares(self, bounds: list[int], sample_weight) -> np.ndarray:
        """Each shard's part of the batch mean: of the loss's denominator where the loss reports it
        (cross-entropy's counted weight W_k with class weights or ignore_index), else of the samples."""
        k = len(bounds) - 1
        sizes = np.diff(bounds).astype(np.float64)
        if sample_weight is None:
            totals = [rep.loss.__dict__.get("total_weight") for rep in self.replicas[:k]]
            if all(isinstance(t, float) for t in totals) and sum(totals) > 0:
                sizes = np.array(totals)
        return sizes / sizes.sum()


def _weighted(values, shares) -> float:
    """sum_j values[j] * shares[j] over the shards that count (one of share 0 may hold 0/0 = NaN)."""
    return float(sum(v * s for v, s in zip(values, shares, strict=True) if s > 0))


def worker_pool(model, workers: int) -> WorkerPool:
    """The model's pool of ``workers`` replicas (made again after a rebuild, move or recompile)."""
    state = _state(model)
    pool = state.pool
    if pool is None or pool.workers != workers or pool.key[0] is not model.flat_params or \
            pool.key[1] is not model.loss:
        pool = state.pool = WorkerPool(model, workers)
    return pool


AUTO_ROUNDS = 4  # timed passes per option, alternating (this host's speed moves within seconds)
AUTO_MARGIN = 0.95  # the pool must take less than this fraction of one worker's median to be chosen
AUTO_SHAPES = 8  # batch shapes measured per model; a further shape takes the first one's choice


def choose_workers(model, x, y, batch_size: int) -> int:
    """``workers="auto"``: forward/backward passes of the batch with 1 worker x all BLAS threads and with
    one worker per core x 1 thread, two of each in turn ``AUTO_ROUNDS`` times (the second timed); the
    pool wins when its median is under ``AUTO_MARGIN`` of one worker's. The pool is a candidate only
    where it gives one worker's result up to rounding: on the CPU, without batch statistics (BatchNorm's
    buffers), without an auxiliary loss over the batch (MoE's balancing) and without random draws in
    training (dropout masks would depend on the threads' order). Weights, buffers and the random stream
    are left as they were (no optimizer step is taken)."""
    n = min(batch_size, len(x))
    k = min(cores(), n)
    if k == 1 or model.ops.device != "cpu" or model._aux_layers() or any(True for _ in model.named_buffers()):
        return 1
    rng = nnrandom.generator()
    rng_state = rng.bit_generator.state
    xb, yb = x[:n], y[:n]
    model._gradients(xb, yb)  # warm-up (workspaces, JIT)
    if rng.bit_generator.state != rng_state:  # it draws: one worker, reproducibly
        rng.bit_generator.state = rng_state
        return 1
    steps = {1: model._gradients, k: worker_pool(model, k).gradients}
    times: dict[int, list[float]] = {1: [], k: []}
    for _ in range(AUTO_ROUNDS):
        for workers, step in steps.items():
            with blas_threads(model, workers):
                step(xb, yb)  # after the other way's pass: the caches and threads as that left them
                start = time.perf_counter()
                step(xb, yb)  # as in a run of steps
                times[workers].append(time.perf_counter() - start)
    rng.bit_generator.state = rng_state  # (the pool drew its shards' seeds)
    return k if np.median(times[k]) < AUTO_MARGIN * np.median(times[1]) else 1


def resolve_workers(model, workers, x, y) -> int:
    """The workers a step of batch (x, y) runs on: ``workers`` itself, or for "auto" the choice of
    ``choose_workers`` for this batch's shape (as ``torch.backends.cudnn.benchmark`` chooses per input
    shape), measured on the first batch of each shape, up to ``AUTO_SHAPES`` shapes, and kept until the
    model is rebuilt or moved; one for the step that builds the model. A pool that no shape chose is
    dropped with its workspaces."""
    if not model.built:  # the first step builds the model, on one worker; the next one splits (or measures)
        return 1
    if workers != "auto":
        return workers
    known = model.__dict__.get("_auto_workers")
    if known is None or known[0] is not model.flat_params:
        known = model._auto_workers = (model.flat_params, {})
    choices, key = known[1], _batch_key(x)
    if key not in choices:
        if len(choices) >= AUTO_SHAPES:
            return next(iter(choices.values()))
        choices[key] = choose_workers(model, x, y, len(x))
        if all(c == 1 for c in choices.values()):
            _state(model).pool = None
    return choices[key]


def _batch_key(x) -> tuple:
    """The shapes of a batch's inputs (a DataList holds one array per input)."""
    return tuple(tuple(getattr(a, "shape", (len(a),))) for a in getattr(x, "arrays", [x]))


# ------------------------------------------------------------------------- what fit drives
class TrainingRun:
    """What ``fit`` asks per epoch and step: the batches, the step, the reduced logs, the callbacks.

    One process with one worker is exactly the plain loop (``data.epoch()`` and ``train_step``).
    """

    def __init__(self, model, data, batch_size: int, workers, distributed: bool):
        from .data_adapter import ArrayBatches

        self.model, self.batch_size = model, batch_size
        x, y = data.arrays[:2] if isinstance(data, ArrayBatches) else (None, None)
        self.comm = self.sync = None
        self.rank, self.size = 0, 1
        if distributed:
            from .. import distributed as dist

            if not dist.is_initialized() and dist.launcher() is None:
                raise ConfigError("fit(distributed=True): no launcher started this process; "
                                  + dist.LAUNCH_HELP)
            if x is None:
                raise ConfigError("fit(distributed=True): the ranks split arrays (x, y) between them; for a "
                                  "source of batches, give each rank its own shard and pass arrays per rank")
            self.comm = dist.init()
            self.rank, self.size = self.comm.rank, self.comm.size
            if not model.built:
                model.build(tuple(x.shape[1:]))
            dist.broadcast_model(self.comm, model)
            seed = np.array([nnrandom.generator().integers(2**62)], np.int64)
            self.seed = int(self.comm.broadcast(seed, what="the shuffle seed")[0])
            self.sync = dist.GradientSync(self.comm, model)
            self.has_buffers = any(True for _ in model.named_buffers())
        self.workers = check_training_workers(model, workers, batch_size, "fit")
        self.n_global = batch_size

    @property
    def distributed(self) -> bool:
        return self.comm is not None

    # ---------------------------------------------------------------- what rank 0 alone does
    def verbose(self, verbose: int) -> int:
        return verbose if self.rank == 0 else 0

    def callbacks(self, callbacks):
        if self.rank == 0 or not callbacks:
            return callbacks
        return [cb for cb in callbacks if not getattr(cb, "rank_zero_only", type(cb).__name__ in
                                                      _RANK_ZERO_CALLBACKS)]

    # ---------------------------------------------------------------- data
    def steps(self, data) -> int | None:
        """Batches per epoch (None: unknown, for a source without a length)."""
        return data.steps if self.comm is None else math.ceil(data.n / (self.batch_size * self.size))

    def epoch(self, data, epoch: int):
        """This rank's ``(x, y, w)`` batches of the epoch: all of them in one process."""
        if self.comm is None:
            return data.epoch()
        return data.epoch(self.batches(data.n, data.shuffle, epoch))

    def batches(self, n: int, shuffle: bool, epoch: int):
        """This rank's sample indices per step.

        Distributed: global batch i is ``order[i*B*K:(i+1)*B*K]`` split over the ranks in rank order;
        ``shuffle`` draws ONE permutation per epoch from a seed rank 0 broadcast (same on all ranks).
        A final global batch smaller than K is dropped (some rank would have no sample).
        """
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if shuffle else np.arange(n)
        step = self.batch_size * self.size
        for start in range(0, n, step):
            chunk = order[start:start + step]
            if len(chunk) < self.size:
                return
            bounds = _bounds(len(chunk), self.size)
            self.n_global = len(chunk)
            yield chunk[bounds[self.rank]:bounds[self.rank + 1]]

    # ---------------------------------------------------------------- one step
    def train_step(self, x, y, sample_weight=None) -> float:
        model = self.model
        if self.comm is None:
            return model.train_step(x, y, sample_weight, workers=self.workers)
        if not model.built:
            model.build(tuple(x.shape[1:]))
        workers = resolve_workers(model, self.workers, x, y)
        with blas_threads(model, workers):
            return self._step(x, y, sample_weight, workers)

    def _step(self, x, y, w, workers: int) -> float:
        model = self.model
        model._require_compiled("train_step")
        model._check_lengths(x, y, "train_step")
        self.sync.begin(len(x) / self.n_global)
        try:
            loss = model._gradients(x, y, w, workers)
        except BaseException:
            self.sync.cancel()
            raise
        self.sync.finish()
        model._optimizer_step()
        if self.has_buffers:  # rank 0's running statistics, as DDP
            from ..distributed.sync import broadcast_buffers

            broadcast_buffers(self.comm, model)
        return loss

    # ---------------------------------------------------------------- logs
    def reduce(self, totals) -> dict:
        """The epoch's loss and metric means over every rank's samples."""
        return reduce_totals(totals, self.comm)


def shard(data, distributed: bool):
    """(this rank's contiguous part of array batches, comm) for a distributed evaluate; (data, None) else."""
    if not distributed:
        return data, None
    from .. import distributed as dist
    from .data_adapter import ArrayBatches

    if not isinstance(data, ArrayBatches):
        raise ConfigError("evaluate(distributed=True): the ranks split arrays (x, y) between them; with a "
                          "source of batches, give each rank its own part and evaluate without distributed")
    comm = dist.init()
    bounds = _bounds(data.n, comm.size)
    return data.part(bounds[comm.rank], bounds[comm.rank + 1]), comm


def reduce_totals(totals, comm) -> dict:
    """Add up the epoch's loss sums and metric counts (``Totals.state``) over the ranks (if any); returns
    the means. A state's length may differ between ranks (a class seen on one only): zero-padded first."""
    if comm is not None:
        state = totals.state()
        keys = list(state)
        lengths = np.zeros((comm.size, len(keys)), np.float64)
        lengths[comm.rank] = [len(state[k]) for k in keys]
        comm.allreduce(lengths, what="the sizes of the metric totals")
        sizes = lengths.max(axis=0).astype(int)
        vec = np.zeros(int(sizes.sum()), np.float64)
        ends = np.cumsum(sizes)
        for key, end, size in zip(keys, ends, sizes, strict=True):
            vec[end - size:end - size + len(state[key])] = state[key]
        comm.allreduce(vec, what="the loss and metric totals")
        totals.load_state({key: vec[end - size:end].tolist() for key, end, size in zip(keys, ends, sizes,
                                                                                        strict=True)})
    return totals.means()
