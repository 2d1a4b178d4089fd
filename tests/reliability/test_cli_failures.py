"""``neuronet train`` after a late error: one clear line, a non-zero exit, the model trained so far kept
beside (never over) the last good checkpoint; a corrupt file on --resume is one line too."""

import json
import signal
import struct

import pytest
import yaml

import neuronet as nn
from neuronet.cli.main import main

TINY = {
    "model": {"layers": [{"type": "Flatten"},
                         {"type": "Dense", "in_features": 64, "out_features": 16, "activation": "relu"},
                         {"type": "Dense", "in_features": 16, "out_features": 10}]},
    "training": {"epochs": 1, "batch_size": 64, "optimizer": {"type": "Adam", "lr": 0.01}, "seed": 3},
    "dataset": {"source": "digits", "splits": {"test": 0.2}},
    "hardware": {"device": "cpu"},
}


def _config(tmp_path, **training):
    cfg = json.loads(json.dumps(TINY))
    cfg["training"].update(training)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_late_error_is_one_line_and_keeps_the_model_without_clobbering(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", _config(tmp_path), "-o", str(out), "-q"]) == 0  # the last good checkpoint
    capsys.readouterr()
    good = (out / "model.nnet").read_bytes()
    config = _config(tmp_path, epochs=3, callbacks=[{"type": "EarlyStopping", "monitor": "val_loss"}])
    handler = signal.getsignal(signal.SIGINT)
    code = main(["train", config, "-o", str(out), "-q", "--resume"])
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C's handler put back after the failed fit
    line = _one_error_line(capsys)
    assert code != 0
    assert line.startswith("neuronet train: error: training failed after epoch 2: KeyError:")
    assert "'val_loss' is not in the logs" in line and "model.partial.nnet" in line
    assert (out / "model.nnet").read_bytes() == good
    partial = nn.load(out / "model.partial.nnet")
    assert partial.epoch == 2
    assert partial.optimizer.iterations > nn.load(out / "model.nnet").optimizer.iterations


def test_corrupt_history_on_resume_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", _config(tmp_path), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    path = out / "model.nnet"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["neuronet"])
    meta["training"]["history"] = {"loss": [1.0, "x"]}
    header["__metadata__"]["neuronet"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    before = path.read_bytes()
    assert main(["train", _config(tmp_path, epochs=2), "-o", str(out), "-q", "--resume"]) != 0
    line = _one_error_line(capsys)
    assert "training.history' entry 'loss' must be a list of numbers" in line
    assert path.read_bytes() == before


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_nonfinite_loss_in_the_cli_is_one_line(tmp_path, capsys):
    config = _config(tmp_path, optimizer={"type": "SGD", "lr": 1e30})
    code = main(["train", config, "-o", str(tmp_path / "out"), "-q"])
    line = _one_error_line(capsys)
    assert code != 0 and "in epoch 1 after batch" in line and "NonFiniteError" in line
    assert (tmp_path / "out" / "model.partial.nnet").exists()
    assert not (tmp_path / "out" / "model.nnet").exists()
