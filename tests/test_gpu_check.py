"""benchmarks/gpu_check.py: refuses without CUDA (never reports GPU numbers from a CPU run) and its timing
machinery runs (smoke run on the CPU with one workload)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_says_so_and_exits_2():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 2 and "no CUDA device" in out.stderr and "ms/step" not in out.stdout


def test_cpu_smoke_run_prints_the_table_and_the_graph_refusal():
    engines = ["neuronet-torch", "neuronet-torch+graph", "neuronet-torch+bf16", "pytorch+bf16"]
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--workloads", "mlp", "--engines",
                          *engines, "--steps", "1", "--warmup", "1"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "mlp" in out.stdout and "needs the torch backend on a CUDA device" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("mlp "))
    assert all(float(cell) > 0 for cell in row.split()[-2:])  # both bfloat16 engines ran


def test_cpu_smoke_run_of_the_recomputing_engines():
    """nn.Remat and torch.utils.checkpoint engines run the transformer workload and leave the others' cells
    empty; the memory table has a row per workload (empty without CUDA)."""
    engines = ["neuronet-torch+remat", "pytorch", "pytorch+checkpoint"]
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--workloads", "gpt", "mlp",
                          "--engines", *engines, "--steps", "1", "--warmup", "1"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("gpt ", "mlp "))]
    gpt, mlp = rows[:2]  # the speed table's rows (the memory table's follow)
    assert all(float(cell) > 0 for cell in gpt[1::2]), gpt  # ms of each engine, then its ratio
    assert mlp[1] == "-" and mlp[-1] == "-", mlp
    assert "peak GPU memory MiB" in out.stdout


def test_cpu_smoke_run_of_the_layer_table_alone():
    """--layers with no workloads: bench_layers' table of the layers named (here on the CPU, all three
    engines) and nothing else."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--workloads", "--layers", "relu"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "One layer's forward + backward" in out.stdout and "ms/step" not in out.stdout
    assert [line.split()[0] for line in out.stdout.splitlines()[2:]] == ["relu"]


def test_budget_stops_starting_processes_and_each_result_prints_as_it_ends():
    """--budget: once spent no engine starts (its cell says so); a finished engine's line came first."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--workloads", "mlp", "--engines",
                          "pytorch", "neuronet-torch", "--steps", "1", "--warmup", "1", "--budget", "0"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mlp / pytorch: not run: the --budget was spent" in out.stdout
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--workloads", "mlp", "--engines",
                          "pytorch", "--steps", "1", "--warmup", "1", "--budget", "300"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    first = out.stdout.splitlines()[0]
    assert first.startswith("[mlp / pytorch] {") and '"ms"' in first, out.stdout
