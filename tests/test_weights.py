"""sample_weight and class_weight (Keras semantics) against torch; model.parameters(); dtype checks."""

import numpy as np
import pytest

import neuronet as nn

torch = pytest.importorskip("torch")


def _pair(seed=0):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Dense(4, 6, activation="tanh"), nn.Dense(6, 3))
    model.build((4,))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    state = {k.replace("1.", "2."): torch.from_numpy(v.astype(np.float64))
             for k, v in model.state_dict().items()}
    ref.load_state_dict(state)
    return model, ref


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_weighted_step_matches_torch_weighted_loss(backend, kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 4)).astype(np.float32)
    y = rng.integers(0, 3, 9) if kind == "cross_entropy" else rng.standard_normal((9, 3)).astype(np.float32)
    w = rng.random(9) * 2
    model, ref = _pair()
    model.to(backend).compile(nn.SGD(0.0), kind)
    loss = model.train_step(x, y, w)
    out = ref(torch.from_numpy(x).double())
    if kind == "cross_entropy":
        per = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction="none")
    else:
        per = ((out - torch.from_numpy(y).double()) ** 2).mean(dim=1)
    want = (per * torch.from_numpy(w)).mean()  # Keras: sum_i w_i l_i / N
    want.backward()
    assert loss == pytest.approx(want.item(), rel=1e-5)
    for name, p in ref.named_parameters():
        got = model.ops.to_numpy(model.grads[name.replace("2.", "1.")])
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_fit_with_class_weight_equals_fit_with_the_matching_sample_weight():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((30, 4)).astype(np.float32), rng.integers(0, 3, 30)
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0}
    sw = rng.random(30) + 0.5
    by_class, by_sample = _pair()[0], _pair()[0]
    for model in (by_class, by_sample):
        model.compile(nn.SGD(0.1), "cross_entropy")
    h1 = by_class.fit(x, y, epochs=2, batch_size=8, shuffle=False, class_weight=class_weight,
                      sample_weight=sw, verbose=0)
    full = sw * np.array([class_weight[c] for c in y])
    h2 = by_sample.fit(x, y, epochs=2, batch_size=8, shuffle=False, sample_weight=full, verbose=0)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-6)
    np.testing.assert_array_equal(by_class.flat_params, by_sample.flat_params)
    plain = _pair()[0].compile(nn.SGD(0.1), "cross_entropy")
    plain.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert not np.array_equal(plain.flat_params, by_class.flat_params)
    unit = _pair()[0].compile(nn.SGD(0.1), "cross_entropy")
    unit.fit(x, y, epochs=2, batch_size=8, shuffle=False, sample_weight=np.ones(30), verbose=0)
    np.testing.assert_allclose(unit.flat_params, plain.flat_params, rtol=1e-5, atol=1e-7)


def test_weights_also_come_from_sources_and_evaluate():
    rng = np.random.default_rng(3)
    x, y, w = rng.standard_normal((12, 4)).astype(np.float32), rng.integers(0, 3, 12), rng.random(12)
    a, b = _pair()[0], _pair()[0]
    a.compile(nn.SGD(0.1), "cross_entropy")
    b.compile(nn.SGD(0.1), "cross_entropy")
    a.fit(x, y, batch_size=4, shuffle=False, sample_weight=w, verbose=0)
    b.fit([(x[i:i + 4], y[i:i + 4], w[i:i + 4]) for i in range(0, 12, 4)], verbose=0)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    out = torch.from_numpy(a.predict(x)).double()
    per = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction="none").numpy()
    assert a.evaluate(x, y, sample_weight=w)["loss"] == pytest.approx((per * w).mean(), rel=1e-5)


def test_parameters_are_the_views_in_torch_order():
    model, ref = _pair()
    params = list(model.parameters())
    assert [tuple(p.shape) for p in params] == [tuple(p.shape) for p in ref.parameters()]
    assert all(p is model.params[name] for p, (name, _) in zip(params, model.named_parameters(), strict=True))
    params[0][...] = 7.0  # views into the flat array, as torch's parameters are the module's tensors
    assert (model.flat_params[:params[0].size] == 7.0).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int32"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_unsupported_dtypes_are_refused_by_name(dtype, backend):
    with pytest.raises(nn.errors.ConfigError, match=rf"dtype '{dtype}' is not supported.*float32 or float64"):
        nn.Sequential(nn.Dense(2, 2), dtype=dtype)
    layer = nn.Dense(2, 2)
    with pytest.raises(nn.errors.ConfigError, match=rf"Dense: dtype '{dtype}' is not supported"):
        layer.build((2,), dtype=dtype, ops=nn.backends.get_ops(backend))


N_SAMPLES = 5
PER_SAMPLE_CASES = {  # name: (loss, pred shape, target)
    "mse": (lambda: nn.MSELoss(), (N_SAMPLES, 3), "floats"),
    "mse_sequences": (lambda: nn.MSELoss(), (N_SAMPLES, 4, 3), "floats"),
    "l1": (lambda: nn.L1Loss(), (N_SAMPLES, 3), "floats"),
    "huber": (lambda: nn.HuberLoss(0.5), (N_SAMPLES, 2, 3), "floats"),
    "bce": (lambda: nn.BCELoss(), (N_SAMPLES, 3), "probabilities"),
    "bce_with_logits": (lambda: nn.BCEWithLogitsLoss(), (N_SAMPLES, 3), "binary"),
    "kl_div": (lambda: nn.KLDivLoss(), (N_SAMPLES, 2, 3), "distribution"),
    "cross_entropy": (lambda: nn.CrossEntropyLoss(), (N_SAMPLES, 3), "classes"),
    "cross_entropy_sequences": (lambda: nn.CrossEntropyLoss(weight=[1.0, 3.0, 0.5], ignore_index=1,
                                                            label_smoothing=0.2),
                                (N_SAMPLES, 4, 3), "classes"),
    "cross_entropy_probabilities": (lambda: nn.CrossEntropyLoss(label_smoothing=0.1), (N_SAMPLES, 3),
                                    "distribution"),
    "cross_entropy_probabilities_weighted": (lambda: nn.CrossEntropyLoss(weight=[1.0, 2.0, 0.5]),
                                             (N_SAMPLES, 2, 3), "distribution"),
    "nll": (lambda: nn.NLLLoss(weight=[2.0, 1.0, 0.5]), (N_SAMPLES, 4, 3), "classes"),
    "multi_margin": (lambda: nn.MultiMarginLoss(p=2, margin=0.5), (N_SAMPLES, 3), "classes"),
}


def _target(kind, shape, rng):
    if kind == "classes":
        return rng.integers(0, shape[-1], shape[:-1])
    values = {"floats": rng.standard_normal(shape), "probabilities": rng.random(shape),
              "binary": (rng.random(shape) > 0.5) * 1.0,
              "distribution": rng.dirichlet(np.ones(shape[-1]), shape[:-1])}[kind]
    return values.astype(np.float32)


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(PER_SAMPLE_CASES))
def test_per_sample_losses_are_each_sample_alone(name, backend, sync_free):
    """Loss.per_sample after one batch forward: what a forward of each sample alone gives (the loop it
    replaced in weighted_forward), with class weights, ignored targets (a sample with all of them ignored:
    NaN, as alone), smoothing and sequences; on the NumPy backend, on the torch backend and sync-free."""
    make, shape, kind = PER_SAMPLE_CASES[name]
    rng = np.random.default_rng(4)
    pred, target = rng.standard_normal(shape).astype(np.float32), _target(kind, shape, rng)
    if name == "bce":
        pred = rng.random(shape).astype(np.float32)
    if name == "nll":
        pred = np.log(rng.dirichlet(np.ones(shape[-1]), shape[:-1])).astype(np.float32)
    if name == "cross_entropy_sequences":
        target[0] = 1  # every position of sample 0 ignored
    loss = make()
    loss.sync_free = sync_free if backend == "torch" else None
    ops = nn.backends.get_ops(backend)
    p, t = ops.asarray(pred), ops.asarray(target)
    alone = [float(loss.forward(p[i:i + 1], t[i:i + 1])) for i in range(N_SAMPLES)]
    loss.forward(p, t)
    split = loss.per_sample(N_SAMPLES)
    np.testing.assert_allclose(split, alone, rtol=2e-6, atol=1e-7)
    assert np.isnan(split[0]) == (name == "cross_entropy_sequences")


def test_a_weighted_step_forwards_the_loss_once():
    """sample_weight takes each sample's loss from the batch forward (it ran N + 1 forwards: the MLP's
    weighted step 2.5x its plain one)."""
    model, _ = _pair()
    model.compile(nn.SGD(0.1), "cross_entropy")
    calls = []
    forward = model.loss.forward
    model.loss.forward = lambda *a: calls.append(1) or forward(*a)
    rng = np.random.default_rng(2)
    model.train_step(rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8), rng.random(8))
    assert len(calls) == 1


def _two_heads():
    nn.manual_seed(3)
    inp = nn.Input((4,))
    h = nn.Dense(4, 8, activation="tanh")(inp)
    model = nn.Model(inp, [nn.Dense(8, 3)(h), nn.Dense(8, 2)(h)])
    model.compile(nn.SGD(0.0), ["cross_entropy", "mse"], loss_weights=[1.0, 0.5])
    return model


@pytest.mark.parametrize("split", [True, False])
def test_sample_weight_on_a_model_of_two_outputs(split, monkeypatch):
    """Weights apply to every output's loss (Keras): all ones is the plain step, N at sample k and 0
    elsewhere is sample k's step alone; from the per-output split, and from the per-sample fallback
    (which slices each output and target)."""
    if not split:
        monkeypatch.setattr(nn.model.functional.PerOutputLoss, "per_sample", lambda self, n: None)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = [rng.integers(0, 3, 6), rng.standard_normal((6, 2)).astype(np.float32)]
    model = _two_heads()

    def step(xs, ys, w=None):
        loss = model.train_step(xs, ys, w)
        return loss, model.ops.to_numpy(model.flat_grads).copy()

    plain, ones = step(x, y), step(x, y, np.ones(6))
    np.testing.assert_allclose(ones[0], plain[0], rtol=1e-6)
    np.testing.assert_allclose(ones[1], plain[1], rtol=1e-5, atol=1e-7)
    alone = step(x[2:3], [t[2:3] for t in y])
    picked = step(x, y, np.eye(6)[2] * 6)
    np.testing.assert_allclose(picked[0], alone[0], rtol=1e-5)
    np.testing.assert_allclose(picked[1], alone[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sync_free", [None, True])
@pytest.mark.parametrize("name", ["margin_ranking", "triplet"])
def test_per_sample_losses_of_several_inputs(name, sync_free):
    """The pair and triplet losses split their batch loss too (pred a tuple, sequences of 2 positions)."""
    rng = np.random.default_rng(6)
    ops = nn.backends.get_ops("torch")
    if name == "margin_ranking":
        loss, shape = nn.MarginRankingLoss(0.2), (N_SAMPLES, 2, 3)
        pred = tuple(ops.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(2))
        target = ops.asarray(np.sign(rng.standard_normal(shape)).astype(np.float32))
    else:
        loss, shape = nn.TripletMarginLoss(0.5), (N_SAMPLES, 2, 4)
        pred = tuple(ops.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(3))
        target = None
    loss.sync_free = sync_free
    alone = [float(loss.forward(tuple(p[i:i + 1] for p in pred), None if target is None else target[i:i + 1]))
             for i in range(N_SAMPLES)]
    loss.forward(pred, target)
    np.testing.assert_allclose(loss.per_sample(N_SAMPLES), alone, rtol=2e-6, atol=1e-7)


def test_sync_free_margin_ranking_makes_an_invalid_target_non_finite():
    """Read by nothing on the host, a target that is not -1 or 1 cannot raise: the loss is inf or NaN, which
    train_step refuses; with host reads it raises the ValueError."""
    ops = nn.backends.get_ops("torch")
    x = ops.asarray(np.ones((4, 2), np.float32))
    y = ops.asarray(np.array([[1, -1], [1, 0.5], [1, 1], [-1, -1]], np.float32))
    loss = nn.MarginRankingLoss()
    with pytest.raises(ValueError, match="-1 or 1"):
        loss.forward((x, x * 2), y)
    loss.sync_free = True
    assert not np.isfinite(float(loss.forward((x, x * 2), y)))
