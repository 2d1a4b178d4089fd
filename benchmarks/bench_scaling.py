"""Scaling on one machine: samples/s of a training step for the MLP, CNN and LSTM workloads, run as

    single   1 process, 1 thread (the reference)    threads  1 process, BLAS on 2 threads
    workers  fit(workers=2): 2 replicas x 1 thread  mpi      mpiexec -n 2, 1 thread per rank
    torch    torchrun --nproc-per-node 2, 1 thread per rank

with the same GLOBAL batch in every setting (each of 2 ranks gets half), so samples/s compare directly.
The distributed settings also report the time a step spends blocked in the gradient allreduce, with the
buckets overlapped with backward (as fit does) and without (one allreduce after backward), and the time
of one blocking allreduce of the whole gradient buffer (its bandwidth feeds the scale model in
docs/parallel.md). Every setting runs in its own process(es).

    python benchmarks/bench_scaling.py                # all workloads and settings, a table
    python benchmarks/bench_scaling.py --workloads mlp --settings threads workers
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = {  # name: (global batch, input shape)
    "mlp": (128, (784,)),
    "cnn": (64, (1, 28, 28)),
    "lstm": (64, (28, 28)),
}
SETTINGS = ("single", "threads", "workers", "mpi", "torch")
WARMUP, STEPS = 5, 30
COLUMNS = [("samples_per_s", ".0f"), ("samples_per_s_no_overlap", ".0f"), ("allreduce_wait_ms", ".2f"),
           ("allreduce_wait_ms_no_overlap", ".2f"), ("allreduce_full_ms", ".2f"),
           ("allreduce_bus_GBps", ".2f")]
WIDTHS = (10, 10, 8, 14, 12, 8)
SRC = Path(__file__).resolve().parents[1] / "src"


def build(nn, name: str):
    if name == "mlp":
        layers = [nn.Dense(784, 512, activation="relu"), nn.Dense(512, 256, activation="relu"),
                  nn.Dense(256, 10)]
    elif name == "cnn":
        layers = [nn.Conv2D(1, 32, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
                  nn.Conv2D(32, 64, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
                  nn.Flatten(), nn.Dense(3136, 128, activation="relu"), nn.Dense(128, 10)]
    else:
        layers = [nn.LSTM(28, 128), nn.Dense(128, 10)]
    return nn.Sequential(*layers).compile(nn.Adam(1e-3), "cross_entropy")


def measure(name: str, setting: str) -> dict | None:
    """Inside one process (or rank): time STEPS training steps; rank 0 returns the numbers."""
    import numpy as np

    import neuronet as nn
    from neuronet.model.parallel import TrainingRun

    batch, shape = WORKLOADS[name]
    distributed = setting in ("mpi", "torch")
    size = 2 if distributed else 1
    rng = np.random.default_rng(0)
    n = batch * (WARMUP + STEPS)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, n)
    model = build(nn, name)
    model.build(shape)
    run = TrainingRun(model, x, y, batch // size, 2 if setting == "workers" else 1, distributed)
    result = {"workload": name, "setting": setting, "params": model.num_params()}
    overlaps = (True, False) if distributed else (True,)
    for overlap in overlaps:
        if distributed:
            run.sync.overlap = overlap
        steps = iter(run.batches(n, False, 0))
        for _ in range(WARMUP):
            idx = next(steps)
            run.train_step(x[idx], y[idx])
        if distributed:
            run.sync.wait_seconds, run.sync.steps = 0.0, 0
        start = time.perf_counter()
        for idx in steps:
            run.train_step(x[idx], y[idx])
        seconds = time.perf_counter() - start
        key = "" if overlap else "_no_overlap"
        result["samples_per_s" + key] = STEPS * batch / seconds
        if distributed:
            result["allreduce_wait_ms" + key] = 1e3 * run.sync.wait_seconds / run.sync.steps
    if distributed:
        comm = nn.distributed.communicator()
        grads = np.zeros(model.num_params(), np.float32)
        comm.allreduce(grads)
        start = time.perf_counter()
        for _ in range(10):
            comm.allreduce(grads)
        one = (time.perf_counter() - start) / 10
        result["allreduce_full_ms"] = 1e3 * one
        # ring allreduce moves 2(K-1)/K of the buffer through each link: the bus bandwidth (NCCL's busbw)
        result["allreduce_bus_GBps"] = 2 * (comm.size - 1) / comm.size * grads.nbytes / one / 1e9
        rank = comm.rank
        nn.distributed.shutdown()
        if rank:
            return None
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name: str, setting: str) -> dict:
    """Run one setting in fresh process(es) and return rank 0's numbers."""
    threads = "2" if setting == "threads" else "1"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if setting == "workers":  # the pool itself limits BLAS to cores // workers threads per worker
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = "2"
    me = [str(Path(__file__).resolve()), "--child", name, setting]
    if setting == "mpi":
        cmd = ["mpiexec", "-n", "2", sys.executable, *me]
    elif setting == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), *me]
    else:
        cmd = [sys.executable, *me]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{name}/{setting} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1])


LINKS_GBIT = (10, 25, 100)
RANKS = (8, 64, 256)


def efficiency(compute_s: float, nbytes: float, ranks: int, bytes_per_s: float) -> tuple[float, float]:
    """Ring allreduce scale model: the efficiency of one step without overlap, and with the allreduce
    hidden behind backward (taken as 2/3 of the compute: backward costs about twice the forward)."""
    comm = 2 * (ranks - 1) / ranks * nbytes / bytes_per_s
    exposed = max(0.0, comm - 2 / 3 * compute_s)
    return compute_s / (compute_s + comm), compute_s / (compute_s + exposed)


def scale_model(results: list[dict]) -> str:
    """A Markdown table of predicted scaling efficiency from the measured MPI rows (T_compute: the step
    without overlap minus its allreduce wait)."""
    lines = ["| workload | gradient | T_compute | link | K=8 | K=64 | K=256 | K=256, 10x faster node |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["setting"] != "mpi":
            continue
        batch = WORKLOADS[r["workload"]][0]
        step = batch / r["samples_per_s_no_overlap"]
        compute = step - r["allreduce_wait_ms_no_overlap"] / 1e3
        nbytes = 4 * r["params"]
        links = [(f"{g} Gb/s", g * 1e9 / 8) for g in LINKS_GBIT]
        links.append((f"measured {r['allreduce_bus_GBps']:.2f} GB/s", r["allreduce_bus_GBps"] * 1e9))
        for name, bw in links:
            cells = [efficiency(compute, nbytes, k, bw) for k in RANKS]
            cells.append(efficiency(compute / 10, nbytes, RANKS[-1], bw))
            text = " | ".join(f"{a:.0%} / {b:.0%}" for a, b in cells)
            size = f"{nbytes / 2**20:.2f} MiB"
            lines.append(f"| {r['workload']} | {size} | {compute * 1e3:.1f} ms | {name} | {text} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--scale-model", metavar="JSON", help="print the scale model for saved results")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_model:
        print(scale_model(json.loads(Path(args.scale_model).read_text())))
        return
    if args.child:
        result = measure(*args.child)
        if result is not None:
            print(json.dumps(result), flush=True)
        return
    results = []
    print(f"{'workload':8} {'setting':8} {'samples/s':>10} {'no-overlap':>10} {'wait ms':>8} "
          f"{'wait ms no-ovl':>14} {'allreduce ms':>12} {'bus GB/s':>8}")
    for name in args.workloads:
        for setting in args.settings:
            r = launch(name, setting)
            results.append(r)

            cells = [format(r[key], spec) if key in r else "-" for key, spec in COLUMNS]
            row = " ".join(f"{c:>{w}}" for c, w in zip(cells, WIDTHS, strict=True))
            print(f"{name:8} {setting:8} {row}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if any(r["setting"] == "mpi" for r in results):
        print("\nscaling efficiency predicted by a ring allreduce (no overlap / overlapped with backward):")
        print(scale_model(results))


if __name__ == "__main__":
    main()
