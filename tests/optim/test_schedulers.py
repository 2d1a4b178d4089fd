"""Learning-rate schedulers against torch.optim.lr_scheduler's lr sequences, and as fit callbacks."""

import warnings

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as tls

import neuronet as nn


def _torch_opt(lr):
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def _sequences(ours, theirs, steps, metrics=None):
    """lr after construction and after each of ``steps`` steps, for both."""
    got, want = [ours.get_last_lr()[0]], [theirs.get_last_lr()[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that no optimizer.step() came first
        for i in range(steps):
            if metrics is None:
                ours.step()
                theirs.step()
            else:
                ours.step(metrics[i])
                theirs.step(metrics[i])
            got.append(ours.get_last_lr()[0])
            want.append(theirs.get_last_lr()[0])
            assert ours.optimizer.lr == got[-1]
    return got, want


@pytest.mark.parametrize("make, make_torch", [
    (lambda o: nn.StepLR(o, step_size=3, gamma=0.5), lambda o: tls.StepLR(o, step_size=3, gamma=0.5)),
    (lambda o: nn.StepLR(o, step_size=1), lambda o: tls.StepLR(o, step_size=1)),
    (lambda o: nn.CosineAnnealingLR(o, T_max=7, eta_min=0.01), lambda o: tls.CosineAnnealingLR(o, 7, 0.01)),
    (lambda o: nn.CosineAnnealingLR(o, T_max=4), lambda o: tls.CosineAnnealingLR(o, 4)),
    (lambda o: nn.LinearLR(o, start_factor=0.25, total_iters=4),
     lambda o: tls.LinearLR(o, 0.25, total_iters=4)),
    (lambda o: nn.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=6),
     lambda o: tls.LinearLR(o, 1.0, 0.1, total_iters=6)),
], ids=["step", "step1", "cosine", "cosine_periodic", "linear", "linear_decay"])
def test_scheduler_matches_torch(make, make_torch):
    got, want = _sequences(make(nn.SGD(0.3)), make_torch(_torch_opt(0.3)), 25)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("after", [None, "cosine", "step"])
def test_linear_warmup_matches_sequential_lr(after):
    opt, topt = nn.SGD(0.1), _torch_opt(0.1)
    if after is None:
        ours, theirs = nn.LinearWarmup(opt, warmup_steps=5), tls.LinearLR(topt, 0.2, 1.0, total_iters=5)
    else:
        if after == "cosine":
            ours_after = nn.CosineAnnealingLR(opt, 10, 1e-3)
            torch_after = tls.CosineAnnealingLR(topt, 10, 1e-3)
        else:  # built without its optimizer: the warm-up attaches it
            ours_after, torch_after = nn.StepLR(None, step_size=4, gamma=0.3), tls.StepLR(topt, 4, gamma=0.3)
        ours = nn.LinearWarmup(opt, warmup_steps=5, after=ours_after)
        warm = tls.LinearLR(topt, 0.2, 1.0, total_iters=5)
        theirs = tls.SequentialLR(topt, [warm, torch_after], milestones=[5])
    got, want = _sequences(ours, theirs, 30)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    assert got[0] == pytest.approx(0.1 / 5)


@pytest.mark.parametrize("kwargs", [
    dict(patience=2),
    dict(mode="max", factor=0.5, patience=1, threshold=0.1, threshold_mode="abs", cooldown=2, min_lr=0.02),
    dict(factor=0.3, patience=0, cooldown=1, threshold=0.05),
])
def test_reduce_on_plateau_matches_torch(kwargs):
    rng = np.random.default_rng(0)
    metrics = list(np.repeat(rng.random(10), 3) + np.linspace(0, 0.01, 30))  # plateaus of three epochs
    ours = nn.ReduceLROnPlateau(nn.SGD(1.0), **kwargs)
    theirs = tls.ReduceLROnPlateau(_torch_opt(1.0), **kwargs)
    got, want = _sequences(ours, theirs, 30, metrics)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    assert min(got) < 1.0  # the sequence did reduce


def _model_and_data(lr=0.1):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.integers(0, 2, 40)
    model = nn.Sequential(nn.Dense(3, 2))
    model.compile(optimizer=nn.SGD(lr), loss=nn.CrossEntropyLoss())
    return model, x, y


def test_schedulers_as_fit_callbacks():
    model, x, y = _model_and_data()
    model.fit(x, y, epochs=3, batch_size=10, verbose=0, callbacks=[nn.StepLR(step_size=1, gamma=0.5)])
    assert model.optimizer.lr == pytest.approx(0.1 * 0.5 ** 3)

    model, x, y = _model_and_data()
    warm = nn.LinearWarmup(warmup_steps=8, after=nn.CosineAnnealingLR(T_max=100))  # stepped per batch
    seen = []

    class Record(nn.Callback):
        def on_batch_begin(self, batch, logs=None):
            seen.append(model.optimizer.lr)

    model.fit(x, y, epochs=3, batch_size=10, verbose=0, callbacks=[warm, Record()])
    np.testing.assert_allclose(seen[:9], 0.1 * (1 / 8 + np.arange(9).clip(max=8) * (7 / 8) / 8), rtol=1e-12)
    assert warm.last_epoch == 12 and seen[9] < 0.1


def test_reduce_on_plateau_callback_keeps_the_keras_spelling():
    model, x, y = _model_and_data(lr=1e-9)  # the loss does not move: a plateau from the second epoch
    cb = nn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e-3, eps=0.0)
    assert nn.callbacks.ReduceLROnPlateau is nn.ReduceLROnPlateau is nn.optim.ReduceLROnPlateau
    assert cb.threshold_mode == "abs" and cb.mode == "min"
    model.fit(x, y, epochs=4, batch_size=40, verbose=0, callbacks=[cb])
    assert model.optimizer.lr == pytest.approx(1e-9 * 0.5 ** 3)
    assert nn.ReduceLROnPlateau(monitor="val_accuracy").mode == "max"
    with pytest.raises(KeyError, match="ReduceLROnPlateau: monitored value 'val_loss' is not in the logs"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[nn.ReduceLROnPlateau()])


def test_scheduler_errors():
    with pytest.raises(ValueError, match="StepLR: step_size must be an integer >= 1"):
        nn.StepLR(nn.SGD(0.1), step_size=0)
    with pytest.raises(ValueError, match="CosineAnnealingLR: T_max must be an integer >= 1"):
        nn.CosineAnnealingLR(nn.SGD(0.1), T_max=0)
    with pytest.raises(ValueError, match=r"LinearLR: start_factor must be in \(0, 1\]"):
        nn.LinearLR(nn.SGD(0.1), start_factor=0.0)
    with pytest.raises(ValueError, match="ReduceLROnPlateau: factor must be in"):
        nn.ReduceLROnPlateau(factor=1.5)
    with pytest.raises(TypeError, match="pass monitor='val_loss' by keyword"):
        nn.ReduceLROnPlateau("val_loss")
    with pytest.raises(TypeError, match="StepLR: expected a neuronet Optimizer, got SGD"):
        nn.StepLR(_torch_opt(0.1), step_size=2)
    with pytest.raises(RuntimeError, match="StepLR: no optimizer yet"):
        nn.StepLR(step_size=2).step()
    with pytest.raises(TypeError, match="LinearWarmup: after must be an epoch-indexed LRScheduler"):
        nn.LinearWarmup(warmup_steps=2, after=nn.ReduceLROnPlateau())
    with pytest.raises(ValueError, match="interval must be 'epoch' or 'step'"):
        nn.StepLR(step_size=2, interval="batch")
