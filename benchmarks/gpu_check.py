"""One script for a machine with a CUDA GPU: the torch backend's correctness tests on it, then timings.

    python benchmarks/gpu_check.py                  # tests, then every workload
    python benchmarks/gpu_check.py --skip-tests --workloads mlp gpt --steps 100
    python benchmarks/gpu_check.py --skip-tests --workloads --layers   # only each layer alone
    python benchmarks/gpu_check.py --skip-tests --workloads --layers conv2d_s2 lstm
    python benchmarks/gpu_check.py --budget 420 --workloads mlp cnn gpt --steps 30   # a short device lend

1. ``pytest`` over the tests that exercise the torch backend, with ``NEURONET_TORCH_DEVICE=cuda`` so that
   every ``model.to("torch")`` in them lands on the GPU (``tests/test_sync_free.py`` then also runs its
   CUDA-graph tests, which are skipped without a GPU) and ``NEURONET_HOST_MASKS=1`` so that dropout's masks
   are the NumPy backend's, which the backend-agreement tests compare (training draws them on the GPU).
2. Per workload (the CPU benchmarks' models, batches and optimizers), each engine in its own process:
   neuronet-torch eager, neuronet-torch with ``compile(cuda_graph=True)``, neuronet-torch with
   ``compile(mixed_precision="bfloat16")``, PyTorch eager, PyTorch under ``torch.compile`` and PyTorch
   under ``torch.autocast(dtype=torch.bfloat16)``; for the transformer workloads also each block
   recomputed in backward (neuronet ``nn.Remat``, PyTorch ``torch.utils.checkpoint``); median ms/step
   over ``--steps`` after ``--warmup`` steps, each step ending in a read of the loss (as ``train_step``
   and the usual PyTorch loop do), and two tables against PyTorch eager: speed (> 1: faster) and peak
   GPU memory (``torch.cuda.max_memory_allocated``; < 1: less).
3. With ``--layers [NAME ...]``, ``bench_layers.py --device cuda``: each layer alone (or those named), the
   torch backend against the same PyTorch module on the GPU.

Each result is printed the moment its process ends (``[workload / engine] ...``), so a run cut short still
leaves what it measured; ``--budget SECONDS`` bounds the whole run: the tests get at most half of it, and
no process starts once it is spent (those cells say so).

Without CUDA it says so and exits with status 2: nothing in it has been run on a GPU where that
happens, and no GPU result may be claimed from a CPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = ["tests/backend", "tests/layers", "tests/losses", "tests/optim", "tests/test_training.py",
         "tests/test_sync_free.py"]
ENGINES = ["neuronet-torch", "neuronet-torch+graph", "neuronet-torch+bf16", "neuronet-torch+remat", "pytorch",
           "pytorch+compile", "pytorch+bf16", "pytorch+checkpoint"]
WORKLOADS = ["mlp", "cnn", "lstm", "gpt", "moe", "resnet", "nanogpt"]
BLOCKS = {"gpt", "nanogpt"}  # the workloads of transformer blocks: +remat / +checkpoint recompute each one


def _builders(workload: str, recompute: bool = False):
    """(neuronet for_backend, PyTorch build) of one CPU benchmark's workload; with ``recompute`` each
    transformer block in nn.Remat / under torch.utils.checkpoint."""
    sys.path.insert(0, str(HERE))
    import harness

    if workload == "cnn":
        import bench_cnn

        data = lambda: bench_cnn._data(bench_cnn.TRAIN_BATCH)  # noqa: E731
        return harness.neuronet_training(bench_cnn.neuronet_model, data), bench_cnn.pytorch("train")
    if workload in BLOCKS:
        import bench_gpt
        import bench_nanogpt

        b = bench_nanogpt if workload == "nanogpt" else bench_gpt
        return (harness.neuronet_training(bench_gpt.neuronet_gpt(**b.SHAPE, remat=recompute), b._data,
                                          optimizer="AdamW"),
                bench_gpt.pytorch_gpt(b._data, **b.SHAPE, checkpoint=recompute))
    module = __import__(f"bench_{workload}")
    return module.neuronet, module.pytorch


def _on_device(device: str, engine: str) -> None:
    """Make the CPU benchmarks' PyTorch builders build on ``device`` (and wrap the model in torch.compile,
    or the step in bfloat16 autocast, as the engine says)."""
    import harness
    import torch

    torch.set_default_device(device)
    from_numpy = torch.from_numpy
    torch.from_numpy = lambda a: from_numpy(a).to(device)
    step = harness.torch_training_step
    if engine.endswith("compile"):
        harness.torch_training_step = lambda model, *rest: step(torch.compile(model), *rest)
    if engine.endswith("bf16"):
        def autocast_step(*args):
            inner = step(*args)

            def run():
                with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
                    return inner()
            return run
        harness.torch_training_step = autocast_step


def _child(workload: str, engine: str, steps: int, warmup: int, device: str) -> None:
    import torch

    neuronet, pytorch = _builders(workload, recompute=engine.endswith(("remat", "checkpoint")))
    if engine.startswith("pytorch"):
        _on_device(device, engine)
        step = pytorch()
    else:
        step = neuronet("torch" if device == "cpu" else device, cuda_graph=engine.endswith("graph"),
                        mixed_precision="bfloat16" if engine.endswith("bf16") else None)()
    import harness  # (on the path since _builders)

    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    times = harness.step_times(step, steps, warmup, sync)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    print(json.dumps({"ms": statistics.median(times) * 1e3, "peak_mib": peak}))


def run_tests(seconds: float | None) -> int:
    """pytest over TESTS on the GPU; at most ``seconds`` (None: no limit), then stopped with status 1."""
    # (NEURONET_HOST_MASKS: dropout's masks as the NumPy backend draws them, which the backend-agreement
    # tests compare; training draws them on the GPU)
    env = dict(os.environ, NEURONET_TORCH_DEVICE="cuda", NEURONET_HOST_MASKS="1",
               PYTHONPATH=str(HERE.parent / "src"))
    try:
        return subprocess.call([sys.executable, "-m", "pytest", "-q", *TESTS], cwd=HERE.parent, env=env,
                               timeout=seconds)
    except subprocess.TimeoutExpired:
        print(f"gpu_check: the tests were stopped after {seconds:.0f} s (--budget)", flush=True)
        return 1


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def run_timings(workloads: list[str], engines: list[str], steps: int, warmup: int, timeout: int,
                device: str, deadline: float | None = None) -> None:
    """Each (workload, engine) in its own process, printed as it ends, then the two tables; no process
    starts after ``deadline`` (time.monotonic())."""
    rows = {}
    for workload in workloads:
        for engine in engines:
            if engine.endswith(("remat", "checkpoint")) and workload not in BLOCKS:
                rows[workload, engine] = {"ms": None, "peak_mib": None}  # no blocks to recompute
                continue
            left = _left(deadline)
            if left is not None and left < 1:
                rows[workload, engine] = {"error": "not run: the --budget was spent"}
                continue
            limit = timeout if left is None else min(timeout, left)
            cmd = [sys.executable, __file__, "--child", workload, engine, "--steps", str(steps),
                   "--warmup", str(warmup), "--device", device]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
                ok = out.returncode == 0
                rows[workload, engine] = json.loads(out.stdout.strip().splitlines()[-1]) if ok else \
                    {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
            except subprocess.TimeoutExpired:
                rows[workload, engine] = {"error": f"timed out after {limit:.0f} s"}
            print(f"[{workload} / {engine}] {json.dumps(rows[workload, engine])}", flush=True)
    for key, unit, faster in (("ms", "ms/step; x PyTorch eager's speed", True),
                              ("peak_mib", "peak GPU memory MiB; x PyTorch eager's", False)):
        print(f"\n{'workload':<10}" + "".join(f"{e:>24}" for e in engines) + f"   ({unit})")
        for workload in workloads:
            ref = rows.get((workload, "pytorch"), {}).get(key)
            cells = []
            for engine in engines:
                r = rows[workload, engine]
                value = r.get(key)
                cells.append("failed (below)" if "error" in r else "-" if value is None else
                             f"{value:.2f} ({(ref / value if faster else value / ref):.2f}x)" if ref else
                             f"{value:.2f}")
            print(f"{workload:<10}" + "".join(f"{c:>24}" for c in cells))
    errors = {k: v["error"] for k, v in rows.items() if "error" in v}
    for (workload, engine), message in errors.items():
        print(f"{workload} / {engine}: {message}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "ENGINE"), help=argparse.SUPPRESS)
    parser.add_argument("--workloads", nargs="*", default=WORKLOADS, choices=WORKLOADS)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per (workload, engine)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--engines", nargs="*", default=ENGINES, choices=ENGINES)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 (cpu: a smoke run of this script)")
    parser.add_argument("--layers", nargs="*", help="then each layer alone, or those named (bench_layers.py)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (the tests at most half)")
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.steps, args.warmup, args.device)
        return 0
    import torch

    status, on_gpu = 0, args.device != "cpu"  # cpu: checks that the script runs; its numbers mean nothing
    if on_gpu and not torch.cuda.is_available():
        print("gpu_check: PyTorch sees no CUDA device here; nothing was checked (this script is for a GPU "
              "machine)", file=sys.stderr)
        return 2
    deadline = None if args.budget is None else time.monotonic() + args.budget
    if on_gpu:
        print(f"gpu_check on {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
        status = 0 if args.skip_tests else run_tests(None if args.budget is None else args.budget / 2)
    if args.workloads:
        run_timings(args.workloads, args.engines, args.steps, args.warmup, args.timeout, args.device,
                    deadline)
    if args.layers is not None:
        only = ["--only", *args.layers] if args.layers else []
        layers = subprocess.call([sys.executable, str(HERE / "bench_layers.py"), "--device", args.device,
                                  *only])
        status = status or layers
    return status


if __name__ == "__main__":
    sys.exit(main())
