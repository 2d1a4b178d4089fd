"""Each optimizer step for step against torch.optim (60 steps, float64), on both backends, plus
global-norm clipping, the allocation-free NumPy update and the argument checks."""

import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import step_allocations

N = 37  # parameters of the small problem
STEPS = 60

# name -> (class name in both neuronet and torch.optim, the same keyword arguments for both)
CASES = {
    "sgd": ("SGD", dict(lr=0.05)),
    "sgd_wd": ("SGD", dict(lr=0.05, weight_decay=0.1)),
    "sgd_momentum_dampening": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    "sgd_nesterov": ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05)),
    "adam": ("Adam", dict(lr=0.01)),
    "adam_wd_betas": ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": ("AdamW", dict(lr=0.01)),
    "adamw_wd": ("AdamW", dict(lr=0.01, weight_decay=0.3)),
    "rmsprop": ("RMSprop", dict(lr=0.01)),
    "rmsprop_centered_momentum_wd": ("RMSprop", dict(lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.05,
                                                     momentum=0.7, centered=True)),
    "rmsprop_centered": ("RMSprop", dict(lr=0.01, centered=True)),
    "rmsprop_momentum": ("RMSprop", dict(lr=0.01, momentum=0.9)),
    "adagrad": ("Adagrad", dict(lr=0.1)),
    "adagrad_decay_wd": ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, eps=1e-6)),
    "nadam": ("NAdam", dict(lr=0.01)),
    "nadam_wd_betas": ("NAdam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                     momentum_decay=0.01)),
}


def _ours(name):
    cls, kwargs = CASES[name]
    return getattr(nn, cls)(**kwargs)


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    a, b = torch.tensor(0.3 * rng.standard_normal((12, N))), torch.tensor(rng.standard_normal(12))

    def loss(p):  # a smooth non-quadratic objective whose gradient keeps changing
        r = a @ p - b
        return torch.log1p(r * r).sum() + 0.1 * torch.sin(3 * p).sum()
    return rng.standard_normal(N), loss


def _grad(loss, p):
    t = torch.tensor(p, requires_grad=True)
    loss(t).backward()
    return t.grad.numpy()


def _run(name, backend, clip_norm=None, steps=STEPS):
    cls, kwargs = CASES[name]
    p0, loss = _problem()
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = getattr(torch.optim, cls)([tp], **kwargs)
    ops = nn.backends.get_ops(backend)
    opt = _ours(name)
    if clip_norm is not None:
        opt.clip_norm = clip_norm
    params = ops.asarray(p0.copy())
    for step in range(steps):
        topt.zero_grad()
        loss(tp).backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([tp], clip_norm)
        topt.step()
        grads = ops.asarray(_grad(loss, np.array(ops.to_numpy(params))))
        opt.step(params, grads)
        np.testing.assert_allclose(ops.to_numpy(params), tp.detach().numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=f"{name} step {step + 1}")
    return opt


pytestmark = pytest.mark.usefixtures("float64_default_dtype")  # see conftest.py


@pytest.mark.parametrize("name", list(CASES))
def test_optimizer_matches_torch_step_for_step(name, backend):
    opt = _run(name, backend)
    assert opt.iterations == STEPS


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam", "adamw_wd", "rmsprop_centered_momentum_wd"])
def test_clipping_matches_clip_grad_norm(name, backend):
    _run(name, backend, clip_norm=0.5)


def test_clip_scales_the_gradient_in_place_like_torch():
    g = np.array([3.0, 4.0])
    opt = nn.SGD(0.1, clip_norm=1.0)
    opt.step(np.zeros(2), g)
    t = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    t.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    torch.nn.utils.clip_grad_norm_([t], 1.0)
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-15)


def test_float32_numba_update_matches_generic_numpy_passes():
    """The fused NumPy-backend kernels agree with the generic in-place passes (the torch-backend code), over a
    table of spans with two groups and frozen gaps (which both leave untouched)."""
    from neuronet.backend import Ops, Spans

    ops = nn.backends.get_ops("numpy")
    rng = np.random.default_rng(5)
    n = 1000
    spans = Spans.of([(0, 300, 0), (300, 450, 1), (600, 990, 0)])  # 450:600 and 990: frozen
    groups = dict(lr=(1e-2, 3e-3), weight_decay=(0.01, 0.0))
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    first, second = (0.1 * rng.standard_normal(n)).astype(np.float32), rng.random(n).astype(np.float32) + 0.1
    adam = dict(beta1=0.9, beta2=0.999, eps=1e-8, step=3, decoupled=True)
    nadam = dict(beta1=0.9, beta2=0.999, eps=1e-8, step=3, mu=0.45, mu_next=0.46, mu_product=0.09)
    rmsprop = dict(alpha=0.99, eps=1e-8, momentum=0.9, centered=True)
    sgd = dict(momentum=0.9, dampening=0.1, nesterov=False, first=False)
    cases = [("adam_step", [first, second], adam), ("rmsprop_step", [second, first, first * 2], rmsprop),
             ("sgd_step", [first], sgd), ("adagrad_step", [second], dict(eps=1e-10)),
             ("nadam_step", [first, second], nadam)]
    for method, state, kwargs in cases:
        p1, p2 = p.copy(), p.copy()
        s1, s2 = [s.copy() for s in state], [s.copy() for s in state]
        getattr(ops, method)(p1, g, *s1, None, spans, **groups, **kwargs)
        getattr(Ops, method)(ops, p2, g, *s2, np.empty((2, n), np.float32), spans, **groups, **kwargs)
        np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-7, err_msg=method)
        for a, b in zip(s1, s2, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=method)
        for frozen in (slice(450, 600), slice(990, None)):
            np.testing.assert_array_equal(p1[frozen], p[frozen], err_msg=method)
            for a, b in zip(s1, state, strict=True):
                np.testing.assert_array_equal(a[frozen], b[frozen], err_msg=method)
        assert not np.array_equal(p1[:300], p[:300]) and not np.array_equal(p1[300:450], p[300:450])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method, state, kwargs", [
    ("adam_step", 2, dict(beta1=0.9, beta2=0.999, eps=1e-8, step=3, decoupled=False)),
    ("nadam_step", 2, dict(beta1=0.9, beta2=0.999, eps=1e-8, step=3, mu=0.45, mu_next=0.46, mu_product=0.09)),
    ("sgd_step", 1, dict(momentum=0.9, dampening=0.0, nesterov=True, first=False)),
    ("rmsprop_step", 3, dict(alpha=0.99, eps=1e-8, momentum=0.9, centered=True))])
def test_decaying_state_is_flushed_below_the_smallest_normal_number(method, state, kwargs, dtype):
    """Where the gradient is 0, m, v, the momentum buffers and RMSprop's averages shrink each step through
    the subnormal range (slow on x86: the MLP's Adam update 0.27 -> 1.69 ms): the fused kernels set them to
    0 there, keep normal values as the generic passes compute them, and keep a NaN a NaN."""
    from neuronet.backend import Ops, Spans

    ops, t = nn.backends.get_ops("numpy"), np.dtype(dtype)
    tiny = np.finfo(t).tiny
    # 1.000x tiny decays below it in one step at every rate here; 4 tiny stays normal
    values = np.array([tiny * 1.0005, tiny * 4, 0.3, np.nan, tiny * 1.0002, 1.0], t)
    g = np.array([0, 0, 0.1, 0, 0, 0.2], t)
    groups, spans = dict(lr=(1e-2,), weight_decay=(0.0,)), Spans.of([(0, 6, 0)])
    flushed, reference = [values.copy() for _ in range(state)], [values.copy() for _ in range(state)]
    p1, p2 = np.ones(6, t), np.ones(6, t)
    getattr(ops, method)(p1, g, *flushed, None, spans, **groups, **kwargs)
    getattr(Ops, method)(ops, p2, g, *reference, np.empty((2, 6), t), spans, **groups, **kwargs)
    for new, old in zip(flushed, reference, strict=True):
        subnormal = (np.abs(old) < tiny) & (old != 0)
        assert subnormal.any() and np.all(new[subnormal] == 0)
        np.testing.assert_array_equal(new[~subnormal], old[~subnormal])
    np.testing.assert_allclose(p1, p2, rtol=1e-6)


MLP_PARAMS = 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10  # 535,818


@pytest.mark.parametrize("opt", [nn.Adam(1e-3), nn.AdamW(1e-3, clip_norm=1.0), nn.Adagrad(), nn.NAdam(),
                                 nn.SGD(0.1, momentum=0.9, nesterov=True),
                                 nn.RMSprop(1e-3, momentum=0.9, centered=True, weight_decay=1e-4)], ids=repr)
def test_numpy_step_allocates_nothing(opt):
    rng = np.random.default_rng(6)
    params = rng.standard_normal(MLP_PARAMS).astype(np.float32)
    grads = rng.standard_normal(MLP_PARAMS).astype(np.float32)
    growth, peak = step_allocations(lambda: opt.step(params, grads))
    assert growth < 4096 and peak < 64 * 1024, (growth, peak)  # the buffer is 2 MiB


@pytest.mark.parametrize("make, message", [
    (lambda: nn.SGD(-0.1), r"SGD: lr must be a finite number >= 0, got -0.1"),
    (lambda: nn.Adam(float("nan")), r"Adam: lr must be a finite number"),
    (lambda: nn.Adam(betas=(1.0, 0.999)), r"Adam: beta1 must be a finite number in \[0, 1\), got 1.0"),
    (lambda: nn.AdamW(betas=(0.9, -0.1)), r"AdamW: beta2 must be"),
    (lambda: nn.Adam(betas=0.9), r"Adam: betas must be a pair"),
    (lambda: nn.Adam(eps=-1.0), r"Adam: eps must be"),
    (lambda: nn.SGD(0.1, momentum=-0.5), r"SGD: momentum must be"),
    (lambda: nn.SGD(0.1, nesterov=True), r"SGD: Nesterov momentum requires a momentum > 0"),
    (lambda: nn.RMSprop(alpha=1.5), r"RMSprop: alpha must be a finite number in \[0, 1\]"),
    (lambda: nn.RMSprop(weight_decay=-1), r"RMSprop: weight_decay must be"),
    (lambda: nn.Adam(clip_norm=0.0), r"Adam: clip_norm must be a number > 0"),
])
def test_bad_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", ["sgd_momentum_dampening", "adam_wd_betas", "rmsprop_centered_momentum_wd",
                                  "adagrad_decay_wd", "nadam_wd_betas"])
def test_config_round_trip_and_registry(name):
    opt = _ours(name)
    clone = nn.OPTIMIZERS[type(opt).__name__](**opt.get_config())
    assert repr(clone) == repr(opt)


def test_state_survives_a_backend_move_and_preset_state():
    """State set before the first step (a loaded file) is kept; moving to torch keeps the moments."""
    opt = _run("adam", "numpy", steps=3)
    m = np.array(opt.state["m"])
    params = torch.zeros(N, dtype=torch.float64)
    opt.step(params, torch.zeros(N, dtype=torch.float64))
    assert isinstance(opt.state["m"], torch.Tensor)
    np.testing.assert_allclose(opt.state["m"].numpy(), 0.9 * m)


def test_adam_trains_a_model_with_fit():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Dense(4, 16, activation="relu"), nn.Dense(16, 2))
    model.compile(optimizer=nn.RMSprop(1e-2, clip_norm=5.0), loss=nn.CrossEntropyLoss())
    hist = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]


@pytest.mark.parametrize("opt", [nn.RMSprop(1e-2, momentum=0.9, centered=True, clip_norm=1.0),
                                 nn.SGD(0.1, momentum=0.9, nesterov=True), nn.AdamW(1e-2),
                                 nn.Adagrad(0.05, lr_decay=0.01), nn.NAdam(1e-2, weight_decay=0.01)],
                         ids=repr)
def test_training_resumes_exactly_after_save_and_load(opt, tmp_path):
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    model = nn.Sequential(nn.Dense(4, 8, activation="relu"), nn.Dense(8, 3))
    model.compile(optimizer=opt, loss=nn.CrossEntropyLoss(label_smoothing=0.1))
    for _ in range(3):
        model.train_step(x, y)
    model.save(tmp_path / "m.nnet")
    loaded = nn.load(tmp_path / "m.nnet")
    assert sorted(loaded.optimizer.state) == sorted(opt.state) and loaded.optimizer.iterations == 3
    assert [model.train_step(x, y) for _ in range(3)] == [loaded.train_step(x, y) for _ in range(3)]
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
