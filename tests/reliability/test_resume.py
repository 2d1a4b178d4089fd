"""Exact resume: scheduler positions, stops inside an epoch, the CLI; guard rails against NaN/inf."""

import numpy as np
import pytest

import neuronet as nn
from neuronet.errors import NonFiniteError


def _data(n=90, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)


def _model(lr=1e-2):
    model = nn.Sequential(nn.Dense(6, 16, activation="relu"), nn.Dropout(0.2), nn.BatchNorm1D(16),
                          nn.Dense(16, 3))
    model.compile(optimizer=nn.Adam(lr), loss="cross_entropy", metrics=["accuracy"])
    return model


SCHEDULERS = {
    "step": lambda: nn.StepLR(step_size=1, gamma=0.5),
    "cosine": lambda: nn.CosineAnnealingLR(T_max=3, eta_min=1e-4),
    "warmup+cosine": lambda: nn.LinearWarmup(warmup_steps=7, after=nn.CosineAnnealingLR(T_max=20)),
    "plateau": lambda: nn.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, threshold=10.0),
}


class StopAt(nn.Callback):
    """Stop fit after the given (epoch, batch)."""

    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.model.stop_training = True


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("stop", [(0, None), (1, 3)], ids=["between-epochs", "inside-epoch"])
def test_resume_with_a_scheduler_equals_an_uninterrupted_run(tmp_path, name, stop):
    x, y = _data()
    nn.manual_seed(3)
    straight = _model()
    straight.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[SCHEDULERS[name]()])

    nn.manual_seed(3)
    first = _model()
    epoch, batch = stop
    stopper = [StopAt(epoch, batch)] if batch is not None else []
    first.fit(x, y, epochs=3 if batch is not None else epoch + 1, batch_size=16, verbose=0,
              callbacks=[SCHEDULERS[name](), *stopper])
    first.save(tmp_path / "ckpt.nnet")
    nn.manual_seed(999)  # another process: the file must carry everything
    resumed = nn.load(tmp_path / "ckpt.nnet")
    assert resumed.epoch == epoch + (batch is None)
    assert (resumed.position is not None) == (batch is not None)
    history = resumed.fit(x, y, epochs=3, batch_size=16, verbose=0, initial_epoch=resumed.epoch,
                          callbacks=[SCHEDULERS[name]()])
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)
    np.testing.assert_array_equal(resumed[2].buffers["running_var"], straight[2].buffers["running_var"])
    assert resumed.optimizer.lr == straight.optimizer.lr
    assert resumed.optimizer.iterations == straight.optimizer.iterations
    assert history.history["loss"][-1] == straight.history.history["loss"][-1]
    assert resumed.full_history() == straight.full_history()


def test_mid_epoch_checkpoint_resumes_bit_exactly(tmp_path):
    x, y = _data(100)
    nn.manual_seed(5)
    straight = _model()
    straight.fit(x, y, epochs=2, batch_size=8, verbose=0)

    nn.manual_seed(5)
    run = _model()
    ckpt = nn.ModelCheckpoint(str(tmp_path / "step.nnet"), save_freq=5)
    run.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[ckpt, StopAt(1, 6)])
    resumed = nn.load(tmp_path / "step.nnet")  # every 5th batch: the 20th is the 7th of epoch 1 (13 + 7)
    assert resumed.epoch == 1 and resumed.position["step"] == 7
    resumed.fit(x, y, epochs=2, batch_size=8, verbose=0, initial_epoch=resumed.epoch)
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)
    assert resumed.full_history() == straight.full_history()


def _stopped_and_loaded(tmp_path, epochs: int, stop_epoch: int):
    """(x, y, model): 100 samples, batch 8, stopped after batch 2 of ``stop_epoch``, saved and loaded."""
    x, y = _data(100)
    model = _model()
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[StopAt(stop_epoch, 2)])
    model.save(tmp_path / "m.nnet")
    return x, y, nn.load(tmp_path / "m.nnet")


def test_changed_data_restarts_the_interrupted_epoch_with_a_warning(tmp_path):
    x, y, loaded = _stopped_and_loaded(tmp_path, epochs=1, stop_epoch=0)
    with pytest.warns(RuntimeWarning, match="batch_size 8.*starts over"):
        loaded.fit(x, y, epochs=1, batch_size=10, verbose=0)
    assert loaded.epoch == 1 and loaded.optimizer.iterations == 3 + 10


def test_fit_from_another_epoch_does_not_resume_inside_one(tmp_path):
    x, y, loaded = _stopped_and_loaded(tmp_path, epochs=2, stop_epoch=1)
    with pytest.warns(RuntimeWarning, match="saved inside epoch 1, but fit starts at epoch 0"):
        loaded.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert loaded.optimizer.iterations == 13 + 3 + 2 * 13


def test_scheduler_state_round_trip():
    opt = nn.SGD(0.1)
    sched = nn.LinearWarmup(opt, warmup_steps=3, after=nn.StepLR(step_size=2, gamma=0.5))
    for _ in range(6):
        sched.step()
    state = sched.state_dict()
    opt2 = nn.SGD(0.1)
    opt2.lr = opt.lr
    opt2.pending_scheduler_state = state
    twin = nn.LinearWarmup(opt2, warmup_steps=3, after=nn.StepLR(step_size=2, gamma=0.5))
    for _ in range(5):
        sched.step()
        twin.step()
        assert twin.get_last_lr() == sched.get_last_lr()
    with pytest.raises(ValueError, match="not a state of StepLR"):
        nn.StepLR(nn.SGD(0.1)).load_state_dict(state)


# ------------------------------------------------------------------------------------------ guard rails
def test_on_nonfinite_modes():
    x, y = _data()
    x[20] = np.nan  # one poisoned sample: the batch holding it has a NaN loss
    model = _model()
    before = None
    with pytest.raises(NonFiniteError, match="the step was refused"):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    assert isinstance(NonFiniteError("x"), FloatingPointError)
    before = model.optimizer.iterations
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False, on_nonfinite="skip")
    assert model.skipped_steps == 1 and model.optimizer.iterations == before + 5
    assert np.isfinite(model.flat_params).all()
    with pytest.warns(RuntimeWarning, match="epoch 1, batch 1"):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False, on_nonfinite="warn")
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        model.fit(x, y, on_nonfinite="ignore")


def test_terminate_on_nan_stops_a_diverging_run():
    x, y = _data()
    model = nn.Sequential(nn.Dense(6, 32, activation="relu"), nn.Dense(32, 3))
    model.compile(optimizer=nn.Adam(1e6), loss="cross_entropy")
    guard = nn.TerminateOnNaN()
    with pytest.warns(RuntimeWarning, match="TerminateOnNaN"):
        model.fit(x, y, epochs=50, batch_size=16, verbose=0, callbacks=[guard], on_nonfinite="skip")
    assert guard.stopped_batch is not None and guard.stopped_batch[0] < 5
    assert model.stop_training and model.epoch < 5


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_terminate_on_nan_stops_on_a_nan_loss():
    x, y = _data()
    x[40:] = np.inf
    model = _model()
    guard = nn.TerminateOnNaN(divergence=None)
    with pytest.warns(RuntimeWarning, match="batch loss is nan"):
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=False, callbacks=[guard],
                  on_nonfinite="skip")
    assert guard.stopped_batch == (0, 2) and np.isfinite(model.flat_params).all()
    assert model.epoch == 0 and model.position is None and model.training_position()["step"] == 3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs_to_predict_and_evaluate_are_named(bad):
    x, y = _data(40)
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    x[33, 4] = bad
    with pytest.raises(NonFiniteError, match="predict: the input holds 1 NaN/inf values in 1 samples "
                                             r"\(first: sample 33\)"):
        model.predict(x, batch_size=32)
    with pytest.raises(NonFiniteError, match="evaluate"):
        model.evaluate(x, y)
    x[33, 4] = 0.0
    assert np.isfinite(model.predict(x)).all()


def test_input_check_tells_overflowing_sums_from_nan():
    from neuronet.model.resume import check_input

    check_input(np.full((4, 6), 1e308), "predict")  # finite values whose float64 sum is inf
    with pytest.raises(NonFiniteError):
        check_input(np.array([[1e308, np.nan]]), "predict")


def test_nonfinite_weights_are_reported_at_the_end_of_an_epoch():
    class Poison(nn.Callback):  # as an infinite gradient would, after the last batch's loss
        def on_batch_end(self, batch, logs=None):
            if batch == 5:
                self.model.flat_params[0] = np.inf

    x, y = _data()
    model = _model()
    with pytest.raises(NonFiniteError, match="after epoch 1 the weights hold NaN or inf"):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[Poison()])
    model.flat_params[0] = 0.0
    with pytest.warns(RuntimeWarning, match="after epoch 1 the weights hold NaN or inf"):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[Poison()], on_nonfinite="warn")
