"""Every table benchmark's neuronet engines build and run a step (a benchmark that no longer runs
would otherwise only show up when someone times it)."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench(monkeypatch_module):
    monkeypatch_module.syspath_prepend(str(BENCHMARKS))
    monkeypatch_module.setenv("NEURONET_NANOGPT_BATCH", "1")
    return lambda name: importlib.import_module(name)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
    for name in [n for n in sys.modules if n.startswith("bench_") or n == "harness"]:
        del sys.modules[name]


def _engines(module):
    return module.engines("train") | {"predict-" + k: v for k, v in module.engines("predict").items()} \
        if hasattr(module, "engines") else module.ENGINES


@pytest.mark.parametrize("name", ["bench_mlp", "bench_cnn", "bench_lstm", "bench_gpt", "bench_moe",
                                  "bench_resnet", "bench_nanogpt"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_neuronet_engines_of_each_benchmark_run(bench, name, backend):
    engines = {k: v for k, v in _engines(bench(name)).items() if "neuronet-" + backend in k}
    assert engines, f"{name} has no neuronet-{backend} engine"
    for build in engines.values():
        step = build()
        for _ in range(3):  # neuronet-numpy-auto: its second step chooses the workers
            loss = step()
        if isinstance(loss, float):
            assert np.isfinite(loss)


def test_the_pytorch_checkpoint_engine_computes_what_pytorch_does(bench):
    """nanoGPT's pytorch-checkpoint engine (torch.utils.checkpoint per block) is the same step, dropout
    masks included: the recomputation draws them again from the same random state."""
    import torch

    module = bench("bench_nanogpt")
    losses = []
    for name in ("pytorch", "pytorch-checkpoint"):
        torch.manual_seed(0)
        step = module.engines("train")[name]()
        torch.manual_seed(1)
        losses.append([step(), step()])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_every_layer_of_the_layer_benchmark_runs_on_both_engines(bench):
    """bench_layers: each case's neuronet layer and PyTorch module take the same input and give outputs of
    one shape, and a step of each runs."""
    import torch

    import neuronet as nn

    module = bench("bench_layers")
    for name, (make_layer, make_module, x) in module.cases(nn, torch).items():
        layer = nn.Sequential(make_layer())
        layer.build(x.shape[1:])
        theirs = make_module()(torch.from_numpy(x))
        assert layer.forward(x, training=True).shape == tuple(theirs.shape), name
        module.neuronet_step(nn, make_layer, x)()
        module.neuronet_step(nn, make_layer, x, "torch")()
        module.torch_step(torch, make_module, x)()


def test_the_layer_benchmark_on_a_gpu_runs_the_torch_backend_only(bench):
    """bench_layers --device cuda: no NumPy engine off the CPU (what the option does on a GPU is not run
    here: no GPU)."""
    module = bench("bench_layers")
    assert module.engines_on("cpu") == module.ENGINES
    assert module.engines_on("cuda") == ("neuronet-torch", "pytorch")


def test_count_kernels_counts_a_step_on_meta_against_pytorch():
    """benchmarks/count_kernels.py: the MLP's training step on the torch backend's device path launches no
    more kernels than PyTorch's eager step (both counted on the meta device), and the fused attention
    fewer than the explicit one in the char GPT's step."""
    import subprocess

    script = str(BENCHMARKS / "count_kernels.py")
    counts = {}
    for engine in ("mlp:neuronet", "mlp:pytorch", "gpt:neuronet", "gpt:fused"):
        run = subprocess.run([sys.executable, script, "--engine", engine], capture_output=True, text=True,
                             check=True, timeout=300)
        counts[engine] = int(run.stdout.split()[0])
    assert 0 < counts["mlp:neuronet"] <= counts["mlp:pytorch"]
    assert counts["gpt:fused"] < counts["gpt:neuronet"]
