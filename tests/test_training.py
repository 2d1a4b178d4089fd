import csv
import math

import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.core.layer import Layer

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
XOR_Y = np.array([[0], [1], [1], [0]], np.float32)


def _classifier(seed=0, dropout=0.0):
    nn.manual_seed(seed)
    layers = [nn.Dense(4, 16, activation="relu"), nn.Dense(16, 3)]
    if dropout:
        layers.insert(1, nn.Dropout(dropout))
    model = nn.Sequential(*layers)
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    return model


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 4)).astype(np.float32) * 0.5 + np.eye(3, 4, dtype=np.float32)[y] * 3
    return x, y


# ----------------------------------------------------------------- convergence and parity
def test_xor_converges_with_tanh():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Dense(2, 8, activation="tanh"), nn.Dense(8, 1))
    model.compile(optimizer=nn.Adam(0.05), loss=nn.MSELoss())
    for _ in range(400):
        loss = model.train_step(XOR_X, XOR_Y)
    assert loss < 0.05
    np.testing.assert_array_equal(model.predict(XOR_X) > 0.5, XOR_Y > 0.5)


def test_numpy_and_torch_backends_train_identically():
    x, y = _blobs(32)
    a, b = _classifier(), _classifier()
    a.build((4,))
    b.build((4,))
    b.load_state_dict(a.state_dict())
    b.to("torch")
    for i in range(5):
        la = a.train_step(x[i * 6:(i + 1) * 6], y[i * 6:(i + 1) * 6])
        lb = b.train_step(x[i * 6:(i + 1) * 6], y[i * 6:(i + 1) * 6])
        assert la == pytest.approx(lb, rel=1e-5)
    for key, value in a.state_dict().items():
        np.testing.assert_allclose(b.state_dict()[key], value, atol=1e-5, err_msg=key)


def test_train_step_matches_torch_sgd_step():
    ref = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    model = nn.Sequential(nn.Dense(4, 6, activation="tanh"), nn.Dense(6, 3), dtype="float64")
    model.build((4,))
    model.load_state_dict({k.replace("2.", "1.", 1): v for k, v in ref.state_dict().items()})
    model.compile(nn.SGD(0.1, momentum=0.9), nn.CrossEntropyLoss())
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x, y = _blobs(16)
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x).double()), torch.from_numpy(y))
        loss.backward()
        opt.step()
        ours = model.train_step(x, y)
        assert ours == pytest.approx(loss.item(), rel=1e-10)
    for key, value in ref.state_dict().items():
        ours = model.state_dict()[key.replace("2.", "1.", 1)]
        np.testing.assert_allclose(ours, value.numpy(), rtol=1e-10, err_msg=key)


# ----------------------------------------------------------------- fit, evaluate, callbacks
def test_fit_learns_and_history_has_train_and_val_keys():
    x, y = _blobs(150)
    model = _classifier()
    hist = model.fit(x[:120], y[:120], epochs=4, batch_size=16, validation_data=(x[120:], y[120:]), verbose=0)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in hist.history.values()) and hist.epoch == [0, 1, 2, 3]
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert hist.history["val_accuracy"][-1] > 0.9
    assert model.history is hist
    result = model.evaluate(x[120:], y[120:], batch_size=7)
    assert result["loss"] == pytest.approx(hist.history["val_loss"][-1], rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(model.predict(x[120:]).argmax(1) == y[120:]))


def test_validation_split_holds_out_the_last_samples():
    x, y = _blobs(100)
    model = _classifier()
    seen = []

    class Spy(nn.Callback):
        def on_batch_begin(self, batch, logs=None):
            seen.append(batch)

    hist = model.fit(x, y, epochs=1, batch_size=10, validation_split=0.2, callbacks=[Spy()], verbose=0)
    assert len(seen) == 8  # 80 training samples
    assert hist.history["val_loss"][0] == pytest.approx(model.evaluate(x[80:], y[80:])["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="validation_split must be in"):
        model.fit(x, y, validation_split=1.5, verbose=0)


def test_fit_accepts_lists_and_shuffle_off_is_deterministic():
    x, y = _blobs(24)
    a, b = _classifier(), _classifier()
    a.build((4,))
    b.build((4,))
    b.load_state_dict(a.state_dict())
    a.fit(x.tolist(), y.tolist(), epochs=2, batch_size=5, shuffle=False, verbose=0)
    b.fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0)
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-6)


def test_early_stopping_stops_and_restores_best_weights():
    x, y = _blobs(60)
    model = _classifier()
    losses = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    snapshots = {}

    class FakeVal(nn.Callback):  # runs before EarlyStopping: overwrite val_loss with a scripted curve
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = next(losses)
            snapshots[epoch] = model.flat_params.copy()

    stop = nn.EarlyStopping(patience=2, monitor="val_loss", restore_best_weights=True)
    hist = model.fit(x, y, epochs=8, batch_size=20, callbacks=[FakeVal(), stop], verbose=0)
    assert hist.epoch == [0, 1, 2, 3] and stop.stopped_epoch == 3  # 2 epochs without improvement (Keras)
    np.testing.assert_array_equal(model.flat_params, snapshots[1])


def test_early_stopping_on_a_missing_key_says_what_to_do():
    x, y = _blobs(20)
    with pytest.raises(KeyError, match="'val_loss' is not in the logs.*validation_data"):
        _classifier().fit(x, y, epochs=1, callbacks=[nn.EarlyStopping()], verbose=0)


def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    x, y = _blobs(40)
    path = tmp_path / "log.csv"
    hist = _classifier().fit(x, y, epochs=3, batch_size=8, validation_data=(x, y),
                             callbacks=[nn.CSVLogger(str(path))], verbose=0)
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert float(rows[3][1]) == pytest.approx(hist.history["loss"][2])
    _classifier().fit(x, y, epochs=1, callbacks=[nn.CSVLogger(str(path), append=True)], verbose=0)
    rows = list(csv.reader(path.open()))
    assert len(rows) == 5 and rows[0][0] == "epoch"
    assert not list(tmp_path.glob("*.tmp*"))


def test_model_checkpoint_saves_the_best(tmp_path):
    if not hasattr(nn, "load"):
        pytest.skip("model.save/nn.load not available")
    x, y = _blobs(60)
    model = _classifier()
    path = tmp_path / "best.nnet"
    model.fit(x, y, epochs=3, batch_size=20, validation_data=(x, y), verbose=0,
              callbacks=[nn.ModelCheckpoint(str(path), monitor="val_loss", save_best_only=True)])
    assert path.exists()
    again = nn.load(str(path))
    assert again.evaluate(x, y)["loss"] == pytest.approx(model.evaluate(x, y)["loss"], rel=1e-5)


def test_progress_bar_and_epoch_lines(capsys):
    x, y = _blobs(30)
    _classifier().fit(x, y, epochs=2, batch_size=10, verbose=1)
    err = capsys.readouterr().err
    assert "Epoch 2/2" in err and "loss=" in err and "accuracy=" in err and "3/3" in err
    _classifier().fit(x, y, epochs=2, batch_size=10, verbose=2, validation_data=(x, y))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("Epoch 2/2") and "val_accuracy" in out[1]


# ----------------------------------------------------------------- bad input
def test_wrong_feature_size_names_the_layer_and_both_shapes():
    model = _classifier()
    model.build((4,))
    with pytest.raises(nn.ShapeError, match=r"Dense\(4, 16, activation='relu'\).*\(N, \.\.\., 4\).*\(8, 5\)"):
        model.train_step(np.zeros((8, 5), np.float32), np.zeros(8, int))
    with pytest.raises(nn.ShapeError, match=r"Dense\(16, 3\).*16.*\(N, 9\)"):
        nn.Sequential(nn.Dense(16, 3)).predict(np.zeros((2, 9)))


def test_label_out_of_range_and_length_mismatch():
    model = _classifier()
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="class label 3 out of range"):
        model.train_step(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="x has 4 samples but y has 3"):
        model.train_step(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="x has 4 samples but y has 5"):
        model.fit(x, np.zeros(5, int), verbose=0)
    with pytest.raises(ValueError, match="x has 4 samples but y has 2"):
        model.evaluate(x, np.zeros(2, int))


def test_negative_learning_rate_and_uncompiled_training():
    with pytest.raises(ValueError, match="Adam: lr must be"):
        nn.Adam(-1e-3)
    with pytest.raises(ValueError, match="SGD: lr must be"):
        nn.SGD(-0.1)
    model = nn.Sequential(nn.Dense(2, 1))
    with pytest.raises(RuntimeError, match="compile"):
        model.train_step(np.zeros((1, 2)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        model.compile(optimizer="adamx")


@pytest.mark.parametrize("where", ["x", "y"])
def test_nan_in_the_data_raises_and_leaves_the_weights(where):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Dense(3, 4, activation="relu"), nn.Dense(4, 2))
    model.compile(nn.Adam(1e-2), nn.MSELoss())
    x, y = np.ones((5, 3), np.float32), np.zeros((5, 2), np.float32)
    model.train_step(x, y)
    before = model.flat_params.copy()
    (x if where == "x" else y)[2, 1] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        model.train_step(x, y)
    np.testing.assert_array_equal(model.flat_params, before)


def test_empty_inputs_are_refused():
    model = _classifier()
    with pytest.raises(ValueError, match="empty"):
        model.predict(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="empty"):
        model.fit(np.zeros((0, 4), np.float32), np.zeros(0, int), verbose=0)


# ----------------------------------------------------------------- auxiliary losses (MoE protocol)
class _AuxScale(Layer):
    """y = w * x with aux_loss = w^2: d(aux)/dw = 2w, added (times the aux loss scale) in backward."""

    def __init__(self, weight):
        super().__init__()
        self.aux_loss_weight = weight
        self.scale = 0.0
        self.aux_loss = 0.0

    def set_aux_loss_scale(self, scale):
        self.scale = scale

    def setup(self, input_shape):
        self.add_param("w", (1,), lambda rng, shape, dtype: np.full(shape, 2.0, dtype))
        return input_shape

    def forward(self, x, training=True):
        self._x = x
        self.aux_loss = float(self.params["w"][0] ** 2)
        return x * self.params["w"][0]

    def backward(self, dy):
        self.grads["w"] += (dy * self._x).sum() + self.scale * 2 * self.params["w"]
        return dy * self.params["w"][0]


def test_aux_losses_are_added_to_loss_and_gradient_in_train_step_only():
    model = nn.Sequential(_AuxScale(0.5), dtype="float64")
    model.compile(nn.SGD(1.0), nn.MSELoss())
    x, y = np.ones((2, 1)), np.zeros((2, 1))
    loss = model.train_step(x, y)
    assert loss == pytest.approx(4.0 + 0.5 * 4.0)  # mse (2x)^2 = 4, aux 0.5 * w^2
    # dL/dw = 2 * w * mean(x^2) + 0.5 * 2w = 4 + 2 = 6 -> w = 2 - 6
    assert model.params["0.w"][0] == pytest.approx(-4.0)
    assert model[0].scale == 0.0  # only during train_step's backward
    model.zero_grad()
    model.backward(model.forward(x) * 0)
    assert model.grads["0.w"][0] == 0.0  # a bare backward does not add the aux gradient
    assert math.isfinite(model.evaluate(x, y)["loss"])
