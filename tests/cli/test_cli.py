"""The neuronet command: train/evaluate/predict end to end in subprocesses, config errors, Ctrl-C, helpers."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import neuronet as nn
from neuronet.callbacks import Callback
from neuronet.cli import train as train_module
from neuronet.cli.config import ConfigError, validate
from neuronet.cli.main import build_parser, main

TINY = {
    "model": {
        "layers": [
            {"type": "Flatten"},
            {"type": "Dense", "in_features": 64, "out_features": 16, "activation": "relu"},
            {"type": "Dense", "in_features": 16, "out_features": 10},
        ]
    },
    "training": {"epochs": 1, "batch_size": 16, "optimizer": {"type": "Adam", "lr": 0.01}, "seed": 3},
    "dataset": {"source": "digits", "splits": {"test": 0.2}},
    "hardware": {"device": "cpu"},
}


def _write(tmp_path, cfg=TINY, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


# One interpreter runs the three commands in sequence (each process start costs seconds of imports).
SCRIPT = """
import sys
from neuronet.cli.main import main
for argv in (["train", "tiny.yaml", "-o", "out", "--quiet"], ["evaluate", "out/model.nnet", "digits"],
             ["predict", "out/model.nnet", "x.npy", "--output", "p.npy"]):
    code = main(argv)
    if code:
        sys.exit(code)
"""


def test_train_evaluate_predict_end_to_end(tmp_path):
    _write(tmp_path)
    x, y = nn.data.load_digits()
    np.save(tmp_path / "x.npy", x[:4])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.nnet", "history.csv"}
    header, row = (tmp_path / "out" / "history.csv").read_text().splitlines()
    assert header == "epoch,loss,accuracy" and row.startswith("0,")
    accuracy = float(done.stdout.split("accuracy ")[1].split()[0])
    assert accuracy > 0.5  # one epoch of a tiny MLP: well above chance (0.1)
    model = nn.load(tmp_path / "out" / "model.nnet")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), model.predict(x[:4]), rtol=1e-6)


def test_predict_prints_classes_and_evaluate_reads_files(tmp_path, capsys):
    config = _write(tmp_path)
    train_module.run(str(config), str(tmp_path / "out"), verbose=0)
    x, y = nn.data.load_digits()
    np.save(tmp_path / "x.npy", x[:3])
    np.savez(tmp_path / "xy.npz", x=x[:50], y=y[:50])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "out" / "model.nnet"), str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("0: class ")
    assert main(["evaluate", str(tmp_path / "out" / "model.nnet"), str(tmp_path / "xy.npz")]) == 0
    assert "50 samples; loss" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "out" / "model.nnet"), str(config)]) == 0
    assert main(["export", str(tmp_path / "out" / "model.nnet"), "--format", "onnx"]) == 0
    assert (tmp_path / "out" / "model.onnx").exists()
    assert main(["predict", str(tmp_path / "out" / "model.nnet"), str(tmp_path / "xy.npz")]) == 2
    assert "expected a .npy or .csv file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["training"].update(optimiser="Adam"),
            r"training.optimiser: unknown key; allowed keys here: epochs",
        ),
        (
            lambda c: c["dataset"].update(source="digitz"),
            r"dataset.source: 'digitz' is not allowed; allowed: digits, mnist",
        ),
        (lambda c: c["training"].update(epochs=0), r"training.epochs: must be a positive integer"),
        (lambda c: c["training"].update(batch_size="32"), r"training.batch_size: expected int, got '32'"),
        (
            lambda c: c.update(hardware={"device": "tpu"}),
            r"hardware.device: 'tpu' is not allowed; allowed: auto, cpu",
        ),
        (lambda c: c["dataset"].update(splits={"test": 1.5}), r"dataset.splits.test: must be a fraction"),
        (lambda c: c.update(export={"formats": ["tflite"]}), r"export.formats\[0\]: 'tflite' is not allowed"),
        (lambda c: c["model"].pop("layers"), r"model.layers: required"),
    ],
)
def test_config_errors_name_the_key(edit, message):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_config_object_errors_name_the_key(tmp_path, capsys):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["model"]["layers"][1]["activaton"] = "relu"
    assert main(["train", str(_write(tmp_path, cfg)), "-o", str(tmp_path), "-q"]) == 2
    assert "model.layers[1].activaton: Dense has no argument 'activaton'" in capsys.readouterr().err
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["training"]["optimizer"] = {"type": "Adamm"}
    assert main(["train", str(_write(tmp_path, cfg)), "-o", str(tmp_path), "-q"]) == 2
    assert "training.optimizer.type: unknown 'Adamm'; allowed: Adagrad, Adam" in capsys.readouterr().err
    cfg["training"]["optimizer"] = {"type": "SGD", "lr": -1}
    assert main(["train", str(_write(tmp_path, cfg)), "-o", str(tmp_path), "-q"]) == 2
    assert "training.optimizer (SGD): SGD: l" in capsys.readouterr().err


RESIDUAL = {
    "inputs": {"image": [1, 8, 8]},
    "layers": [
        {"type": "Conv2D", "in_channels": 1, "out_channels": 8, "kernel_size": 3, "padding": 1,
         "activation": "relu", "name": "stem"},
        {"type": "Conv2D", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1,
         "name": "body"},
        {"type": "Add", "inputs": ["stem", "body"]},
        {"type": "ReLU"},
        {"type": "Flatten"},
        {"type": "Dense", "in_features": 512, "out_features": 10},
    ],
}


def _python_residual():
    inp = nn.Input((1, 8, 8), name="image")
    stem = nn.Conv2D(1, 8, 3, padding=1, activation="relu", name="stem")(inp)
    body = nn.Conv2D(8, 8, 3, padding=1, name="body")(stem)
    h = nn.Flatten()(nn.ReLU()(nn.Add()([stem, body])))
    return nn.Model(inp, nn.Dense(512, 10)(h))


def test_functional_config_builds_the_graph_python_would(tmp_path):
    """model.inputs makes a functional Model: same graph, same parameters for a seed as the Python one,
    and `neuronet train` trains it and saves a file that loads back to the same predictions."""
    from neuronet.cli.config import build_model
    from neuronet.io.nnet import describe

    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["model"] = RESIDUAL
    models = []
    for make in (lambda: build_model(validate(cfg)), _python_residual):
        nn.manual_seed(5)
        models.append(make())
        models[-1].build((1, 8, 8))
    built, reference = models
    assert describe(built) == describe(reference)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(built.predict(x), reference.predict(x))

    train_module.run(str(_write(tmp_path, cfg)), str(tmp_path / "out"), verbose=0)
    loaded = nn.load(tmp_path / "out" / "model.nnet")
    assert isinstance(loaded, nn.Model)
    assert [layer.layer_name for layer in loaded.layers][:2] == ["stem", "body"]
    digits, _ = nn.data.load_digits()
    assert np.isfinite(loaded.predict(digits[:4])).all()


def test_nested_containers_in_a_config():
    """Sequential, Residual and Remat entries list their children under layers: (a wrapper's several
    children as one Sequential), as the Python constructors nest them."""
    from neuronet.cli.config import build_model
    from neuronet.io.nnet import describe

    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    dense = {"type": "Dense", "in_features": 16, "out_features": 16, "activation": "relu"}
    cfg["model"]["layers"][2:2] = [
        {"type": "Residual", "layers": [dense, {"type": "Dense", "in_features": 16, "out_features": 16}]},
        {"type": "Remat", "name": "again", "layers": [{"type": "Sequential", "layers": [dense]}]},
    ]
    python = nn.Sequential(
        nn.Flatten(), nn.Dense(64, 16, activation="relu"),
        nn.Residual(nn.Sequential(nn.Dense(16, 16, activation="relu"), nn.Dense(16, 16))),
        nn.Remat(nn.Sequential(nn.Dense(16, 16, activation="relu")), name="again"),
        nn.Dense(16, 10),
    )
    assert describe(build_model(validate(cfg))) == describe(python)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["layers"][2].update(inputs=["stem", "bodyy"]),
         r"model.layers\[2\].inputs\[1\]: 'bodyy' is not a model input nor an earlier entry's name; "
         r"known: image, stem, body"),
        (lambda m: m.update(outputs=["nowhere"]), r"model.outputs\[0\]: 'nowhere' is not a model input"),
        (lambda m: m["layers"][1].update(name="stem"), r"model.layers\[1\].name: 'stem' already names"),
        (lambda m: m["layers"][1].update(name="not a name"),
         r"model.layers\[1\].name: must be an identifier"),
        (lambda m: m.update(inputs={"image": [1, -8, 8]}),
         r"model.inputs.image: expected a shape without the batch, a list of positive integers"),
        (lambda m: m.pop("inputs"), r"model.layers\[2\].inputs: only in a functional model"),
        (lambda m: m["layers"][4].update(layers=[]),
         r"model.layers\[4\].layers: only a Sequential, Residual"),
        (lambda m: m["layers"].insert(0, {"type": "Residual"}), r"model.layers\[0\].layers: required"),
        (lambda m: m["inputs"].update(unused=[3]),
         r"model: Model: no output depends on input 1 \(unused \(N, 3\)\)"),
        (lambda m: m["layers"][2].update(inputs=["stem"]),
         r"model.layers\[2\] \(Add\): Add\(\): takes a list of at least two inputs, got a list of 1: "
         r"\(N, 8, 8, 8\)"),
        (lambda m: m["layers"][5].update(in_features=500),
         r"model.layers\[5\] \(Dense\): Dense\(500, 10\): expected input of shape \(N, ..., 500\), "
         r"got \(N, 512\)"),
    ],
)
def test_functional_config_errors_name_the_entry(edit, message):
    from neuronet.cli.config import build_model

    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["model"] = yaml.safe_load(yaml.safe_dump(RESIDUAL))
    edit(cfg["model"])
    with pytest.raises(ConfigError, match=message):
        build_model(validate(cfg))


def test_the_docs_config_examples_build():
    from neuronet.cli.config import build_model

    page = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", page, flags=re.S | re.M)
    assert len(blocks) == 2
    for block in blocks:  # both read the 8x8 digits
        cfg = yaml.safe_load(block) | {"dataset": {"source": "digits"}}
        model = build_model(validate(cfg))
        model.build((1, 8, 8))
        assert model.predict(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


def test_missing_dataset_says_where_to_put_it(tmp_path, capsys):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["dataset"] = {"source": "mnist", "path": str(tmp_path / "empty"), "download": False}
    assert main(["train", str(_write(tmp_path, cfg)), "-o", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "MNIST: missing train-images-idx3-ubyte.gz" in err and str(tmp_path / "empty") in err


def test_ctrl_c_stops_after_the_batch_and_saves(tmp_path, monkeypatch):
    class PressCtrlC(Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_module, "build_callbacks", lambda cfg: [PressCtrlC()])
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["training"]["epochs"] = 50
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job of a shell
    summary = train_module.run(str(_write(tmp_path, cfg)), str(tmp_path / "out"), verbose=0)
    assert summary["interrupted"] and summary["epochs"] == 0  # stopped inside epoch 0, after batch 3
    saved = nn.load(tmp_path / "out" / "model.nnet")
    assert saved.optimizer.iterations == 3 and saved.position["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    monkeypatch.setattr(train_module, "build_callbacks", lambda cfg: [])
    cfg["training"]["epochs"] = 3
    summary = train_module.run(str(_write(tmp_path, cfg)), str(tmp_path / "out"), verbose=0, resume=True)
    assert not summary["interrupted"] and summary["epochs"] == 3
    assert len((tmp_path / "out" / "history.csv").read_text().splitlines()) == 1 + 3
    assert nn.load(tmp_path / "out" / "model.nnet").optimizer.iterations == 3 * 90  # resumed at batch 3


def test_augmentation_and_validation_split(tmp_path):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["preprocessing"] = {"augmentation": {"shift": 1, "rotate": 10}, "normalization": "standardize"}
    cfg["dataset"]["splits"]["validation"] = 0.1
    summary = train_module.run(str(_write(tmp_path, cfg)), str(tmp_path / "out"), plot=True, verbose=0)
    assert open(summary["plot"], "rb").read(4) == b"\x89PNG"
    model = nn.load(summary["model"])
    assert model.extra["preprocessing"]["normalization"] == "standardize"
    assert "val_loss" in model.saved_history and summary["test"]["accuracy"] > 0.3


def test_every_command_has_help(capsys):
    commands = ["demo", "train", "evaluate", "predict", "export", "bench", "info"]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: neuronet " + command in capsys.readouterr().out


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"neuronet {nn.__version__}" in out and "backends/devices: numpy" in out and "numba" in out


def test_info_prints_each_version_and_thread_pool_once(capsys):
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if line.endswith(" ?")]
    threads = [line for line in lines if line.startswith("threads:")]
    assert len(threads) == len(set(threads))


def test_bench_only_runs_the_named_benchmarks_and_lists_them_otherwise(capsys, monkeypatch):
    import neuronet.cli.main as cli

    ran = []
    monkeypatch.setattr(cli, "_run_echoing", lambda cmd, cwd, env: ran.append(cmd) or (0, []))
    assert main(["bench", "--only", "mlp", "bench_lstm.py", "--quick"]) == 0
    assert [Path(cmd[1]).name for cmd in ran] == ["bench_lstm.py", "bench_mlp.py"]
    assert ran[0][2:] == ["--steps", "10", "--warmup", "3", "--rounds", "2"]
    assert main(["bench", "--only", "mlp", "--threads", "1"]) == 0
    assert ran[-1][2:] == ["--threads", "1"]
    assert main(["bench", "--only", "no_such_benchmark"]) == 2
    err = capsys.readouterr().err
    assert "no benchmark named no_such_benchmark; available: " in err and "mlp" in err


def test_bench_markdown_ends_with_one_table_of_the_runs(capsys, monkeypatch, tmp_path):
    """--markdown: the benchmarks run with NEURONET_BENCH_JSON set, their output echoed but for the JSON
    summaries, which end the run as one Markdown table (†: rounds that differed, –: an engine not run)."""
    import neuronet.cli.main as cli

    def summary(title, auto):
        engines = {"neuronet-numpy": {"ratio": [1.5, 1.75, 2.0], "rss_vs_pytorch": 0.6},
                   "neuronet-torch": {"ratio": [1.0, 1.1, 1.4], "rss_vs_pytorch": 1.2}}
        if auto:
            engines["neuronet-numpy-auto"] = {"ratio": [1.7, 1.8, 1.9], "rss_vs_pytorch": 0.65}
        return {"engines": engines, "unsteady": ["neuronet-torch"], "title": title, "threads": None}

    script = tmp_path / "fake.py"
    script.write_text("import json, os\nprint('table lines')\n"
                      f"print(json.dumps({summary('train', True)!r}) "
                      "if os.environ.get('NEURONET_BENCH_JSON') else 'no json')\n")
    code, found = cli._run_echoing([sys.executable, str(script)], tmp_path,
                                   dict(os.environ, NEURONET_BENCH_JSON="1"))
    assert code == 0 and found == [summary("train", True)]
    assert capsys.readouterr().out == "table lines\n"  # echoed; the JSON line is not
    envs = []
    monkeypatch.setattr(cli, "_run_echoing", lambda cmd, cwd, env: envs.append(env) or
                        (0, [summary("train", True), summary("predict", False)]))
    assert main(["bench", "--only", "cnn", "--markdown"]) == 0
    assert envs[0]["NEURONET_BENCH_JSON"] == "1"
    table = capsys.readouterr().out.split("\n| workload")[1].splitlines()
    assert table[2] == ("| train | 1.75 (1.50–2.00) | 1.80 (1.70–1.90) | 1.10 (1.00–1.40)† "
                        "| 0.60 / 0.65 / 1.20 |")
    assert table[3] == "| predict | 1.75 (1.50–2.00) | – | 1.10 (1.00–1.40)† | 0.60 / – / 1.20 |"


def test_bench_warns_about_one_round_and_disagreeing_rounds():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from harness import spread_warnings
    finally:
        sys.path.pop(0)
    assert "one round only" in spread_warnings({"a": [1.0]}, rounds=1)[0]
    assert spread_warnings({"a": [1.0, 1.1, 1.15], "b": [2.0, 2.1]}, rounds=3) == []
    (warning,) = spread_warnings({"a": [1.0, 1.1], "b": [1.0, 1.3]}, rounds=2)
    assert warning.startswith("WARNING: b: rounds differ by 30%")


def test_dataset_sources_text_and_csv(data_root):
    from neuronet.cli.pipeline import Preprocessor, load_dataset

    base = {
        "path": None,
        "label_column": -1,
        "block_size": 16,
        "limit": 0,
        "splits": {"test": 0.1, "validation": 0.0},
    }
    text = load_dataset({**base, "source": "text", "path": str(data_root / "camoes" / "camoes.txt")}, seed=0)
    assert text.x_train.shape[1] == 16 and text.x_train.dtype == np.int64
    np.testing.assert_array_equal(text.x_train[:, 1:], text.y_train[:, :-1])
    assert Preprocessor().fit(text.x_train, "text")(text.x_train).dtype == np.int64  # token ids stay integers
    digits = load_dataset({**base, "source": "digits", "limit": 100}, seed=0)
    assert digits.x_train.shape == (100, 1, 8, 8) and len(digits.x_test) == 180
    table = load_dataset({**base, "source": "csv", "path": str(data_root / "iris" / "iris.csv")}, seed=0)
    assert table.x_train.shape == (135, 4) and set(table.y_train.tolist()) == {0, 1, 2}
    sample = str(data_root / "cifar10-sample" / "train_sample_200.bin")
    cifar = load_dataset({**base, "source": "cifar10", "path": sample}, seed=0)
    assert cifar.x_train.shape == (180, 3, 32, 32) and cifar.x_train.dtype == np.uint8


def test_resume_through_the_cli_matches_a_straight_run(tmp_path):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["preprocessing"] = {"augmentation": {"shift": 1}}  # augmentation draws from the restored generator
    config = str(_write(tmp_path, cfg))
    straight = train_module.run(config, str(tmp_path / "a"), epochs=2, verbose=0)
    train_module.run(config, str(tmp_path / "b"), epochs=1, verbose=0)
    resumed = train_module.run(config, str(tmp_path / "b"), epochs=2, verbose=0, resume=True)
    params = [nn.load(summary["model"]).flat_params for summary in (straight, resumed)]
    np.testing.assert_array_equal(params[0], params[1])
    assert (tmp_path / "a" / "history.csv").read_text() == (tmp_path / "b" / "history.csv").read_text()


def test_prediction_descriptions():
    from types import SimpleNamespace

    from neuronet.cli.main import _describe_prediction

    lm = SimpleNamespace(extra={"dataset": {"vocab": "ab\n"}})
    assert _describe_prediction(np.array([0.1, 2.0, -1.0]), lm) == "class 1"
    assert _describe_prediction(np.eye(3)[[1, 2, 0]], lm) == "next characters 'b\\na'"
    assert _describe_prediction(np.array([0.5]), SimpleNamespace(extra={})) == "[0.5]"
