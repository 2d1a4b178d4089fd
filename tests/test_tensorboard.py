"""The TensorBoard callback: event files read back with TensorBoard's own EventAccumulator."""

import sys

import numpy as np
import pytest

import neuronet as nn

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
pytest.importorskip("tensorboardX")


def _read(path):
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _fit(tmp_path, epochs=3, **kwargs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Dense(4, 8, activation="relu"), nn.Dense(8, 2))
    model.compile(optimizer=nn.SGD(0.1), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    schedule = nn.StepLR(model.optimizer, step_size=1, gamma=0.5)
    board = nn.TensorBoard(tmp_path / "logs", **kwargs)
    history = model.fit(x, y, epochs=epochs, batch_size=16, validation_split=0.25, verbose=0,
                        callbacks=[schedule, board])
    return model, history


def test_epoch_scalars_match_history_and_validation_goes_to_its_own_run(tmp_path):
    _, history = _fit(tmp_path)
    train, val = _read(tmp_path / "logs" / "train"), _read(tmp_path / "logs" / "validation")
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(train.Tags()["scalars"])
    assert set(val.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy"}
    for acc, prefix in ((train, ""), (val, "val_")):
        for key in ("loss", "accuracy"):
            got = _scalars(acc, f"epoch_{key}")
            assert [s for s, _ in got] == [0, 1, 2]
            np.testing.assert_allclose([v for _, v in got], history.history[prefix + key], rtol=1e-6)
    assert not train.Tags()["histograms"]
    assert "batch_loss" not in train.Tags()["scalars"]


def test_learning_rate_follows_the_scheduler(tmp_path):
    _fit(tmp_path)
    rates = [v for _, v in _scalars(_read(tmp_path / "logs" / "train"), "epoch_learning_rate")]
    np.testing.assert_allclose(rates, [rates[0], rates[0] / 2, rates[0] / 4], rtol=1e-6)


def test_batch_scalars_and_weight_histograms(tmp_path):
    model, _ = _fit(tmp_path, update_freq="batch", histogram_freq=2, epochs=4)
    train = _read(tmp_path / "logs" / "train")
    batch_loss = _scalars(train, "batch_loss")
    assert [s for s, _ in batch_loss] == list(range(1, 4 * 2 + 1))  # 30 training samples: 2 batches/epoch
    assert model.optimizer.iterations == 8
    assert set(train.Tags()["histograms"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    events = train.Histograms("1.weight")
    assert [e.step for e in events] == [1, 3]
    last = events[-1].histogram_value
    weight = model.state_dict()["1.weight"]
    assert last.num == weight.size
    assert last.min == pytest.approx(weight.min()) and last.max == pytest.approx(weight.max())
    assert last.sum == pytest.approx(weight.sum(), rel=1e-5, abs=1e-5)


def test_bad_arguments_and_missing_writer_name_the_extra(tmp_path, monkeypatch):
    with pytest.raises(nn.errors.ConfigError, match="update_freq"):
        nn.TensorBoard(tmp_path, update_freq="step")
    with pytest.raises(nn.errors.ConfigError, match="histogram_freq"):
        nn.TensorBoard(tmp_path, histogram_freq=-1)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'neuronet\[tensorboard\]'"):
        nn.TensorBoard(tmp_path)


def test_resumed_training_continues_the_batch_curve(tmp_path):
    model, _ = _fit(tmp_path, update_freq="batch", epochs=1)
    x = np.random.default_rng(1).standard_normal((32, 4)).astype(np.float32)
    model.fit(x, (x[:, 1] > 0).astype(np.int64), epochs=2, initial_epoch=1, batch_size=16, verbose=0,
              callbacks=[nn.TensorBoard(tmp_path / "logs", update_freq="batch")])
    train = _read(tmp_path / "logs" / "train")
    assert [s for s, _ in _scalars(train, "batch_loss")] == [1, 2, 3, 4]
    assert [s for s, _ in _scalars(train, "epoch_loss")] == [0, 1]


def test_torch_summary_writer_is_the_fallback(tmp_path, monkeypatch):
    pytest.importorskip("torch.utils.tensorboard")
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    _, history = _fit(tmp_path, epochs=2)
    got = _scalars(_read(tmp_path / "logs" / "validation"), "epoch_loss")
    np.testing.assert_allclose([v for _, v in got], history.history["val_loss"], rtol=1e-6)
