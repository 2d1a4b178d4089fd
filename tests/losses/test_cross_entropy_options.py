"""CrossEntropyLoss / NLLLoss with PyTorch's ``weight`` and ``ignore_index`` (and ``label_smoothing``): values
and gradients against torch in float64 for 2-D and (N, T, C) logits on both backends, a numerical gradient
check, the all-ignored NaN, allocations, errors, and the config / .nnet round trip."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import neuronet as nn
from neuronet.testing import assert_step_allocates_nothing, numerical_gradient, step_allocations

C = 5
# name -> (weight?, ignore_index, label_smoothing); targets hit ignore_index about a third of the time
OPTIONS = {
    "weight": (True, -100, 0.0),
    "ignore": (False, -100, 0.0),
    "weight_ignore": (True, -100, 0.0),
    "ignore_in_range": (True, 2, 0.0),  # ignore_index may be a real class (e.g. a padding token)
    "smooth_weight": (True, -100, 0.15),
    "smooth_ignore": (False, -1, 0.15),
    "smooth_weight_ignore": (True, -100, 0.15),
}
SHAPES = [(7, C), (2, 4, C)]


def _case(name, shape, seed=0):
    use_weight, ignore_index, eps = OPTIONS[name]
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.standard_normal(shape)
    target = rng.integers(0, C, shape[:-1])
    if name != "weight":
        target[rng.random(shape[:-1]) < 0.35] = ignore_index
        target.reshape(-1)[0] = 0 if ignore_index != 0 else 1  # at least one position counts
    weight = rng.uniform(0.2, 2.0, C) if use_weight else None
    return x, target, weight, ignore_index, eps


def _ours(loss, x, target, backend):
    ops = nn.backends.get_ops(backend)
    value = loss.forward(ops.asarray(x), ops.asarray(target))
    return value, np.array(ops.to_numpy(loss.backward()))


def _torch(fn, x, target, **kw):
    """torch's loss with classes on dim 1, as torch wants them: (N, T, C) logits go in as (N, C, T)."""
    xt, tt = torch.tensor(x, requires_grad=True), torch.tensor(target)
    arg = xt.movedim(-1, 1) if xt.ndim > 2 else xt
    if tt.is_floating_point() and tt.ndim > 2:  # class probabilities (N, T, C)
        tt = tt.movedim(-1, 1)
    if kw.get("weight") is not None:
        kw["weight"] = torch.tensor(kw["weight"])
    value = fn(arg, tt, **kw)
    value.backward()
    return value.item(), xt.grad.numpy()


def _log_softmax(x):
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_cross_entropy_matches_torch(name, shape, backend):
    x, target, weight, ignore_index, eps = _case(name, shape)
    want, want_grad = _torch(F.cross_entropy, x, target, weight=weight, ignore_index=ignore_index,
                             label_smoothing=eps)
    loss = nn.CrossEntropyLoss(weight, ignore_index=ignore_index, label_smoothing=eps)
    for _ in range(2):  # the second call reuses the workspace
        got, grad = _ours(loss, x, target, backend)
        assert got == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
        assert not grad.reshape(-1, C)[(target == ignore_index).reshape(-1)].any()  # ignored: no gradient


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ["weight", "ignore", "weight_ignore", "ignore_in_range"])
def test_nll_matches_torch(name, shape, backend):
    x, target, weight, ignore_index, _ = _case(name, shape, seed=1)
    logp = _log_softmax(x)
    want, want_grad = _torch(F.nll_loss, logp, target, weight=weight, ignore_index=ignore_index)
    loss = nn.NLLLoss(weight, ignore_index=ignore_index)
    for _ in range(2):
        got, grad = _ours(loss, logp, target, backend)
        assert got == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_probability_targets_with_weight_match_torch(eps, backend):
    rng = np.random.default_rng(2)
    x, q, weight = rng.standard_normal((2, 3, C)), rng.random((2, 3, C)), rng.uniform(0.2, 2.0, C)
    q /= q.sum(-1, keepdims=True)
    want, want_grad = _torch(F.cross_entropy, x, q, weight=weight, label_smoothing=eps)
    loss = nn.CrossEntropyLoss(weight, label_smoothing=eps)
    got, grad = _ours(loss, x, q, backend)
    assert got == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)


def test_float32_sequence_logits_keep_their_dtype(backend):
    x, target, weight, ignore_index, eps = _case("smooth_weight_ignore", (3, 6, C), seed=10)
    want, want_grad = _torch(F.cross_entropy, x, target, weight=weight, ignore_index=ignore_index,
                             label_smoothing=eps)
    ops = nn.backends.get_ops(backend)
    loss = nn.CrossEntropyLoss(weight, ignore_index=ignore_index, label_smoothing=eps)
    got = loss.forward(ops.asarray(x, "float32"), target)
    grad = loss.backward()
    assert ops.dtype_name(grad) == "float32" and tuple(grad.shape) == x.shape
    assert got == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(ops.to_numpy(grad), want_grad, atol=1e-6)


def test_one_loss_follows_changing_batches_and_ignore_patterns(backend):
    """Batch size, ignored positions and weights-vs-uniform paths change between calls of one loss."""
    ours = {"plain": nn.CrossEntropyLoss(label_smoothing=0.1), "weighted": nn.NLLLoss(np.arange(1.0, C + 1))}
    rng = np.random.default_rng(3)
    for m, frac in [(6, 0.0), (9, 0.5), (4, 0.0), (9, 1.0), (6, 0.3)]:
        x, target = rng.standard_normal((m, C)), rng.integers(0, C, m)
        target[rng.random(m) < frac] = -100
        for key, loss in ours.items():
            pred = x if key == "plain" else _log_softmax(x)
            fn = F.cross_entropy if key == "plain" else F.nll_loss
            kw = {"label_smoothing": 0.1} if key == "plain" else {"weight": np.arange(1.0, C + 1)}
            want, want_grad = _torch(fn, pred, target, **kw)
            got, grad = _ours(loss, pred, target, backend)
            np.testing.assert_allclose(got, want, rtol=1e-12)  # NaN == NaN when all are ignored
            np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)


def test_numerical_gradient_with_weight_ignore_and_smoothing():
    x, target, weight, ignore_index, eps = _case("smooth_weight_ignore", (2, 3, C), seed=4)
    loss = nn.CrossEntropyLoss(weight, ignore_index=ignore_index, label_smoothing=eps)
    loss.forward(x, target)
    grad = loss.backward()
    np.testing.assert_allclose(grad, numerical_gradient(lambda: loss.forward(x, target), x), rtol=1e-6,
                               atol=1e-8)


@pytest.mark.parametrize("make", [lambda: nn.CrossEntropyLoss(), lambda: nn.NLLLoss(np.ones(C)),
                                  lambda: nn.CrossEntropyLoss(np.ones(C), label_smoothing=0.1)],
                         ids=["ce", "nll_weight", "ce_weight_smooth"])
def test_every_target_ignored_gives_nan_loss_and_zero_gradient_like_torch(make, backend):
    x, target = np.random.default_rng(5).standard_normal((2, 3, C)), np.full((2, 3), -100)
    got, grad = _ours(make(), x, target, backend)
    assert np.isnan(got)
    np.testing.assert_array_equal(grad, np.zeros_like(x))
    assert np.isnan(F.cross_entropy(torch.tensor(x).movedim(-1, 1), torch.tensor(target)).item())


def test_targets_of_zero_weight_only_give_nan_like_torch():
    x, target = np.random.default_rng(6).standard_normal((4, C)), np.array([0, 0, -100, 0])
    weight = np.ones(C)
    weight[0] = 0.0
    want, want_grad = _torch(F.cross_entropy, x, target, weight=weight)
    got, grad = _ours(nn.CrossEntropyLoss(weight), x, target, "numpy")
    assert np.isnan(got) and np.isnan(want)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(want_grad))  # NaN rows kept, ignored row 0


def test_train_step_refuses_a_batch_whose_targets_are_all_ignored():
    model = nn.Sequential(nn.Dense(3, C))
    model.compile(nn.SGD(0.1), nn.CrossEntropyLoss())
    with pytest.raises(FloatingPointError, match="the loss is nan"):
        model.train_step(np.ones((2, 3), np.float32), np.array([-100, -100]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_ignoring_steps_allocate_no_array_sized_temporary(dtype):
    rng = np.random.default_rng(7)
    x, labels = rng.standard_normal((256, 100)).astype(dtype), rng.integers(0, 100, 256)
    weight = rng.random(100)
    labels[::3] = -100
    logp = _log_softmax(x).astype(dtype)
    cases = [(nn.CrossEntropyLoss(weight, label_smoothing=0.1), x), (nn.CrossEntropyLoss(), x),
             (nn.CrossEntropyLoss(weight), x), (nn.NLLLoss(weight), logp), (nn.NLLLoss(), logp)]
    for loss, pred in cases:
        def step(loss=loss, pred=pred):
            loss.forward(pred, labels)
            loss.backward()

        growth, peak = step_allocations(step)
        # The arrays are 100/200 KiB. Scaling rows by an (M, 1) column costs NumPy's fixed ufunc buffer
        # (8192 elements: 32/64 KiB) whatever M and C are; nothing else is allocated.
        assert growth < 16 * 1024 and peak < 8192 * np.dtype(dtype).itemsize + 4096, (loss, growth, peak)


def test_sequence_train_step_with_weight_and_ignore_index_allocates_nothing():
    vocab = 16
    model = nn.Sequential(nn.Embedding(vocab, 8), nn.Dense(8, vocab))
    model.compile(nn.Adam(1e-3), nn.CrossEntropyLoss(np.linspace(0.5, 1.5, vocab), ignore_index=0,
                                                     label_smoothing=0.1))
    rng = np.random.default_rng(8)
    x, y = rng.integers(0, vocab, (8, 32)), rng.integers(0, vocab, (8, 32))  # class 0 (padding) is ignored
    assert_step_allocates_nothing(lambda: model.train_step(x, y))  # the project's train_step limits


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls", [nn.CrossEntropyLoss, nn.NLLLoss])
def test_bad_weight_and_ignore_index_are_rejected_naming_the_loss(cls):
    name = cls.__name__
    with pytest.raises(nn.ShapeError, match=rf"{name}: weight must be a 1-D array of C class weights, got "
                                            r"shape \(2, 2\)"):
        cls(np.ones((2, 2)))
    with pytest.raises(ValueError, match=rf"{name}: class weights must be finite and >= 0, got -0.5 for "
                                         r"class 1"):
        cls([1.0, -0.5, 1.0])
    with pytest.raises(ValueError, match=rf"{name}: class weights must be finite and >= 0, got nan"):
        cls([1.0, np.nan])
    with pytest.raises(TypeError, match=rf"{name}: weight must be a 1-D array of C numbers"):
        cls(["a", "b"])
    with pytest.raises(TypeError, match=rf"{name}: ignore_index must be an integer, got 1.5"):
        cls(ignore_index=1.5)
    with pytest.raises(nn.ShapeError, match=rf"{name}: weight has 4 entries, expected one per class: {C} "
                                            rf"\(input shape \(2, 3, {C}\)\)"):
        cls(np.ones(4))(np.zeros((2, 3, C)), np.zeros((2, 3), np.int64))


@pytest.mark.parametrize("cls", [nn.CrossEntropyLoss, nn.NLLLoss])
def test_target_out_of_range_that_is_not_ignore_index_names_label_range_and_ignore_index(cls):
    x = np.zeros((3, C))
    with pytest.raises(ValueError, match=rf"{cls.__name__}: class label {C} out of range \[0, {C}\) for {C} "
                                         r"classes \(and not ignore_index=-100\)"):
        cls()(x, np.array([0, C, -100]))
    with pytest.raises(ValueError, match=r"class label -100 out of range .*ignore_index=-1\)"):
        cls(ignore_index=-1)(x, np.array([0, -1, -100]))
    assert np.isfinite(cls(ignore_index=-1)(x, np.array([0, -1, 1])))


def test_probability_targets_take_no_nonnegative_ignore_index_as_torch():
    x, q = np.zeros((2, C)), np.full((2, C), 1.0 / C)
    with pytest.raises(ValueError, match="CrossEntropyLoss: ignore_index=0 applies to class targets only"):
        nn.CrossEntropyLoss(ignore_index=0)(x, q)
    assert nn.CrossEntropyLoss(ignore_index=-1)(x, q) == pytest.approx(np.log(C))


# ------------------------------------------------------------------------------- config and .nnet files
def test_config_round_trips_weight_as_a_list():
    loss = nn.CrossEntropyLoss(torch.tensor([0.5, 1.0, 2.0]), ignore_index=3, label_smoothing=0.1)
    config = json.loads(json.dumps(loss.get_config()))
    assert config == {"weight": [0.5, 1.0, 2.0], "ignore_index": 3, "label_smoothing": 0.1}
    assert repr(nn.CrossEntropyLoss(**config)) == repr(loss)
    assert nn.NLLLoss(**nn.NLLLoss([1.0, 2.0]).get_config()).weight.tolist() == [1.0, 2.0]


def test_nnet_file_keeps_weight_and_ignore_index(tmp_path):
    model = nn.Sequential(nn.Dense(4, 3))
    model.compile(nn.Adam(1e-2), nn.CrossEntropyLoss([0.5, 1.0, 2.0], ignore_index=-1, label_smoothing=0.05))
    x, y = np.random.default_rng(9).standard_normal((6, 4)).astype(np.float32), np.array([0, 1, 2, -1, 1, 0])
    model.train_step(x, y)
    model.save(tmp_path / "m.nnet")
    loaded = nn.load(tmp_path / "m.nnet")
    assert loaded.loss.weight.tolist() == [0.5, 1.0, 2.0] and loaded.loss.ignore_index == -1
    assert loaded.loss.label_smoothing == 0.05
    assert loaded.train_step(x, y) == pytest.approx(model.train_step(x, y), rel=1e-6)
