"""Functional models against PyTorch: values and every gradient (float32 vs a float64 reference)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import neuronet as nn
from neuronet.errors import ShapeError
from neuronet.testing import assert_step_allocates_nothing, check_gradients

RNG = np.random.default_rng(0)


def _t(a):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


def _load_torch(module, model):
    """Copy the model's state_dict into ``module`` (float64), ignoring torch-only BN counters."""
    state = {k: torch.tensor(v, dtype=torch.float64) for k, v in model.state_dict().items()}
    missing, unexpected = module.double().load_state_dict(state, strict=True)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)


def _compare(model, module, torch_fn, xs, atol=2e-5, rtol=2e-4):
    """Forward and backward both ways with random dL/dy; compare outputs, dL/dx and every dL/dparam."""
    _load_torch(module, model)
    multi_in, multi_out = isinstance(xs, list), model._multi_out
    ys = model.forward(xs, training=True)
    ys_list = ys if multi_out else [ys]
    dys = [RNG.standard_normal(y.shape).astype(np.float32) for y in ys_list]
    model.zero_grad()
    dxs = model.backward(dys if multi_out else dys[0])
    txs = [_t(x) for x in (xs if multi_in else [xs])]
    touts = torch_fn(module, *txs)
    touts = touts if isinstance(touts, (list, tuple)) else [touts]
    sum((t * torch.tensor(d, dtype=torch.float64)).sum()
        for t, d in zip(touts, dys, strict=True)).backward()
    for y, t in zip(ys_list, touts, strict=True):
        np.testing.assert_allclose(y, t.detach().numpy(), atol=atol, rtol=rtol)
    for dx, t in zip(dxs if multi_in else [dxs], txs, strict=True):
        np.testing.assert_allclose(dx, t.grad.numpy(), atol=atol, rtol=rtol)
    tparams = dict(module.named_parameters())
    names = [name for name, _ in model.named_parameters()]
    assert sorted(names) == sorted(tparams)
    for name in names:
        np.testing.assert_allclose(model.grads[name], tparams[name].grad.numpy(), atol=atol, rtol=rtol,
                                   err_msg=name)


# ----------------------------------------------------------------- graphs and their torch twins
def _residual_cnn():
    inp = nn.Input((3, 8, 8))
    h = nn.Conv2D(3, 8, 3, padding=1)(inp)             # 0
    h = nn.ReLU()(nn.BatchNorm2D(8)(h))                # 1, 2
    r = nn.Conv2D(8, 8, 3, padding=1)(h)               # 3
    r = nn.BatchNorm2D(8)(r)                           # 4
    h = nn.ReLU()(nn.Add()([h, r]))                    # 5, 6
    out = nn.Dense(8, 5)(nn.GlobalAvgPool2D()(h))      # 7, 8
    return nn.Model(inputs=inp, outputs=out)


def _torch_residual_cnn(keys=("0", "1", "3", "4", "8")):
    """Its PyTorch twin; ``keys``: the graph's layer numbers of the two convolutions and BatchNorms (in turn)
    and of the Dense."""
    conv, bn, conv2, bn2, fc = keys
    m = torch.nn.ModuleDict({conv: torch.nn.Conv2d(3, 8, 3, padding=1), bn: torch.nn.BatchNorm2d(8),
                             conv2: torch.nn.Conv2d(8, 8, 3, padding=1), bn2: torch.nn.BatchNorm2d(8),
                             fc: torch.nn.Linear(8, 5)})

    def run(m, x):
        h = F.relu(m[bn](m[conv](x)))
        h = F.relu(h + m[bn2](m[conv2](h)))
        return m[fc](h.mean(dim=(2, 3)))
    return m, run


def test_residual_cnn_matches_torch():
    model = _residual_cnn()
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2D", "BatchNorm2D", "ReLU", "Conv2D", "BatchNorm2D", "Add", "ReLU", "GlobalAvgPool2D", "Dense"]
    module, run = _torch_residual_cnn()
    _compare(model, module, run, RNG.standard_normal((4, 3, 8, 8)).astype(np.float32))


def _fused_residual_cnn():
    """The residual CNN with its ReLUs in the BatchNorm and the Add (the bench's ResNet block's spelling)."""
    inp = nn.Input((3, 8, 8))
    h = nn.BatchNorm2D(8, activation="relu")(nn.Conv2D(3, 8, 3, padding=1)(inp))   # 0, 1
    r = nn.BatchNorm2D(8)(nn.Conv2D(8, 8, 3, padding=1)(h))                      # 2, 3
    h = nn.Add(activation="relu")([h, r])                                         # 4
    return nn.Model(inp, nn.Dense(8, 5)(nn.GlobalAvgPool2D()(h)))                 # 5, 6


def test_add_with_its_relu_matches_torch_and_the_torch_backend():
    model = _fused_residual_cnn()
    m, run = _torch_residual_cnn(("0", "1", "2", "3", "6"))
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    _compare(model, m, run, x)
    dy = RNG.standard_normal((4, 5)).astype(np.float32)
    want_y, want_dx = model.forward(x), model.backward(dy).copy()
    model.to("torch")
    got_y, got_dx = model.forward(torch.from_numpy(x)), model.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(got_y.numpy(), want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_dx.numpy(), want_dx, rtol=1e-5, atol=1e-5)


def test_add_with_its_relu_numerical_gradients_and_config(tmp_path):
    inp = nn.Input((6,))
    out = nn.Add(activation="relu")([nn.Dense(6, 6)(inp), inp])
    check_gradients(nn.Model(inp, out), RNG.standard_normal((5, 6)))
    with pytest.raises(nn.errors.ConfigError, match="Add: activation must be None or 'relu'"):
        nn.Add(activation="gelu")
    model = _fused_residual_cnn()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    model.save(tmp_path / "fused.nnet")
    loaded = nn.load(tmp_path / "fused.nnet")
    assert repr(loaded.layers[4]) == "Add(activation='relu')"
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_shared_layer_is_one_set_of_weights_whose_gradients_add_up():
    inp = nn.Input((6,))
    shared = nn.Dense(6, 6, activation="tanh")
    h1 = shared(inp)
    h2 = shared(h1)                                     # the same layer again, on its own output
    out = nn.Dense(6, 3)(nn.Add()([h1, h2]))
    model = nn.Model(inp, out)
    assert len(model.layers) == 3 and model.num_params() == 6 * 6 + 6 + 6 * 3 + 3
    module = torch.nn.ModuleDict({"0": torch.nn.Linear(6, 6), "2": torch.nn.Linear(6, 3)})

    def run(m, x):
        a = torch.tanh(m["0"](x))
        return m["2"](a + torch.tanh(m["0"](a)))
    _compare(model, module, run, RNG.standard_normal((5, 6)).astype(np.float32))


def test_siamese_shared_conv_on_two_inputs():
    a, b = nn.Input((2, 6, 6)), nn.Input((2, 6, 6))
    conv = nn.Conv2D(2, 3, 3, padding=1, activation="relu")
    pool = nn.GlobalAvgPool2D()
    out = nn.Dense(6, 1)(nn.Concatenate()([pool(conv(a)), pool(conv(b))]))
    model = nn.Model([a, b], out)
    module = torch.nn.ModuleDict({"0": torch.nn.Conv2d(2, 3, 3, padding=1), "3": torch.nn.Linear(6, 1)})

    def run(m, xa, xb):
        def f(x):
            return F.relu(m["0"](x)).mean(dim=(2, 3))
        return m["3"](torch.cat([f(xa), f(xb)], dim=1))
    _compare(model, module, run, [RNG.standard_normal((3, 2, 6, 6)).astype(np.float32) for _ in range(2)])


def _two_in_two_out(dtype="float32"):
    xa, xb = nn.Input((5,), name="a"), nn.Input((4,), name="b")
    ha = nn.Dense(5, 6, activation="relu")(xa)
    hb = nn.Dense(4, 6, activation="sigmoid")(xb)
    c = nn.Concatenate(axis=1)([ha, hb])
    m = nn.Multiply()([ha, hb])
    y1 = nn.Dense(12, 3, name="cls")(c)
    y2 = nn.Dense(6, 2, name="reg")(m)
    return nn.Model(inputs=[xa, xb], outputs=[y1, y2], dtype=dtype)


def test_two_inputs_two_outputs_with_concatenate_and_multiply():
    model = _two_in_two_out()
    assert model.layer_keys == ["0", "1", "2", "3", "cls", "reg"]
    assert "cls.weight" in model.state_dict() and "reg.bias" in model.state_dict()
    module = torch.nn.ModuleDict({"0": torch.nn.Linear(5, 6), "1": torch.nn.Linear(4, 6),
                                  "cls": torch.nn.Linear(12, 3), "reg": torch.nn.Linear(6, 2)})

    def run(m, xa, xb):
        ha, hb = F.relu(m["0"](xa)), torch.sigmoid(m["1"](xb))
        return m["cls"](torch.cat([ha, hb], dim=1)), m["reg"](ha * hb)
    xs = [RNG.standard_normal((7, 5)).astype(np.float32), RNG.standard_normal((7, 4)).astype(np.float32)]
    _compare(model, module, run, xs)


def test_concatenate_on_a_later_axis_and_three_way_add():
    inp = nn.Input((2, 3, 4))
    a, b = nn.Conv2D(2, 2, 1)(inp), nn.Conv2D(2, 3, 1)(inp)
    c = nn.Concatenate(axis=-1)([a, nn.Conv2D(2, 2, 1)(inp)])        # (2, 3, 8)
    s = nn.Add()([a, a, nn.Conv2D(2, 2, 1)(inp)])
    bb = nn.Concatenate(axis=-1)([b, b])
    out = nn.Concatenate(axis=1)([c, nn.Concatenate(axis=3)([s, s]), bb])   # (7, 3, 8)
    model = nn.Model(inp, out)
    assert model.output_shape == (7, 3, 8)
    module = torch.nn.ModuleDict({k: torch.nn.Conv2d(2, n, 1) for k, n in
                                  (("0", 2), ("1", 3), ("2", 2), ("4", 2))})

    def run(m, x):
        a, b = m["0"](x), m["1"](x)
        s = a + a + m["4"](x)
        left = torch.cat([a, m["2"](x)], dim=-1)
        return torch.cat([left, torch.cat([s, s], dim=3), torch.cat([b, b], -1)], 1)
    _compare(model, module, run, RNG.standard_normal((3, 2, 3, 4)).astype(np.float32))


class _TorchResidual(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


def test_residual_inside_sequential_matches_torch():
    block = nn.Sequential(nn.Dense(8, 8), nn.ReLU(), nn.Dense(8, 8))
    model = nn.Sequential(nn.Dense(6, 8), nn.Residual(block), nn.Dense(8, 3))
    model.build((6,))
    assert "1.block.0.weight" in model.state_dict()
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), _TorchResidual(torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))), torch.nn.Linear(8, 3))
    model._multi_out = False
    _compare(model, module, lambda m, x: m(x), RNG.standard_normal((4, 6)).astype(np.float32))


def test_numerical_gradients_of_a_small_graph_in_float64():
    inp = nn.Input((4,))
    shared = nn.Dense(4, 4, activation="tanh")
    h = shared(inp)
    r = nn.Residual(nn.Dense(4, 4, activation="sigmoid"))(h)
    m = nn.Multiply()([shared(r), h])
    out = nn.Dense(8, 3)(nn.Concatenate()([m, r]))
    model = nn.Model(inp, out, dtype="float64")
    check_gradients(model, RNG.standard_normal((3, 4)))


def test_train_step_skips_what_leads_to_no_parameter():
    inp = nn.Input((6,))
    relu = nn.ReLU()
    out = nn.Dense(6, 2)(nn.Add()([relu(inp), nn.Dense(6, 6)(inp)]))
    model = nn.Model(inp, out)
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    y = model.forward(x)
    model.zero_grad()
    dx = model.backward(np.ones_like(y))
    full = model.flat_grads.copy()
    assert dx.shape == x.shape
    calls = []
    relu.backward = lambda dy: calls.append(dy)    # must not run: nothing upstream of it learns
    model.zero_grad()
    model.forward(x)
    assert model.backward(np.ones_like(y), input_grad=False) is None
    np.testing.assert_array_equal(model.flat_grads, full)
    assert not calls
    assert model.layers[1].needs_input_grad          # only switched off during that backward


# ----------------------------------------------------------------- training, files, backends
def test_fit_evaluate_predict_with_two_inputs_and_two_outputs():
    model = _two_in_two_out()
    model.compile(optimizer=nn.Adam(1e-2), loss=[nn.CrossEntropyLoss(), nn.MSELoss()],
                  loss_weights=[1.0, 0.5], metrics=["accuracy"])
    n = 64
    xa, xb = RNG.standard_normal((n, 5)).astype(np.float32), RNG.standard_normal((n, 4)).astype(np.float32)
    y1, y2 = (xa[:, 0] > 0).astype(np.int64), np.stack([xb[:, 0], xa[:, 1]], 1).astype(np.float32)
    before = model.evaluate([xa, xb], [y1, y2])
    assert set(before) == {"loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_accuracy"}
    assert before["loss"] == pytest.approx(before["cls_loss"] + 0.5 * before["reg_loss"], rel=1e-5)
    hist = model.fit([xa, xb], [y1, y2], epochs=5, batch_size=16, verbose=0, validation_split=0.25)
    assert "val_cls_loss" in hist.history and len(hist.history["loss"]) == 5
    after = model.evaluate([xa, xb], [y1, y2])
    assert after["loss"] < before["loss"]
    p1, p2 = model.predict([xa, xb], batch_size=10)
    assert p1.shape == (n, 3) and p2.shape == (n, 2)
    np.testing.assert_allclose(p1, model.forward([xa, xb], training=False)[0], rtol=1e-6)


def test_per_output_metrics_by_name_and_a_single_loss_for_every_output():
    model = _two_in_two_out()
    model.compile(loss={"cls": "cross_entropy", "reg": "mse"}, metrics={"cls": ["accuracy"]})
    assert list(model.metric_fns) == ["cls_accuracy"]
    model.compile(loss="mse", metrics=["cls_accuracy"])
    assert [type(loss).__name__ for loss in model.loss.losses] == ["MSELoss", "MSELoss"]
    assert list(model.metric_fns) == ["cls_accuracy"]


def test_save_and_load_round_trip_of_a_graph(tmp_path):
    model = _two_in_two_out()
    model.compile(optimizer=nn.Adam(1e-2), loss=["cross_entropy", "mse"], loss_weights=[1.0, 0.25],
                  metrics=["accuracy"])
    xa, xb = RNG.standard_normal((16, 5)).astype(np.float32), RNG.standard_normal((16, 4)).astype(np.float32)
    y = [RNG.integers(0, 3, 16), RNG.standard_normal((16, 2)).astype(np.float32)]
    model.fit([xa, xb], y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "g.nnet")
    loaded = nn.load(tmp_path / "g.nnet")
    assert isinstance(loaded, nn.Model) and loaded.layer_keys == model.layer_keys
    for a, b in zip(model.predict([xa, xb]), loaded.predict([xa, xb]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.loss.weights == [1.0, 0.25] and list(loaded.metric_fns) == list(model.metric_fns)
    model.train_step([xa, xb], y)
    loaded.train_step([xa, xb], y)        # optimizer state came back too: the same next step
    np.testing.assert_allclose(loaded.flat_params, model.flat_params, rtol=1e-6, atol=1e-7)


def test_save_and_load_residual_cnn_and_residual_in_sequential(tmp_path):
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    model = _residual_cnn()
    model.forward(x)                      # move the BatchNorm running statistics
    model.save(tmp_path / "r.nnet")
    np.testing.assert_array_equal(nn.load(tmp_path / "r.nnet").predict(x), model.predict(x))
    seq = nn.Sequential(nn.Dense(4, 4), nn.Residual(nn.Sequential(nn.Dense(4, 4, activation="relu"))))
    seq.build((4,))
    seq.save(tmp_path / "s.nnet")
    xs = RNG.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(nn.load(tmp_path / "s.nnet").predict(xs), seq.predict(xs))


def test_nested_model_as_a_layer():
    inner_in = nn.Input((4,))
    inner = nn.Model(inner_in, nn.Dense(4, 4, activation="relu")(inner_in))
    inp = nn.Input((4,))
    model = nn.Model(inp, nn.Dense(4, 2)(nn.Add()([inner(inp), inp])))
    assert "0.0.weight" in model.state_dict()
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    w, b = model.state_dict()["0.0.weight"], model.state_dict()["0.0.bias"]
    h = np.maximum(x @ w.T + b, 0) + x
    np.testing.assert_allclose(model.predict(x), h @ model.state_dict()["2.weight"].T
                               + model.state_dict()["2.bias"], rtol=1e-5, atol=1e-6)


def test_torch_backend_gives_the_same_values_and_trains():
    model = _two_in_two_out()
    xs = [RNG.standard_normal((6, 5)).astype(np.float32), RNG.standard_normal((6, 4)).astype(np.float32)]
    want = model.predict(xs)
    model.to("torch")
    for a, b in zip(want, model.predict(xs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    model.compile(optimizer="sgd", loss=["cross_entropy", "mse"])
    y = [np.arange(6) % 3, np.zeros((6, 2), np.float32)]
    first = model.train_step(xs, y)
    assert model.train_step(xs, y) < first
    shared = nn.Input((3,))
    d = nn.Dense(3, 3)
    m2 = nn.Model(shared, d(d(shared)))
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    want = m2.predict(x)
    np.testing.assert_allclose(m2.to("torch").predict(x), want, rtol=1e-5, atol=1e-6)


def test_graph_train_step_allocates_nothing():
    model = _residual_cnn()
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss())
    x = RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)
    y = RNG.integers(0, 5, 16)
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_two_output_shared_layer_train_step_allocates_nothing():
    inp = nn.Input((8,))
    d = nn.Dense(8, 8, activation="relu")
    h = d(d(inp))
    model = nn.Model(inp, [nn.Dense(8, 3)(h), nn.Dense(16, 1)(nn.Concatenate()([h, inp]))])
    model.compile(optimizer=nn.SGD(1e-2, momentum=0.9), loss=["cross_entropy", "mse"], loss_weights=[1, 2])
    x = RNG.standard_normal((32, 8)).astype(np.float32)
    y = [RNG.integers(0, 3, 32), RNG.standard_normal((32, 1)).astype(np.float32)]
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_summary_has_connected_to_column():
    model = _two_in_two_out()
    text = model.summary(print_fn=None)
    assert "Connected to" in text and "a (Input)" in text
    assert "cls (Dense)" in text and "2[0]" in text.splitlines()[-6] or "2[0]" in text
    line = next(row for row in text.splitlines() if row.startswith("3 (Multiply)"))
    assert line.endswith("0[0], 1[0]")


# ----------------------------------------------------------------- errors
def test_merging_mismatched_shapes_fails_at_build_time():
    a, b = nn.Input((4,)), nn.Input((5,))
    with pytest.raises(ShapeError, match=r"Add.*\(N, 4\), \(N, 5\)"):
        nn.Add()([a, b])
    with pytest.raises(ShapeError, match="Concatenate.*except along axis 1"):
        nn.Concatenate()([nn.Input((2, 3)), nn.Input((3, 4))])
    with pytest.raises(ShapeError, match="list of at least two"):
        nn.Add()(a)


def test_outputs_must_depend_on_the_declared_inputs():
    a, b = nn.Input((4,), name="a"), nn.Input((4,), name="b")
    y = nn.Dense(4, 2)(a)
    with pytest.raises(ShapeError, match="input 1 .*b"):
        nn.Model([a, b], y)
    with pytest.raises(ShapeError, match="depends on the input b"):
        nn.Model(a, nn.Add()([y, nn.Dense(4, 2)(b)]))


def test_wrong_number_of_inputs_and_wrong_shapes():
    model = _two_in_two_out()
    x = np.zeros((2, 5), np.float32)
    with pytest.raises(ShapeError, match="list of 2 inputs"):
        model.forward(x)
    with pytest.raises(ShapeError, match="x must be a list of 2"):
        model.compile(loss=["cross_entropy", "mse"]).fit([x], [np.zeros(2), np.zeros((2, 2))], verbose=0)
    with pytest.raises(ShapeError, match=r"input 1 \(b\) expects \(N, 4\)"):
        model.forward([x, x])
    with pytest.raises(ShapeError, match="Dense.*expected input of shape"):
        nn.Dense(6, 2)(nn.Input((5,)))
    shared = nn.Dense(4, 4)
    shared(nn.Input((4,)))
    with pytest.raises(ShapeError, match=r"built for input \(N, 4\) and is called again on \(N, 3, 4\)"):
        shared(nn.Input((3, 4)))
    with pytest.raises(ShapeError, match="keep the shape"):
        nn.Residual(nn.Dense(4, 3))(nn.Input((4,)))


# ----------------------------------------------------------------- interop
def _onnx_run(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("build", [_residual_cnn, _fused_residual_cnn], ids=["relu_layers", "fused_relus"])
def test_onnx_round_trip_of_a_residual_cnn(build, tmp_path):
    model = build()
    x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
    model.forward(x)                                   # BatchNorm running statistics away from 0/1
    nn.export_onnx(model, tmp_path / "r.onnx", (3, 8, 8))
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "r.onnx")).graph.node}
    assert {"Add", "Conv", "Relu"} <= ops
    (got,) = _onnx_run(tmp_path / "r.onnx", {"input": x})
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-4, atol=1e-5)


def test_onnx_round_trip_of_two_inputs_two_outputs_and_residual_in_sequential(tmp_path):
    model = _two_in_two_out()
    xs = [RNG.standard_normal((4, 5)).astype(np.float32), RNG.standard_normal((4, 4)).astype(np.float32)]
    nn.export_onnx(model, tmp_path / "g.onnx")
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "g.onnx")).graph.node}
    assert {"Concat", "Mul"} <= ops
    got = _onnx_run(tmp_path / "g.onnx", {"input_0": xs[0], "input_1": xs[1]})
    for a, b in zip(got, model.predict(xs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    seq = nn.Sequential(nn.Dense(4, 4), nn.Residual(nn.Dense(4, 4, activation="tanh")))
    nn.export_onnx(seq, tmp_path / "s.onnx", (4,))
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(_onnx_run(tmp_path / "s.onnx", {"input": x})[0], seq.predict(x), rtol=1e-5,
                               atol=1e-6)


def test_gguf_round_trip_and_torch_state_dict(tmp_path):
    model = _residual_cnn()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    nn.export_gguf(model, tmp_path / "r.gguf")
    np.testing.assert_allclose(nn.load_gguf(tmp_path / "r.gguf").predict(x), model.predict(x), rtol=1e-6)
    two = _two_in_two_out()
    nn.export_gguf(two, tmp_path / "g.gguf")
    assert nn.load_gguf(tmp_path / "g.gguf").layer_keys == two.layer_keys
    module, run = _torch_residual_cnn()
    module.load_state_dict(nn.to_torch_state_dict(model), strict=True)
    module.eval()
    with torch.no_grad():
        np.testing.assert_allclose(run(module, torch.tensor(x)).numpy(), model.predict(x), rtol=1e-4,
                                   atol=1e-5)


# ----------------------------------------------------------------- cross-attention
def _cross_attention_model(dropout=0.0):
    q, kv = nn.Input((5, 8), name="query"), nn.Input((7, 8), name="memory")
    return nn.Model([q, kv], nn.MultiHeadAttention(8, 2, dropout=dropout)([q, kv]))


@pytest.mark.parametrize("blocks", ["one", "per sample"])
def test_cross_attention_matches_torch_multihead_attention(blocks, request):
    if blocks == "per sample":  # the NumPy backend runs each sample's attention on its own thread
        request.getfixturevalue("rows_on_threads")
    model = _cross_attention_model()
    module = torch.nn.ModuleDict({"0": torch.nn.MultiheadAttention(8, 2, batch_first=True)})
    xs = [RNG.standard_normal(s).astype(np.float32) for s in ((3, 5, 8), (3, 7, 8))]
    _compare(model, module, lambda m, q, kv: m["0"](q, kv, kv, need_weights=False)[0], xs)


def test_cross_attention_in_a_decoder_graph_trains_on_both_backends(backend):
    src, tgt = nn.Input((6, 8)), nn.Input((4, 8))
    memory = nn.MultiHeadAttention(8, 2)(src)                       # self-attention over the source
    h = nn.Add()([tgt, nn.MultiHeadAttention(8, 2)([tgt, memory])])  # cross-attention to it
    model = nn.Model([src, tgt], nn.Dense(8, 3)(nn.MeanPooling()(h))).to(backend)
    model.compile(optimizer=nn.Adam(1e-2), loss="cross_entropy")
    xs = [RNG.standard_normal(s).astype(np.float32) for s in ((8, 6, 8), (8, 4, 8))]
    y = RNG.integers(0, 3, 8)
    first = model.train_step(xs, y)
    for _ in range(5):
        last = model.train_step(xs, y)
    assert last < first


def test_cross_attention_rejects_mismatched_embedding_sizes():
    with pytest.raises(ShapeError, match=r"key_value of shape \(N, T, 8\).*got \(N, 7, 6\)"):
        nn.MultiHeadAttention(8, 2)([nn.Input((5, 8)), nn.Input((7, 6))])
    with pytest.raises(ValueError, match="neither causal nor rope"):
        nn.MultiHeadAttention(8, 2, causal=True)([nn.Input((5, 8)), nn.Input((7, 8))])


def test_a_hostile_graph_in_a_file_is_a_format_error(tmp_path):
    import json

    from safetensors.numpy import save_file

    from neuronet.io.nnet import read

    model = _two_in_two_out()
    model.save(tmp_path / "g.nnet")
    meta, tensors = read(tmp_path / "g.nnet")
    for corrupt, message in ((lambda g: g["nodes"][0].update(inputs=[99]), "must name a layer and earlier"),
                             (lambda g: g["nodes"][2].update(layer=-1), "must name a layer"),
                             (lambda g: g.update(outputs=["x"]), "outputs must be tensor ids"),
                             (lambda g: g["inputs"][0].update(shape=[3]), "Dense")):
        bad = json.loads(json.dumps(meta))
        corrupt(bad["architecture"]["graph"])
        save_file(dict(tensors), tmp_path / "bad.nnet", metadata={"format": "neuronet",
                                                                  "neuronet": json.dumps(bad)})
        with pytest.raises(nn.errors.NnetFormatError, match=message):
            nn.load(tmp_path / "bad.nnet")


def test_a_sequential_is_a_node_and_a_model_takes_a_name():
    inp = nn.Input((4,))
    stack = nn.Sequential(nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 4))
    model = nn.Model(inp, nn.Dense(4, 2)(nn.Add()([inp, stack(inp)])), name="encoder")
    assert model.layer_name == "encoder" and "0.2.weight" in model.state_dict()
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    module = torch.nn.ModuleDict({"0": twin, "2": torch.nn.Linear(4, 2)})
    _compare(model, module, lambda m, x: m["2"](x + m["0"](x)), x)


def test_callbacks_see_per_output_logs_and_checkpoint_a_graph(tmp_path):
    model = _two_in_two_out()
    model.compile(optimizer=nn.Adam(1e-2), loss=["cross_entropy", "mse"], metrics=["accuracy"])
    xs = [RNG.standard_normal((32, 5)).astype(np.float32), RNG.standard_normal((32, 4)).astype(np.float32)]
    ys = [RNG.integers(0, 3, 32), RNG.standard_normal((32, 2)).astype(np.float32)]
    path = tmp_path / "best.nnet"
    hist = model.fit(xs, ys, epochs=3, batch_size=8, verbose=0, validation_data=(xs, ys),
                     callbacks=[nn.ModelCheckpoint(path, monitor="val_cls_loss", save_best_only=True),
                                nn.EarlyStopping(patience=5, monitor="val_reg_loss")])
    assert {"cls_accuracy", "val_reg_loss", "val_cls_accuracy"} <= set(hist.history)
    best = nn.load(path)
    assert isinstance(best, nn.Model) and best.output_names == ["cls", "reg"]


def test_freezing_in_a_graph_equals_requires_grad_false():
    """A frozen shared layer: its weights stay, the rest steps as torch with requires_grad=False."""
    import torch

    rng = np.random.default_rng(3)
    inp = nn.Input((6,))
    shared = nn.Dense(6, 6, activation="tanh")
    h = shared(inp)
    out = nn.Dense(6, 2)(nn.Add()([h, shared(h)]))
    model = nn.Model(inp, out)
    model.compile(optimizer=nn.Adam(1e-2), loss="mse")
    model.build((6,))
    shared.trainable = False
    t_shared, t_head = torch.nn.Linear(6, 6), torch.nn.Linear(6, 2)
    with torch.no_grad():
        for mod, key in ((t_shared, "0"), (t_head, "2")):
            mod.weight.copy_(torch.tensor(model.state_dict()[f"{key}.weight"]))
            mod.bias.copy_(torch.tensor(model.state_dict()[f"{key}.bias"]))
    t_shared.requires_grad_(False)
    opt = torch.optim.Adam(t_head.parameters(), lr=1e-2)
    frozen = model.state_dict()["0.weight"]
    ready = []
    model.grad_ready = ready.append
    x, y = rng.standard_normal((16, 6)).astype("float32"), rng.standard_normal((16, 2)).astype("float32")
    for _ in range(3):
        model.train_step(x, y)
        xt = torch.tensor(x)
        h_t = torch.tanh(t_shared(xt))
        loss = torch.nn.functional.mse_loss(t_head(h_t + torch.tanh(t_shared(h_t))), torch.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()
    np.testing.assert_array_equal(state["0.weight"], frozen)
    np.testing.assert_allclose(state["2.weight"], t_head.weight.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert model.num_trainable_params() == 6 * 2 + 2
    # backward visits only the head (nothing trainable lies below it): reported once per step
    assert ready == [model.layers[2]] * 3
