"""Every loss against its PyTorch namesake (value and gradient, float64), a numerical gradient check,
the torch backend, and the errors for bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import neuronet as nn
from neuronet.testing import numerical_gradient, step_allocations

RNG = np.random.default_rng(0)


def _probs(shape, rng):
    p = rng.random(shape) + 0.05
    return p / p.sum(-1, keepdims=True)


def _flat_ce(x, t, **kw):  # classes on the last axis, as ours
    return F.cross_entropy(x.reshape(-1, x.shape[-1]), t.reshape(-1, *t.shape[x.ndim - 1:]), **kw)


def _sign(shape, rng):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


# name -> (our loss, torch fn(pred tensors..., target) -> loss, make(rng, shape) -> (preds, target))
CASES = {
    "mse": (nn.MSELoss, lambda x, t: F.mse_loss(x, t),
            lambda r, s: ((r.standard_normal(s),), r.standard_normal(s))),
    "l1": (nn.L1Loss, lambda x, t: F.l1_loss(x, t),
           lambda r, s: ((r.standard_normal(s),), r.standard_normal(s))),
    "huber": (lambda: nn.HuberLoss(delta=0.7), lambda x, t: F.huber_loss(x, t, delta=0.7),
              lambda r, s: ((2 * r.standard_normal(s),), r.standard_normal(s))),
    "bce": (nn.BCELoss, lambda x, t: F.binary_cross_entropy(x, t),
            lambda r, s: ((r.uniform(0.05, 0.95, s),), r.random(s))),
    "bce_logits": (nn.BCEWithLogitsLoss, lambda x, t: F.binary_cross_entropy_with_logits(x, t),
                   lambda r, s: ((3 * r.standard_normal(s),), r.random(s))),
    "kldiv": (nn.KLDivLoss, lambda x, t: F.kl_div(x, t, reduction="batchmean"),
              lambda r, s: ((np.log(_probs(s, r)),), _probs(s, r))),
    "cross_entropy": (nn.CrossEntropyLoss, _flat_ce,
                      lambda r, s: ((r.standard_normal(s),), r.integers(0, s[-1], s[:-1]))),
    "cross_entropy_smooth": (lambda: nn.CrossEntropyLoss(label_smoothing=0.2),
                             lambda x, t: _flat_ce(x, t, label_smoothing=0.2),
                             lambda r, s: ((r.standard_normal(s),), r.integers(0, s[-1], s[:-1]))),
    "cross_entropy_probs": (lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
                            lambda x, t: _flat_ce(x, t, label_smoothing=0.1),
                            lambda r, s: ((r.standard_normal(s),), _probs(s, r))),
    "nll": (nn.NLLLoss, lambda x, t: F.nll_loss(x.reshape(-1, x.shape[-1]), t.reshape(-1)),
            lambda r, s: ((np.log(_probs(s, r)),), r.integers(0, s[-1], s[:-1]))),
    "multi_margin": (lambda: nn.MultiMarginLoss(margin=0.8),
                     lambda x, t: F.multi_margin_loss(x, t, margin=0.8),
                     lambda r, s: ((r.standard_normal(s[:1] + s[-1:]),), r.integers(0, s[-1], s[:1]))),
    "multi_margin_p2": (lambda: nn.MultiMarginLoss(p=2, margin=1.2),
                        lambda x, t: F.multi_margin_loss(x, t, p=2, margin=1.2),
                        lambda r, s: ((r.standard_normal(s[:1] + s[-1:]),), r.integers(0, s[-1], s[:1]))),
    "margin_ranking": (lambda: nn.MarginRankingLoss(margin=0.3),
                       lambda a, b, t: F.margin_ranking_loss(a, b, t, margin=0.3),
                       lambda r, s: ((r.standard_normal(s), r.standard_normal(s)), _sign(s, r))),
    "triplet": (lambda: nn.TripletMarginLoss(margin=1.0), lambda a, p, n, t: F.triplet_margin_loss(a, p, n),
                lambda r, s: ((r.standard_normal(s), r.standard_normal(s), r.standard_normal(s)), None)),
    "triplet_p1": (lambda: nn.TripletMarginLoss(margin=0.5, p=1), lambda a, p, n, t: F.triplet_margin_loss(
        a, p, n, margin=0.5, p=1), lambda r, s: ((r.standard_normal(s), r.standard_normal(s),
                                                   r.standard_normal(s)), None)),
}
SHAPES = [(5, 4), (2, 3, 6), (1, 7)]


def _torch_reference(fn, preds, target):
    tp = [torch.tensor(p, requires_grad=True) for p in preds]
    tt = None if target is None else torch.tensor(target)
    value = fn(*tp, tt)
    value.backward()
    return value.item(), [t.grad.numpy() for t in tp]


def _ours(loss, preds, target, backend="numpy"):
    ops = nn.backends.get_ops(backend)
    arrays = tuple(ops.asarray(p) for p in preds)
    value = loss.forward(arrays if len(arrays) > 1 else arrays[0], target)
    grads = loss.backward()
    grads = grads if isinstance(grads, tuple) else (grads,)
    return value, [np.array(ops.to_numpy(g)) for g in grads]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_loss_matches_torch(name, shape, backend):
    make_loss, fn, make = CASES[name]
    preds, target = make(np.random.default_rng(1), shape)
    want, want_grads = _torch_reference(fn, preds, target)
    loss = make_loss()
    for _ in range(2):  # a second call reuses the workspace and must give the same
        got, grads = _ours(loss, preds, target, backend)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
        for g, w in zip(grads, want_grads, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_loss_numerical_gradient(name):
    make_loss, _, make = CASES[name]
    preds, target = make(np.random.default_rng(2), (3, 4))
    loss = make_loss()
    _, grads = _ours(loss, preds, target)
    for i, p in enumerate(preds):
        def f():
            return loss.forward(preds if len(preds) > 1 else preds[0], target)
        np.testing.assert_allclose(grads[i], numerical_gradient(f, p), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{name}: input {i}")


def test_cross_entropy_language_model_shape_float32():
    rng = np.random.default_rng(3)
    logits, target = rng.standard_normal((2, 5, 11)).astype(np.float32), rng.integers(0, 11, (2, 5))
    loss = nn.CrossEntropyLoss()
    value = loss.forward(logits, target)
    grad = loss.backward()
    assert grad.dtype == np.float32 and grad.shape == logits.shape
    x = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(x.reshape(-1, 11), torch.tensor(target).reshape(-1))
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(grad, x.grad.numpy(), atol=1e-6)


def test_loss_steps_allocate_nothing_sizeable():
    rng = np.random.default_rng(4)
    x, labels = rng.standard_normal((256, 100)).astype(np.float32), rng.integers(0, 100, 256)
    p, t = rng.uniform(0.1, 0.9, (256, 100)).astype(np.float32), rng.random((256, 100)).astype(np.float32)
    for loss, pred, target in [(nn.CrossEntropyLoss(label_smoothing=0.1), x, labels), (nn.MSELoss(), x, t),
                               (nn.BCELoss(), p, t), (nn.BCEWithLogitsLoss(), x, t)]:
        def step(loss=loss, pred=pred, target=target):
            loss.forward(pred, target)
            loss.backward()

        growth, peak = step_allocations(step)
        assert growth < 16 * 1024 and peak < 16 * 1024, (loss, growth, peak)  # the arrays are 100 KiB


@pytest.mark.parametrize("loss", [nn.CrossEntropyLoss(), nn.NLLLoss(), nn.MultiMarginLoss()], ids=repr)
def test_class_label_out_of_range_names_loss_label_and_range(loss):
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=rf"{type(loss).__name__}: class label 4 out of range \[0, 4\)"):
        loss.forward(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"class label -1 out of range"):
        loss.forward(x, np.array([0, -1, 1]))


def test_class_targets_wrong_shape_or_dtype():
    loss = nn.CrossEntropyLoss()
    with pytest.raises(nn.ShapeError, match=r"CrossEntropyLoss: class targets must have shape \(2, 3\)"):
        loss.forward(np.zeros((2, 3, 5)), np.zeros(6, dtype=np.int64))
    with pytest.raises(TypeError, match="CrossEntropyLoss: class targets must be integers, got float64"):
        loss.forward(np.zeros((2, 5)), np.zeros(2))
    with pytest.raises(TypeError, match="NLLLoss: class targets must be integers"):
        nn.NLLLoss().forward(np.zeros((2, 5)), np.zeros(2, dtype=np.float32))


@pytest.mark.parametrize("loss", [nn.MSELoss(), nn.L1Loss(), nn.HuberLoss(), nn.BCEWithLogitsLoss(),
                                  nn.KLDivLoss()], ids=repr)
def test_target_shape_mismatch(loss):
    with pytest.raises(nn.ShapeError, match=rf"{type(loss).__name__}: target shape \(4, 2\) does not match "
                                            r"prediction shape \(4, 3\)"):
        loss.forward(np.zeros((4, 3)), np.zeros((4, 2)))


def test_bce_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match=r"BCELoss: input must hold probabilities in \[0, 1\].*1\.5"):
        nn.BCELoss().forward(np.array([0.2, 1.5]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="BCELoss"):
        nn.BCELoss().forward(np.array([0.2, np.nan]), np.array([0.0, 1.0]))


def test_wrong_dtypes_and_tuples():
    with pytest.raises(TypeError, match="MSELoss: input must be a floating-point array, got int64"):
        nn.MSELoss().forward(np.zeros(3, dtype=np.int64), np.zeros(3))
    with pytest.raises(TypeError, match="MSELoss: target must be numeric"):
        nn.MSELoss().forward(np.zeros(2), np.array(["a", "b"]))
    with pytest.raises(TypeError, match=r"MarginRankingLoss: pred must be a tuple \(input1, input2\)"):
        nn.MarginRankingLoss().forward(np.zeros(3), np.ones(3))
    with pytest.raises(nn.ShapeError, match=r"TripletMarginLoss: positive shape \(2, 4\) does not match"):
        nn.TripletMarginLoss().forward((np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3))))
    with pytest.raises(ValueError, match="MarginRankingLoss: target values must be -1 or 1"):
        nn.MarginRankingLoss().forward((np.zeros(3), np.zeros(3)), np.array([1.0, 0.0, -1.0]))
    with pytest.raises(nn.ShapeError, match=r"MultiMarginLoss: input must be 2-D \(N, C\)"):
        nn.MultiMarginLoss().forward(np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(RuntimeError, match="MSELoss: backward\\(\\) needs a forward"):
        nn.MSELoss().backward()


def test_losses_are_registered_and_rebuild_from_config():
    for name in ("MSELoss", "HuberLoss", "CrossEntropyLoss", "NLLLoss", "BCELoss", "BCEWithLogitsLoss",
                 "L1Loss", "KLDivLoss", "MarginRankingLoss", "TripletMarginLoss", "MultiMarginLoss"):
        cls = nn.LOSSES[name]
        loss = cls()
        assert repr(type(loss)(**loss.get_config())) == repr(loss)
    assert repr(nn.HuberLoss(0.5)) == "HuberLoss(delta=0.5)"


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_class_targets_of_any_integer_dtype(dtype, backend):
    ops = nn.backends.get_ops(backend)
    x = np.random.default_rng(8).standard_normal((4, 5))
    target = np.array([0, 1, 4, 2])
    want = F.cross_entropy(torch.tensor(x), torch.tensor(target)).item()
    assert nn.CrossEntropyLoss()(ops.asarray(x), target.astype(dtype)) == pytest.approx(want, rel=1e-12)
    assert nn.NLLLoss()(ops.asarray(x), target.astype(dtype)) == pytest.approx(-x[range(4), target].mean())


@pytest.mark.parametrize("name", list(CASES))
def test_cpu_tensors_compute_on_the_host_twin(name):
    """CPU float tensors: the loss runs on the NumPy backend over views of their memory (a dozen small
    passes cost less there) and hands its gradient back as tensors; the torch path (kept when the loss is
    sync-free, as on accelerators) gives the same."""
    make_loss, _, make = CASES[name]
    preds, target = make(np.random.default_rng(3), (5, 4))
    tensors = tuple(torch.tensor(p, dtype=torch.float32) for p in preds)
    runs = []
    for sync_free in (False, True):
        loss = make_loss()
        loss.sync_free = sync_free
        value = loss.forward(tensors if len(tensors) > 1 else tensors[0],
                             None if target is None else torch.tensor(target))
        grads = loss.backward()
        grads = grads if isinstance(grads, tuple) else (grads,)
        assert all(isinstance(g, torch.Tensor) and g.dtype == torch.float32 for g in grads)
        assert (loss.ops.name == "numpy") is not sync_free
        runs.append((float(value), [g.numpy().copy() for g in grads]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5, abs=1e-6)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_low_precision_tensors_stay_on_torch():
    loss = nn.CrossEntropyLoss()
    loss.forward(torch.randn(4, 3, dtype=torch.float16), torch.tensor([0, 2, 1, 0]))
    assert loss.ops.name == "torch" and loss.backward().dtype == torch.float16
