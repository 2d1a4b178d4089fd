"""Time the same workload in neuronet and in PyTorch, each engine in its own process, alternating.

A benchmark file defines ``ENGINES = {"neuronet-numpy": build, "neuronet-torch": build, "pytorch": build}``
where ``build()`` returns a zero-argument ``step`` callable (one training or inference step), and
ends with ``harness.main(ENGINES, title=..., flops=...)``. Run it as ``python benchmarks/bench_x.py``:
the parent process starts one child per (round, engine) in the order A B C A B C ..., each child
times ``--steps`` calls after warm-up and reports

- the median wall time and the CPU time per step (all threads of the process);
- the bytes tracemalloc saw allocated per step (the steady state should allocate nothing);
- its peak resident memory (``ru_maxrss``) after the imports and after build + all the steps: the
  memory a training run of this model and batch needs, import of NumPy/Numba/torch included;
- the float32 GEMM ceiling of its own library (a square sgemm of ``--gemm`` timed in the same
  process, NumPy's BLAS for the NumPy engine, ``torch.mm`` otherwise), so that the workload's
  achieved GFLOP/s (``flops`` per step / step time) reads as a fraction of what the cores did that
  minute.

The parent prints, per engine, the ratio of PyTorch's time to the engine's in each round (> 1: faster
than PyTorch) as median (min-max), and warns when one engine's rounds disagree by more than 20 %
(a loaded machine: rerun, or trust the CPU-time ratio). Two BLAS/OpenMP thread pools in one process
fight over the cores, hence the separate processes. ``--threads N`` sets the BLAS and OpenMP thread
counts of every child alike; on a loaded machine ``--threads 1`` keeps idle BLAS workers from
spinning on cores that other processes need, and CPU time is then the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

SPREAD_WARNING = 0.20  # rounds whose ratios differ by more than this (slowest / fastest - 1)
JSON_SUMMARY = "NEURONET_BENCH_JSON"  # set: main() ends with its summary as one JSON line


def _peak_rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def gemm_ceiling(library: str, n: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` float32 (n x n) @ (n x n) products in this process."""
    import numpy as np

    if library == "numpy":
        if "neuronet" in sys.modules:  # its last product may have left OpenBLAS on one thread
            from neuronet.backend import blas_threads

            blas_threads.use_all_threads()
        a, b = (np.random.default_rng(0).random((n, n), dtype=np.float32) for _ in range(2))
        out = np.empty((n, n), np.float32)

        def product():
            np.matmul(a, b, out=out)
    else:
        import torch

        a, b, out = torch.rand(n, n), torch.rand(n, n), torch.empty(n, n)

        def product():
            torch.mm(a, b, out=out)
    product()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def step_times(step, steps: int, warmup: int = 0, sync=lambda: None) -> list[float]:
    """Wall seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones, each ending in
    ``sync()`` (a GPU's ``torch.cuda.synchronize``: its queued work counted in the step that queued it)."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return times


def _child(engines: dict, name: str, steps: int, warmup: int, gemm: int) -> None:
    step = engines[name]()
    rss_built = _peak_rss_mib()
    for _ in range(warmup):
        step()
    cpu = time.process_time()
    times = step_times(step, steps)
    cpu = (time.process_time() - cpu) / steps
    rss_peak = _peak_rss_mib()  # before tracemalloc and the GEMM below add their own
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    n_alloc = min(5, steps)
    for _ in range(n_alloc):
        step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ceiling = gemm_ceiling("numpy" if "numpy" in name else "torch", gemm) if gemm else None
    print(json.dumps({"engine": name, "median_s": statistics.median(times), "cpu_s": cpu,
                      "peak_bytes_per_step": max(0, peak - before), "rss_built_mib": rss_built,
                      "rss_peak_mib": rss_peak, "gemm_gflops": ceiling}))


def thread_environment(threads: int | None) -> dict:
    """The environment for an engine's process: this one's, with every thread pool at ``threads`` if given."""
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(threads)
    return env


def _spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def main(engines: dict, title: str, steps: int = 50, warmup: int = 10, rounds: int = 3,
         flops: float | None = None) -> dict:
    """Run every engine ``rounds`` times, alternating, and print the table; returns the JSON summary.

    ``flops``: floating-point operations of one step (multiply-adds count 2), for the GFLOP/s columns.
    """
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--engine", help="(internal) run one engine in this process")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--only", nargs="*", help="engines to run (default: all)")
    parser.add_argument("--threads", type=int, help="BLAS/OpenMP threads per engine (default: unset)")
    parser.add_argument("--gemm", type=int, default=1024, help="size of the sgemm ceiling (0: skip)")
    parser.add_argument("--json", action="store_true", default=bool(os.environ.get(JSON_SUMMARY)),
                        help=f"print the summary as JSON (also {JSON_SUMMARY}=1: neuronet bench --markdown)")
    args = parser.parse_args()
    if args.engine:
        _child(engines, args.engine, args.steps, args.warmup, args.gemm)
        return {}
    names = args.only or list(engines)
    env = thread_environment(args.threads)
    rows: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            out = subprocess.run([sys.executable, sys.argv[0], "--engine", name, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup), "--gemm", str(args.gemm)],
                                 capture_output=True, text=True, check=False, env=env)
            if out.returncode != 0:
                raise SystemExit(f"{name} failed:\n{out.stderr}")
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = summarize(rows, flops)
    print(format_table(summary, f"{title}{f', {args.threads} thread(s) per engine' if args.threads else ''}"
                       f", {args.rounds} rounds x {args.steps} steps"))
    summary.update(title=title, threads=args.threads, rounds=args.rounds, steps=args.steps)
    if args.json:
        print(json.dumps(summary))
    return summary


def summarize(rows: dict[str, list[dict]], flops: float | None) -> dict:
    """Per engine: median step, per-round ratios to PyTorch (min, median, max), CPU ratio, memory, GFLOP/s."""
    ref = rows.get("pytorch")
    out: dict = {"engines": {}}
    spreads: dict[str, list[float]] = {}  # per engine: its round ratios (raw times without PyTorch)
    for name, runs in rows.items():
        wall = [r["median_s"] for r in runs]
        cpu = [r["cpu_s"] for r in runs]
        entry = {"ms": _spread([w * 1e3 for w in wall]), "cpu_ms": _spread([c * 1e3 for c in cpu]),
                 "rss_peak_mib": max(r["rss_peak_mib"] for r in runs),
                 "rss_built_mib": max(r["rss_built_mib"] for r in runs),
                 "peak_bytes_per_step": max(r["peak_bytes_per_step"] for r in runs)}
        if ref:
            entry["ratio"] = _spread([p["median_s"] / r["median_s"] for p, r in zip(ref, runs, strict=True)])
            entry["cpu_ratio"] = _spread([p["cpu_s"] / r["cpu_s"] for p, r in zip(ref, runs, strict=True)])
            entry["rss_vs_pytorch"] = entry["rss_peak_mib"] / max(p["rss_peak_mib"] for p in ref)
            if name != "pytorch":
                spreads[name] = [p["median_s"] / r["median_s"] for p, r in zip(ref, runs, strict=True)]
        else:
            spreads[name] = wall
        ceilings = [r["gemm_gflops"] for r in runs if r.get("gemm_gflops")]
        if flops:
            entry["gflops"] = flops / (statistics.median(wall)) / 1e9
            if ceilings:
                entry["gemm_gflops"] = statistics.median(ceilings)
                entry["fraction_of_gemm"] = entry["gflops"] / entry["gemm_gflops"]
        out["engines"][name] = entry
    out["warnings"] = spread_warnings(spreads, min(len(r) for r in rows.values()), SPREAD_WARNING)
    out["unsteady"] = [name for name, v in spreads.items() if _unsteady(v, SPREAD_WARNING)]
    return out


def _unsteady(values: list[float], tolerance: float) -> bool:
    return min(values) > 0 and max(values) / min(values) - 1 > tolerance


def spread_warnings(times: dict[str, list[float]], rounds: int, tolerance: float = 0.2) -> list[str]:
    """Warnings for timings not to trust: a single round, or rounds of an engine more than ``tolerance``
    apart (slowest / fastest - 1), which a busy machine causes."""
    if rounds < 2:
        return ["WARNING: one round only: nothing shows whether the machine was busy; use --rounds 3 "
                "before trusting these ratios"]
    return [f"WARNING: {name}: rounds differ by {max(v) / min(v) - 1:.0%} (> {tolerance:.0%}): the "
            "machine was busy; these ratios are unreliable (rerun, read the CPU ratio, or use --threads 1)"
            for name, v in times.items() if _unsteady(v, tolerance)]


def format_table(summary: dict, title: str) -> str:
    lines = [f"\n{title}",
             f"{'engine':<22}{'ms/step':>9}{'ratio vs PyTorch':>22}{'CPU ratio':>11}{'peak RSS':>10}"
             f"{'vs PT':>7}{'B/step':>12}{'GFLOP/s':>9}{'of sgemm':>15}"]
    for name, e in summary["engines"].items():
        ratio = "{1:.2f} ({0:.2f}-{2:.2f})".format(*e["ratio"]) if "ratio" in e else "-"
        cpu = f"{e['cpu_ratio'][1]:.2f}" if "cpu_ratio" in e else "-"
        mem = f"{e['rss_vs_pytorch']:.2f}" if "rss_vs_pytorch" in e else "-"
        gf = f"{e['gflops']:.1f}" if "gflops" in e else "-"
        frac = f"{e['fraction_of_gemm']:.0%} of {e['gemm_gflops']:.0f}" if "fraction_of_gemm" in e else "-"
        lines.append(f"{name:<22}{e['ms'][1]:>9.2f}{ratio:>22}{cpu:>11}{e['rss_peak_mib']:>7.0f}MiB{mem:>7}"
                     f"{e['peak_bytes_per_step']:>12,}{gf:>9}{frac:>15}")
    lines += summary["warnings"]
    return "\n".join(lines)


MARKDOWN_ENGINES = ("neuronet-numpy", "neuronet-numpy-auto", "neuronet-torch")


def markdown_table(summaries: list[dict]) -> str:
    """The README's kind of table from ``main``'s JSON summaries (one row per benchmark run): each
    neuronet engine's ratio to PyTorch as median (min-max), † where its rounds differed by more than
    SPREAD_WARNING, and peak RSS against PyTorch's."""
    head = ["workload", *MARKDOWN_ENGINES, "peak RSS ÷ PyTorch's (" + " / ".join(MARKDOWN_ENGINES) + ")"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for summary in summaries:
        engines, cells, memory = summary["engines"], [], []
        for name in MARKDOWN_ENGINES:
            e = engines.get(name)
            if e is None or "ratio" not in e:
                cells.append("–")
                memory.append("–")
                continue
            low, mid, high = e["ratio"]
            mark = "†" if name in summary.get("unsteady", ()) else ""
            cells.append(f"{mid:.2f} ({low:.2f}–{high:.2f}){mark}")
            memory.append(f"{e['rss_vs_pytorch']:.2f}")
        threads = f", {summary['threads']} thread(s)" if summary.get("threads") else ""
        lines.append(f"| {summary['title']}{threads} | " + " | ".join(cells) + f" | {' / '.join(memory)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------- FLOP counts (multiply-add = 2 FLOPs)
def training_flops(forward_flops: float) -> float:
    """A training step's GEMM work: forward, then dL/dx and dL/dW each as large as the forward."""
    return 3.0 * forward_flops


def transformer_forward_flops(batch: int, block: int, dim: int, ff: int, layers: int, vocab: int) -> float:
    """Matmul FLOPs of a GPT forward: qkv + out projections, q k^T and p v, the FFN, the LM head."""
    tokens = batch * block
    per_layer = 2 * tokens * dim * (4 * dim + 2 * ff) + 4 * batch * block * block * dim
    return layers * per_layer + 2 * tokens * dim * vocab


# ----------------------------------------------------------------- the step builders every benchmark shares
def neuronet_training(make_model, data, optimizer: str = "Adam", lr: float = 1e-3):
    """ENGINES entries for neuronet: ``for_backend(name)`` gives a build() of one train_step on ``data()``.

    ``make_model(nn)`` returns an uncompiled Sequential; the loss is cross-entropy.
    """
    def for_backend(backend: str, cuda_graph: bool = False, mixed_precision: str | None = None,
                    workers: int | str = 1):
        def build():
            import neuronet as nn

            x, y = data()
            model = make_model(nn)
            model.compile(optimizer=getattr(nn, optimizer)(lr), loss=nn.CrossEntropyLoss(),
                          cuda_graph=cuda_graph, mixed_precision=mixed_precision, workers=workers)
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


def standard_engines(neuronet_for_backend, pytorch_build, training: bool = True) -> dict:
    """neuronet on each backend and PyTorch's own nn/optim, in the order they alternate; for training
    also ``neuronet-numpy-auto``: the NumPy backend compiled with ``workers="auto"`` (the batch split over
    one training replica per core where that measures faster and gives the same result)."""
    engines = {"neuronet-numpy": neuronet_for_backend("numpy"),
               "neuronet-torch": neuronet_for_backend("torch"), "pytorch": pytorch_build}
    if training:
        engines["neuronet-numpy-auto"] = neuronet_for_backend("numpy", workers="auto")
    return engines
