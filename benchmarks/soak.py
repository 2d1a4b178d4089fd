"""Soak test: long training runs must keep resident memory, open file descriptors and step time flat.

Trains an MLP (784-256-256-10, batch 64, Adam) for ``--mlp-steps`` steps and a small CNN
(conv8-pool-conv16-pool-fc64-fc10 on 28x28, batch 32, Adam) for ``--cnn-steps`` steps through
``model.fit`` with a ``ModelCheckpoint`` every ``--save-every`` batches (so file handling is soaked
too) and a ``TerminateOnNaN``. Every ``--window`` steps it records the resident set size
(/proc/self/statm), the number of open file descriptors (/proc/self/fd) and the median step time
of the window; it prints the first and the last window side by side and the ratios, and exits
non-zero when the last window exceeds the first by more than the tolerances (RSS +16 MiB, any new
file descriptor, median step time x1.5 — step time is noisy on a loaded machine: read it as a flag).

    python benchmarks/soak.py                              # 20,000 MLP + 5,000 CNN steps
    python benchmarks/soak.py --mlp-steps 4000 --cnn-steps 1000 --json soak.json   # reduced
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a source checkout's neuronet

import neuronet as nn  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Probe(nn.Callback):
    """Per-batch wall time; RSS, fds and the window's median step time every ``window`` batches."""

    def __init__(self, window: int):
        self.window, self.rows, self.steps = window, [], 0
        self.times = np.zeros(window)  # preallocated: the probe itself must not grow
        self._t = time.perf_counter()
        self._cpu = time.process_time()

    def on_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_batch_end(self, batch, logs=None):
        self.times[self.steps % self.window] = time.perf_counter() - self._t
        self.steps += 1
        if self.steps % self.window == 0:
            cpu = time.process_time()
            self.rows.append({"steps": self.steps, "rss_mib": round(rss_mib(), 1), "fds": open_fds(),
                              "median_ms": round(1e3 * float(np.median(self.times)), 3),
                              "cpu_ms": round(1e3 * (cpu - self._cpu) / self.window, 3)})
            self._cpu = cpu


def mlp():
    return nn.Sequential(nn.Dense(784, 256, activation="relu"), nn.Dense(256, 256, activation="relu"),
                         nn.Dense(256, 10)), (784,), 64


def cnn():
    return nn.Sequential(nn.Conv2D(1, 8, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
                         nn.Conv2D(8, 16, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
                         nn.Flatten(), nn.Dense(784, 64, activation="relu"), nn.Dense(64, 10)), \
        (1, 28, 28), 32


def soak(name: str, build, steps: int, window: int, save_every: int, folder: Path) -> dict:
    nn.manual_seed(0)
    model, shape, batch = build()
    model.compile(nn.Adam(1e-3), "cross_entropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    n = batch * 50  # 50 batches an epoch: epochs turn over (shuffles, callbacks) many times
    x = rng.random((n, *shape), dtype=np.float32)
    y = rng.integers(0, 10, n)
    probe = Probe(window)
    checkpoint = nn.ModelCheckpoint(str(folder / f"{name}.nnet"), save_freq=save_every)
    model.fit(x, y, epochs=-(-steps // 50), batch_size=batch, verbose=0, shuffle=True,
              callbacks=[probe, checkpoint, nn.TerminateOnNaN()])
    first, last = probe.rows[0], probe.rows[-1]
    return {"model": name, "steps": probe.steps, "window": window, "first": first, "last": last,
            "rss_growth_mib": round(last["rss_mib"] - first["rss_mib"], 1),
            "fd_growth": last["fds"] - first["fds"],
            "step_time_ratio": round(last["median_ms"] / first["median_ms"], 3),
            "cpu_time_ratio": round(last["cpu_ms"] / first["cpu_ms"], 3), "rows": probe.rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mlp-steps", type=int, default=20_000)
    p.add_argument("--cnn-steps", type=int, default=5_000)
    p.add_argument("--window", type=int, default=1000, help="steps per measurement window")
    p.add_argument("--save-every", type=int, default=500, help="ModelCheckpoint every N batches")
    p.add_argument("--json", help="also write the results (every window) to this file")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: idle BLAS workers spinning on a loaded machine swamp "
                        "the timings; 0 leaves the library default)")
    args = p.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, build, steps in (("mlp", mlp, args.mlp_steps), ("cnn", cnn, args.cnn_steps)):
            if steps >= 2 * args.window:
                results.append(soak(name, build, steps, args.window, args.save_every, Path(folder)))
    ok = True
    print(f"{'model':<5} {'steps':>6}  {'RSS MiB first/last':>20}  {'fds first/last':>15}  "
          f"{'median ms first/last':>21}  {'ratio':>5}  {'CPU ms first/last':>19}  {'ratio':>5}")
    for r in results:
        f, la = r["first"], r["last"]
        print(f"{r['model']:<5} {r['steps']:>6}  {f['rss_mib']:>9.1f} / {la['rss_mib']:<8.1f}  "
              f"{f['fds']:>6} / {la['fds']:<6}  {f['median_ms']:>9.3f} / {la['median_ms']:<9.3f}  "
              f"{r['step_time_ratio']:>5.2f}  {f['cpu_ms']:>8.3f} / {la['cpu_ms']:<8.3f}  "
              f"{r['cpu_time_ratio']:>5.2f}")
        ok &= r["rss_growth_mib"] <= 16 and r["fd_growth"] <= 0 and r["step_time_ratio"] <= 1.5
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("flat" if ok else "NOT FLAT: see the numbers above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
