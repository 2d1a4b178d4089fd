"""Smoke-run every example in ``examples/`` end to end with a tiny configuration.

Each example runs in its own subprocess from the repository root, as its README shows, with arguments
that make it small (a few steps, a small data subset). A test checks the exit code, the result line the
example prints at the end (with no NaN in it), that the files the example writes land in a temporary
folder, and that nothing new appears in the example's own folder. Examples driven by ``config.yaml`` go
through ``neuronet train`` (and ``neuronet evaluate`` where their README shows it) with a temporary copy
of the config whose dataset is cut down. One test per example, so ``pytest -n 2`` spreads them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"
TIMEOUT = 300  # seconds per command: a hung example fails instead of stalling the suite


@dataclass(frozen=True)
class Example:
    """How to run one example small.

    ``args`` follow ``examples/<folder>/main.py``; ``{tmp}`` stands for the test's temporary folder and
    ``{data}`` for the data root. ``expect``: a regex that must match a whole line of the output.
    ``data``: what the example reads under the data root (the test is skipped when it is missing).
    ``writes``: files (relative to ``{tmp}``) that must exist afterwards. ``config``: overrides merged
    into a temporary copy of the example's ``config.yaml``, trained with ``neuronet train --epochs 1``;
    ``evaluate``: the data argument of a following ``neuronet evaluate`` on the trained model.
    """

    id: str
    args: tuple[str, ...] = ()
    expect: str = ""
    data: str | None = None
    writes: tuple[str, ...] = ()
    config: dict | None = None
    evaluate: str | None = None
    folder: str = ""  # examples/<folder> when it differs from id

    @property
    def path(self) -> Path:
        return EXAMPLES_DIR / (self.folder or self.id)


FLOAT = r"[-+]?\d+\.\d+"
TRAINED = rf"trained 1 epochs in {FLOAT} s; test: loss {FLOAT}, accuracy {FLOAT}"
RUN_FILES = ("run/model.nnet", "run/history.csv", "run/history.png")

# Ordered slowest first, so the xdist load scheduler balances the two workers.
EXAMPLES = [
    Example("cifar10", ("--epochs", "1"),
            rf"train accuracy {FLOAT}  held-out accuracy {FLOAT} \(chance 0\.100; 160 train .*",
            data="cifar10-sample/train_sample_200.bin"),
    Example("char_gpt", ("--iters", "2", "--eval-iters", "2"),
            rf"final \(2 batches\): train loss {FLOAT}, val loss {FLOAT}; .*",
            data="tinyshakespeare/input.txt"),
    Example("char_gpt-remat", ("--iters", "2", "--eval-iters", "2", "--remat"),
            rf"final \(2 batches\): train loss {FLOAT}, val loss {FLOAT}; .*",
            data="tinyshakespeare/input.txt", folder="char_gpt"),
    Example("llama_block", ("--iters", "2", "--eval-iters", "2"),
            rf"final \(2 batches\): train loss {FLOAT}, val loss {FLOAT}; .*",
            data="tinyshakespeare/input.txt"),
    Example("mnist_mlp-config", expect=TRAINED, data="mnist", writes=RUN_FILES, folder="mnist_mlp",
            config={"dataset": {"limit": 512}}),
    Example("autoencoder", ("--epochs", "1", "--limit", "512", "--out", "{tmp}/reconstructions.png"),
            rf"test reconstruction MSE {FLOAT} \(mean-image baseline {FLOAT}\); .*",
            data="mnist", writes=("reconstructions.png",)),
    Example("unet_denoise", ("--epochs", "1", "--limit", "128", "--test-limit", "64",
                             "--out", "{tmp}/denoised.png"),
            rf"test MSE: U-Net {FLOAT}, conv autoencoder {FLOAT}, noisy input {FLOAT}; wrote .*denoised\.png",
            data="mnist", writes=("denoised.png",)),
    Example("seq2seq_reverse", ("--epochs", "1", "--train", "256", "--test", "32", "--dim", "16"),
            rf"greedy decoding on \d+ held-out strings: per-token accuracy {FLOAT}, exact match {FLOAT}"),
    Example("shakespeare_char", expect=TRAINED, data="tinyshakespeare/input.txt", writes=RUN_FILES,
            config={"dataset": {"path": "{data}/tinyshakespeare/input.txt", "limit": 64,
                                "splits": {"test": 0.01}}},
            evaluate="{tmp}/config.yaml"),
    Example("mnist_cnn", ("--epochs", "1", "--limit", "256", "--test-limit", "256"),
            rf"test loss {FLOAT}  test accuracy {FLOAT}  \(1 epochs on 256 images, .*", data="mnist"),
    Example("resnet_mnist", ("--epochs", "1", "--limit", "64", "--test-limit", "64", "--batch-size", "32"),
            rf"neuronet: test loss {FLOAT}  test accuracy {FLOAT}  \(1 epochs on 64 images, .*",
            data="mnist"),
    Example("text_classification", ("--epochs", "1",), rf"1 epochs in {FLOAT} s",
            data="tinyshakespeare/input.txt"),
    Example("gan_mnist", ("--epochs", "1", "--limit", "512", "--out", "{tmp}/samples.png"),
            r"wrote .*samples\.png \(1 epochs in \d+ s\)", data="mnist", writes=("samples.png",)),
    Example("export", ("--epochs", "1", "--out", "{tmp}/export"),
            rf"digits_cnn\.q8_0\.gguf +[\d,]+ +\S+ +{FLOAT}",
            writes=("export/digits_cnn.onnx", "export/digits_cnn.f32.gguf", "export/digits_cnn.f16.gguf",
                    "export/digits_cnn.q8_0.gguf")),
    Example("sequential_mnist", ("--train-size", "256", "--epochs", "1"),
            rf"256 training images, 1 epochs, {FLOAT} s .*", data="mnist"),
    Example("digits_cnn", expect=TRAINED, writes=(*RUN_FILES, "run/model.onnx"),
            config={"dataset": {"limit": 256}}, evaluate="digits"),
    Example("digits_resnet", expect=TRAINED, writes=(*RUN_FILES, "run/model.onnx"),
            config={"dataset": {"limit": 256}}, evaluate="digits"),
    Example("finetune", ("--pretrain-limit", "256", "--finetune-size", "128", "--epochs", "1", "--test-limit",
                         "256"), rf"scratch +51,813 +{FLOAT} +{FLOAT} +{FLOAT} +{FLOAT}", data="mnist"),
    Example("mnist_mlp", ("--epochs", "1", "--limit", "512"),
            rf"test loss {FLOAT}  test accuracy {FLOAT}  \(1 epochs; .*", data="mnist"),
    Example("moe", ("--epochs", "1"), rf"dense, same per-token compute .* val accuracy {FLOAT} .*"),
    Example("iris", ("--epochs", "2"), rf"MLP 4-16-16-3 \(ReLU\) +train acc {FLOAT}  test acc {FLOAT} .*",
            data="iris/iris.csv"),
    Example("time_series", ("--epochs", "2"), rf"GRU +{FLOAT} +{FLOAT} +{FLOAT}",
            data="goog-stock/GOOG-year.csv"),
    Example("rbf_sine", ("--epochs", "2"), rf"test MSE vs clean sin: {FLOAT} .*"),
    Example("xor", ("--steps", "20",), rf"final mse {FLOAT}, [0-4]/4 correct, 20 steps in {FLOAT} s"),
]


def _env(data: Path | None) -> dict:
    env = dict(os.environ, MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")  # llama_block imports char_gpt/main.py: no __pycache__ there
    if data is not None:
        env["NEURONET_DATA"] = str(data)
    return env


def _run(cmd: list[str], env: dict) -> str:
    """Run ``cmd`` from the repository root; return stdout + stderr, failing with both on a non-zero exit."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{output[-4000:]}"
    return output


def _fill(value, tmp: Path, data: Path | None):
    """``value`` with ``{tmp}`` / ``{data}`` substituted in every string, recursively."""
    if isinstance(value, dict):
        return {k: _fill(v, tmp, data) for k, v in value.items()}
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp)).replace("{data}", str(data))
    return value


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _commands(ex: Example, tmp: Path, data: Path | None) -> list[list[str]]:
    if ex.config is None:
        return [[sys.executable, str(ex.path / "main.py"), *(_fill(a, tmp, data) for a in ex.args)]]
    config = _merge(yaml.safe_load((ex.path / "config.yaml").read_text()), _fill(ex.config, tmp, data))
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "neuronet.cli.main"]
    commands = [[*cli, "train", str(tmp / "config.yaml"), "--epochs", "1", "--output-dir", str(tmp / "run"),
                 "--quiet"]]
    if ex.evaluate:
        commands.append([*cli, "evaluate", str(tmp / "run" / "model.nnet"), _fill(ex.evaluate, tmp, data)])
    return commands


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_every_example_has_a_smoke_test():
    folders = {p.name for p in EXAMPLES_DIR.iterdir() if any(p.glob("main.py")) or any(p.glob("config.yaml"))}
    covered = {ex.path.name for ex in EXAMPLES}
    assert folders == covered, f"examples without a smoke test: {sorted(folders - covered)}"
    for name in folders:
        with_config = name in {ex.path.name for ex in EXAMPLES if ex.config is not None}
        assert with_config == (EXAMPLES_DIR / name / "config.yaml").exists(), name


@pytest.mark.parametrize("ex", EXAMPLES, ids=[ex.id for ex in EXAMPLES])
def test_example_runs(ex: Example, tmp_path: Path, request):
    data = None
    if ex.data is not None:
        data = request.getfixturevalue("data_root")
        if not (data / ex.data).exists():
            pytest.skip(f"{ex.id} needs {ex.data} under the data root {data}")
    before = _listing(ex.path)
    outputs = [_run(cmd, _env(data)) for cmd in _commands(ex, tmp_path, data)]
    line = re.search(rf"^{ex.expect}$", outputs[0], re.M)
    assert line, f"{ex.id}: no line matching {ex.expect!r} in:\n{outputs[0][-4000:]}"
    assert not re.search(r"\bnan\b", line.group(0), re.I), line.group(0)
    if ex.evaluate:
        assert re.search(rf"^.*: \d+ samples; loss {FLOAT}, accuracy {FLOAT}$", outputs[1], re.M), outputs[1]
    for name in ex.writes:
        assert (tmp_path / name).stat().st_size > 0, f"{ex.id} did not write {name}"
    assert _listing(ex.path) == before, f"{ex.id} wrote into {ex.path}: {_listing(ex.path) - before}"
