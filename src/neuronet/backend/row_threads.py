"""Independent row blocks of work, one per core: the NumPy backend's own threads.

A recurrent layer's time loop cannot be split over time, but the rows of its batch never meet: rows
0..31 and 32..63 of a batch of 64 run the same loop on their own states. On the NumPy backend each
step is a small GEMM (OpenBLAS splits it badly) and a Numba cell kernel; both release the GIL, so two
Python threads, each looping over its own rows with OpenBLAS held at one thread, keep two cores busy
where one was before. The same holds for a convolution's image chunks, attention's samples, pooling and
elementwise passes (NumpyOps). ``run`` is the mechanism, ``split`` the blocks; one region runs at a time
(a second caller, e.g. a replica on another thread, runs its tasks itself, one after the other).

The workers wait for their next task spinning (polling with ``sched_yield``, the GIL released) for
SPIN_NS (3 ms of wall clock), then on a condition, as OpenMP's workers do. A woken thread costs ~90 us
on this VM (an idle virtual core is halted and must be rescheduled); a spinning one starts its task
~25 us after it is posted (what remains is the GIL changing hands), and it keeps the core awake for
OpenBLAS's own workers, whose products then start sooner too. Measured 2026-12-07 on 2 cores, median
training step against the thread pool whose workers slept (alternating processes, two pairs each): char
GPT 34.1-34.3 against 34.0-36.6 ms, LSTM 5.18-5.21 against 5.42-5.86, small ResNet 41.8-42.0 against
44.5-45.0, MNIST CNN 13.5-14.1 against 14.6-14.7; MoE and MLP even. A budget of 20,000 polls instead of
wall-clock time spun for seconds when other processes held the cores (each ``sched_yield`` then gives
up a time slice): the test suite, two processes on two cores, took 480 s against 180; with SPIN_NS, 113.
Where the cores are shared with other work, ``OMP_WAIT_POLICY=passive`` turns the polling off.

A worker that has seen its task waits GRACE_NS more (polling) before it asks for the GIL: the caller
holds the GIL until its own task reaches native code (the Python before a kernel: ~4 us for an
elementwise pass, ~20 us for an attention block), and a worker that asks before then sleeps on the GIL's
condition, whose wake-up took 30-60 us here (the idle virtual core halted again). Measured 2026-12-07 in
the char GPT's step, 2 cores, the worker's start after the post (median per kind of region, without ->
with a grace of 25 us): attention blocks 78 -> 35 us, a linear map's backward products 45 -> 33, GELU
backward 54 -> 36. Steps with the grace and blas_threads.SPIN_LOG2 14 against neither, alternating
processes: char GPT 27.6 against 28.4 ms (eight pairs, each faster), LSTM 4.26 against 4.34, ResNet
37.2-37.7 against 38.1 (five), CNN, MLP and MoE even. A region of two GELU halves alone: 97 against 125 us.
The grace is for the Python before a task's kernel; where the caller's task is a compiled function's
call (a Numba kernel through its dispatcher: 0.5-1.3 us for 4-16 arguments, a ufunc, ndarray.fill) it
lets go of the GIL at once, and the workers wait QUICK_GRACE_NS instead: a region of two empty tasks
35 -> 10 us; forward + backward of a ReLU layer on 256 x 1024, 215-225 -> 159-180 us (GELU 276-278 ->
233-251; ``bench_layers``); training steps, alternating processes: MNIST CNN 13.4-14.5 against 13.4-14.9
ms, char GPT, LSTM, ResNet, MLP and MoE within their noise (their native regions run 0.2-0.7 ms each).
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence

import numba
import numpy as np
from numba import types

from . import blas_threads

MIN_ROWS = 16  # rows per block below which the GEMM gains less than the hand-off costs
# How long a worker polls for its next task before it sleeps (wall clock); none under OMP_WAIT_POLICY=passive,
# the setting that tells OpenMP's workers (PyTorch's among them) not to spin either.
SPIN_NS = 0 if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE" else 3_000_000
MAX_WORKERS = 256  # a region of more tasks runs them in turn on the calling thread
GRACE_NS = 25_000  # how long a worker that has seen its task polls on before it asks for the GIL
QUICK_GRACE_NS = 6_000  # the same where the caller's task is a compiled function's call (``_goes_native``)

_busy = threading.Lock()
_jit = numba.njit(cache=True, nogil=True)
# Give the core to another thread while polling (OpenBLAS's workers and the replicas' threads need it),
# and read the clock without the GIL: CLOCK_MONOTONIC through clock_gettime. Elsewhere (Windows) a worker
# does not poll: it waits on the condition at once.
_CLOCK = {"linux": 1, "darwin": 6}.get(sys.platform)
if _CLOCK is not None:
    _yield = types.ExternalFunction("sched_yield", types.int32())
    _clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.intp))

    @_jit
    def _now(clock):
        """CLOCK_MONOTONIC in ns; clock: this thread's int64[2] (a struct timespec)."""
        _clock_gettime(_CLOCK, clock.ctypes.data)
        return clock[0] * 1_000_000_000 + clock[1]

    @_jit
    def _poll(posted, i, seen, spin_ns, grace, clock):
        """True once posted[i] != seen (a task was posted) and grace[i] ns more have passed, False after
        ``spin_ns`` of polling without a task."""
        end = _now(clock) + spin_ns
        while True:
            for _ in range(64):
                if posted[i] != seen:
                    until = _now(clock) + grace[i]  # (set before posted[i]; read after it: the call between)
                    while _now(clock) < until:  # (not yielding: the caller is about to let go)
                        pass
                    return True
                _yield()
            if _now(clock) > end:
                return posted[i] != seen
else:
    _yield = types.ExternalFunction("SwitchToThread", types.int32())

    @_jit
    def _poll(posted, i, seen, spin_ns, grace, clock):
        return posted[i] != seen


@_jit
def _finish_and_poll(done, posted, i, seen, spin_ns, grace, clock):
    """done[i] = seen, then ``_poll``: in one call, so that the main thread, waiting for done without the
    GIL, takes the GIL back while this thread already polls without it."""
    done[i] = seen
    return _poll(posted, i, seen, spin_ns, grace, clock)


@_jit
def _wait_done(done, posted, n):
    """Until done[i] == posted[i] for i < n."""
    while True:
        finished = True
        for i in range(n):
            if done[i] != posted[i]:
                finished = False
        if finished:
            return
        _yield()


class _Workers:
    """Threads 0..k-1 run task i of a region whose tasks 1..k the caller posts; the caller runs task 0."""

    def __init__(self):
        # per worker: the number of the region whose task it was last given (posted) and finished (done)
        self.posted, self.done = np.zeros(MAX_WORKERS, np.int64), np.zeros(MAX_WORKERS, np.int64)
        self.grace = np.zeros(MAX_WORKERS, np.int64)  # per worker: the grace of the region posted to it
        self.tasks: list[Callable[[], None] | None] = [None] * MAX_WORKERS
        self.errors: list[BaseException | None] = [None] * MAX_WORKERS
        self.sleeping = [False] * MAX_WORKERS
        self.wake = threading.Condition()
        self.threads: list[threading.Thread] = []

    def grow(self, k: int) -> None:
        """At least k workers (started here)."""
        for i in range(len(self.threads), k):
            thread = threading.Thread(target=self._loop, args=(i, self.posted, self.done, self.grace),
                                      name=f"neuronet-rows_{i}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _loop(self, i: int, posted: np.ndarray, done: np.ndarray, grace: np.ndarray) -> None:
        seen, clock = 0, np.zeros(2, np.int64)
        ready = _poll(posted, i, seen, SPIN_NS, grace, clock)
        while True:
            if not ready:
                with self.wake:
                    self.sleeping[i] = True
                    while posted[i] == seen:  # (checked under the lock run() posts with: no lost wake-up)
                        self.wake.wait()
                    self.sleeping[i] = False
            seen = int(posted[i])
            if seen < 0:  # stop()
                return
            try:
                self.tasks[i]()
            except BaseException as error:  # raised by run() in the caller's thread
                self.errors[i] = error
            self.tasks[i] = None
            ready = _finish_and_poll(done, posted, i, seen, SPIN_NS, grace, clock)

    def run(self, tasks: Sequence[Callable[[], None]]) -> None:
        k = len(tasks) - 1
        self.grow(k)
        posted, done = self.posted, self.done
        self.grace[:k] = QUICK_GRACE_NS if _goes_native(tasks[0]) else GRACE_NS
        for i, task in enumerate(tasks[1:]):
            self.tasks[i], self.errors[i] = task, None
            posted[i] += 1
        if any(self.sleeping[:k]):
            with self.wake:
                self.wake.notify_all()
        try:
            tasks[0]()
        finally:  # wait for every block before the buffers are reused
            _wait_done(done, posted, k)
        for error in self.errors[:k]:
            if error is not None:
                raise error

    def stop(self) -> None:
        """End every worker (at exit: none is left polling while the interpreter shuts down)."""
        self.posted[:] = -1
        with self.wake:
            self.wake.notify_all()
        for thread in self.threads:
            thread.join(timeout=1.0)


_NATIVE = (numba.core.dispatcher.Dispatcher, np.ufunc, type(np.copyto), type(len))  # (len: a builtin)


def _goes_native(task: Callable[[], None]) -> bool:
    """Whether a task is a compiled function's call (a Numba kernel, a ufunc, ndarray.fill): the caller's
    own one lets go of the GIL within microseconds of the post, and the workers' grace can be short."""
    return isinstance(task, functools.partial) and isinstance(task.func, _NATIVE)


@functools.cache
def _workers() -> _Workers:
    workers = _Workers()
    atexit.register(workers.stop)
    return workers


def _after_fork() -> None:
    """A forked child has none of the parent's threads (nor its region): it starts its own."""
    global _busy
    _workers.cache_clear()
    _busy = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


@functools.lru_cache(maxsize=1024)
def split(n: int, parts: int) -> tuple[slice, ...]:
    """``parts`` near-equal ranges of n rows."""
    bounds = [n * k // parts for k in range(parts + 1)]
    return tuple(slice(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False))


def run(tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` (independent of each other) at once, the first on this thread, and wait for all;
    an exception in any of them is raised here once all have finished."""
    if not 1 < len(tasks) <= MAX_WORKERS + 1 or not _busy.acquire(blocking=False):
        for task in tasks:
            task()
        return
    try:
        with blas_threads.one_thread():
            _workers().run(tasks)
    finally:
        _busy.release()
