"""Time the same workload in neuronet and in PyTorch, each engine in its own process, alternating.

A benchmark file defines ``ENGINES = {"neuronet-numpy": build, "neuronet-torch": build, "pytorch": build}``
where ``build()`` returns a zero-argument ``step`` callable (one training or inference step), and
ends with ``harness.main(ENGINES, title=...)``. Run it as ``python benchmarks/bench_x.py``:
the parent process starts one child per (round, engine) in the order A B C A B C ..., each child
times ``--steps`` calls after warm-up and reports the median wall time and the CPU time per step
(all threads of the process) and the bytes tracemalloc saw per step. Two BLAS/OpenMP thread pools
in one process fight over the cores, hence the separate processes. ``--threads N`` sets the BLAS
and OpenMP thread counts of every child alike; on a loaded machine ``--threads 1`` keeps idle
BLAS workers from spinning on cores that other processes need, and CPU time is then the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc


def _child(engines: dict, name: str, steps: int, warmup: int) -> None:
    step = engines[name]()
    for _ in range(warmup):
        step()
    times = []
    cpu = time.process_time()
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    cpu = (time.process_time() - cpu) / steps
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    n_alloc = 5
    for _ in range(n_alloc):
        step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"engine": name, "median_s": statistics.median(times), "cpu_s": cpu,
                      "peak_bytes_per_step": max(0, peak - before)}))


def main(engines: dict, title: str, steps: int = 50, warmup: int = 10, rounds: int = 3) -> dict:
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--engine", help="(internal) run one engine in this process")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--only", nargs="*", help="engines to run (default: all)")
    parser.add_argument("--threads", type=int, help="BLAS/OpenMP threads per engine (default: unset)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    if args.engine:
        _child(engines, args.engine, args.steps, args.warmup)
        return {}
    names = args.only or list(engines)
    env = dict(os.environ)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(args.threads)
    results: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    alloc: dict[str, int] = {}
    for _ in range(args.rounds):
        for name in names:
            out = subprocess.run([sys.executable, sys.argv[0], "--engine", name, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup)], capture_output=True, text=True, check=False,
                                 env=env)
            if out.returncode != 0:
                raise SystemExit(f"{name} failed:\n{out.stderr}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(row["median_s"])
            cpu[name].append(row["cpu_s"])
            alloc[name] = row["peak_bytes_per_step"]
    summary = {n: statistics.median(v) for n, v in results.items()}
    cpu_summary = {n: statistics.median(v) for n, v in cpu.items()}
    ref, cpu_ref = summary.get("pytorch"), cpu_summary.get("pytorch")
    threads = f", {args.threads} thread(s) per engine" if args.threads else ""
    print(f"\n{title}{threads}")
    print(f"{'engine':<18}{'ms/step':>10}{'steps/s':>10}{'ratio vs PyTorch':>18}{'CPU ms/step':>13}"
          f"{'CPU ratio':>11}{'peak B/step':>14}")
    for n in names:
        s, c = summary[n], cpu_summary[n]
        ratio = f"{ref / s:.2f}" if ref else "-"
        cpu_ratio = f"{cpu_ref / c:.2f}" if cpu_ref else "-"
        print(f"{n:<18}{s * 1e3:>10.2f}{1 / s:>10.1f}{ratio:>18}{c * 1e3:>13.2f}{cpu_ratio:>11}"
              f"{alloc[n]:>14,}")
    for warning in spread_warnings(results, args.rounds):
        print(warning)
    if args.json:
        print(json.dumps({"title": title, "threads": args.threads,
                          "ms": {n: s * 1e3 for n, s in summary.items()},
                          "cpu_ms": {n: c * 1e3 for n, c in cpu_summary.items()},
                          "ratio": {n: (ref / s if ref else None) for n, s in summary.items()}}))
    return summary


def spread_warnings(times: dict[str, list[float]], rounds: int, tolerance: float = 0.2) -> list[str]:
    """Warnings for timings not to trust: a single round, or rounds of an engine more than ``tolerance``
    apart (slowest / fastest - 1), which a busy machine causes."""
    if rounds < 2:
        return ["WARNING: one round only: nothing shows whether the machine was busy; use --rounds 3 "
                "before trusting these ratios"]
    return [f"WARNING: {name}: rounds differ by {max(v) / min(v) - 1:.0%} (> {tolerance:.0%}): the "
            "machine was busy; these ratios are unreliable (rerun, or use --threads 1)"
            for name, v in times.items() if min(v) > 0 and max(v) / min(v) - 1 > tolerance]


# ----------------------------------------------------------------- the step builders every benchmark shares
def neuronet_training(make_model, data, optimizer: str = "Adam", lr: float = 1e-3):
    """ENGINES entries for neuronet: ``for_backend(name)`` gives a build() of one train_step on ``data()``.

    ``make_model(nn)`` returns an uncompiled Sequential; the loss is cross-entropy.
    """
    def for_backend(backend: str):
        def build():
            import neuronet as nn

            x, y = data()
            model = make_model(nn)
            model.compile(optimizer=getattr(nn, optimizer)(lr), loss=nn.CrossEntropyLoss())
            model.build(tuple(x.shape[1:]))
            model.to(backend)
            if backend != "numpy":
                x, y = model.ops.asarray(x), model.ops.asarray(y)
            return lambda: model.train_step(x, y)
        return build
    return for_backend


def torch_training_step(model, optimizer, x, y, loss_fn):
    """One PyTorch training step as a PyTorch user writes it: zero_grad, forward, loss, backward, step."""
    def step():
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def standard_engines(neuronet_for_backend, pytorch_build) -> dict:
    """neuronet on each backend and PyTorch's own nn/optim, in the order they alternate."""
    return {"neuronet-numpy": neuronet_for_backend("numpy"), "neuronet-torch": neuronet_for_backend("torch"),
            "pytorch": pytorch_build}
