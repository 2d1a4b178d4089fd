import math

import numpy as np
import pytest
import torch

import neuronet as nn


def _mlp(dtype="float32"):
    return nn.Sequential(nn.Dense(6, 8, activation="relu"), nn.Dropout(0.1),
                         nn.Dense(8, 5, activation="tanh"), nn.Dense(5, 3, bias=False), dtype=dtype)


def _torch_mlp():
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 3, bias=False))


# ----------------------------------------------------------------- flat buffers
def test_every_param_and_grad_is_a_view_of_the_flat_arrays():
    model = _mlp()
    model.build((6,))
    assert model.params is not None
    flat_p, flat_g = model.flat_params, model.flat_grads
    assert flat_p.ndim == 1 and flat_p.flags.c_contiguous and flat_p.shape == flat_g.shape
    sizes = 0
    for name, p in model.named_parameters():
        g = model.grads[name]
        assert np.shares_memory(p, flat_p) and np.shares_memory(g, flat_g), name
        assert p.shape == g.shape
        # same offset in both arrays
        assert (p.__array_interface__["data"][0] - flat_p.__array_interface__["data"][0]
                == g.__array_interface__["data"][0] - flat_g.__array_interface__["data"][0]), name
        sizes += p.size
    assert sizes == flat_p.size == model.num_params() == 6 * 8 + 8 + 8 * 5 + 5 + 5 * 3
    # layers see the same views
    np.testing.assert_array_equal(model[0].params["weight"], model.params["0.weight"])
    model.flat_params[:] = 7.0
    assert np.all(model[3].params["weight"] == 7.0)
    model.flat_grads[:] = 1.0
    model.zero_grad()
    assert not model[2].grads["weight"].any()


def test_views_do_not_overlap_and_cover_the_buffer():
    model = _mlp()
    model.build((6,))
    flat = model.flat_params
    cover = np.zeros(flat.size, int)
    base = flat.__array_interface__["data"][0]
    for _, p in model.named_parameters():
        start = (p.__array_interface__["data"][0] - base) // flat.itemsize
        cover[start:start + p.size] += 1
    assert np.all(cover == 1)


def test_backward_accumulates_into_the_flat_grads_and_train_step_zeroes_first():
    model = nn.Sequential(nn.Dense(3, 2))
    model.compile(nn.SGD(0.0), nn.MSELoss())
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    model.train_step(x, y)
    once = model.flat_grads.copy()
    model.train_step(x, y)
    np.testing.assert_allclose(model.flat_grads, once)  # zeroed, not accumulated (lr = 0: same weights)
    model.backward(model.loss.backward())
    np.testing.assert_allclose(model.flat_grads, 2 * once)


# ----------------------------------------------------------------- names and state
def test_named_parameters_equal_torch_sequential():
    model = nn.Sequential(nn.Dense(6, 8, activation="relu"), nn.Dense(8, 5), nn.Tanh(),
                          nn.Dense(5, 3, bias=False))
    model.build((6,))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 3, bias=False))
    ours = [(k, tuple(v.shape)) for k, v in model.named_parameters()]
    theirs = [(k, tuple(v.shape)) for k, v in ref.named_parameters()]
    assert ours == theirs
    assert list(model.state_dict()) == list(ref.state_dict())


def test_load_torch_state_dict_reproduces_torch_outputs():
    ref = _torch_mlp().double()
    model = nn.Sequential(nn.Dense(6, 8, activation="relu"), nn.Dense(8, 5, activation="tanh"),
                          nn.Dense(5, 3, bias=False), dtype="float64")
    model.build((6,))
    state = {k.replace("2.", "1.", 1).replace("4.", "2.", 1): v for k, v in ref.state_dict().items()}
    model.load_state_dict(state)  # torch tensors accepted
    x = np.random.default_rng(0).standard_normal((7, 6))
    np.testing.assert_allclose(model.predict(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-12)


def test_state_dict_round_trip_with_numpy_and_torch():
    a, b = _mlp(), _mlp()
    a.build((6,))
    nn.manual_seed(123)
    b.build((6,))
    assert not np.array_equal(a.flat_params, b.flat_params)
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    state["0.weight"][:] = 0.0  # a copy: editing it leaves the model alone
    assert a.params["0.weight"].any()
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    c = _mlp()
    c.build((6,))
    c.load_state_dict({k: torch.from_numpy(v) for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(a.flat_params, c.flat_params)
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x), c.predict(x))


def test_strict_load_names_missing_unexpected_and_misshaped_keys():
    model = _mlp()
    model.build((6,))
    good = model.state_dict()
    before = model.flat_params.copy()
    missing = {k: v for k, v in good.items() if k != "2.bias"}
    with pytest.raises(KeyError, match=r"missing keys \['2.bias'\]"):
        model.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected keys \['9.weight'\]"):
        model.load_state_dict({**good, "9.weight": np.zeros(3)})
    bad = {**good, "0.weight": np.zeros((8, 7)), "3.weight": np.zeros((3, 4))}
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(8, 7\), the model expects \(8, 6\).*"
                                         r"'3.weight' has shape \(3, 4\), the model expects \(3, 5\)"):
        model.load_state_dict(bad)
    np.testing.assert_array_equal(model.flat_params, before)  # nothing copied on error
    model.load_state_dict(missing, strict=False)  # non-strict: copies what is there
    with pytest.raises(ValueError, match="0.weight"):
        model.load_state_dict({"0.weight": np.zeros((1, 1))}, strict=False)


def test_params_before_build_is_a_clear_error():
    with pytest.raises(RuntimeError, match="build"):
        _mlp().state_dict()
    with pytest.raises(RuntimeError, match="build"):
        list(_mlp().named_parameters())


# ----------------------------------------------------------------- build, predict, dtype
def test_lazy_build_from_the_first_batch():
    model = nn.Sequential(nn.Flatten(), nn.Dense(12, 4))
    assert not model.built
    y = model.forward(np.zeros((2, 3, 4), np.float32))
    assert model.built and model.input_shape == (3, 4) and model.output_shape == (4,) and y.shape == (2, 4)
    assert model.flat_params.size == 12 * 4 + 4


def test_predict_on_a_never_compiled_model():
    model = nn.Sequential(nn.Dense(3, 2, activation="softmax"))
    x = np.random.default_rng(2).standard_normal((10, 3))
    p = model.predict(x, batch_size=4)
    assert p.shape == (10, 2) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p, model.forward(x.astype(np.float32), training=False), rtol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_predict_reads_the_callers_rows_without_copying_them(backend):
    """Inference batches in order are views of a C-contiguous x (a copy of each batch was 4 bytes per
    input value a call); other layouts still give the same predictions."""
    from neuronet.testing import step_allocations

    model = nn.Sequential(nn.Dense(64, 8, activation="relu"), nn.Dense(8, 3)).to(backend)
    model.build((64,))
    x = np.random.default_rng(4).standard_normal((512, 64)).astype(np.float32)
    _, peak = step_allocations(lambda: model.predict(x, batch_size=256), steps=3)
    assert peak < x.nbytes // 4, peak  # one batch's copy would be 64 KiB
    want = model.predict(x, batch_size=256)
    for other, batch in ((np.asfortranarray(x), 256), (x[::-1].copy()[::-1], 100)):
        np.testing.assert_allclose(model.predict(other, batch_size=batch), want, rtol=1e-5, atol=1e-6)


def test_float64_model_runs_in_float64():
    model = _mlp(dtype="float64")
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    y = model.forward(x)
    assert model.flat_params.dtype == np.float64 and model.flat_grads.dtype == np.float64
    assert y.dtype == np.float64 and all(p.dtype == np.float64 for _, p in model.named_parameters())
    model.compile(nn.SGD(0.1), nn.CrossEntropyLoss())
    loss = model.train_step(x, np.array([0, 1, 2, 0]))
    assert isinstance(loss, float) and math.isfinite(loss)


def test_summary_lists_layers_shapes_and_counts():
    model = _mlp()
    model.build((6,))
    text = model.summary(print_fn=None)
    for needle in ["Dense(6, 8, activation='relu')", "(None, 8)", "Dropout(p=0.1)", "(None, 3)", "56", "45",
                   "15", f"Total params: {model.num_params():,}"]:
        assert needle in text, needle


def test_summary_keeps_a_nested_layer_on_one_line():
    model = nn.Sequential(nn.Dense(4, 8), nn.Remat(nn.Sequential(nn.Dense(8, 8), nn.ReLU())),
                          nn.Residual(nn.Sequential(*[nn.Dense(8, 8) for _ in range(8)])))
    model.build((4,))
    rows = model.summary(print_fn=None).splitlines()
    assert "1: Remat(Sequential(Dense(8, 8), ReLU()))" in rows[4]
    assert rows[5].startswith("2: Residual(Sequential(Dense(8, 8), Dense(8, 8),") and "..." in rows[5]
    assert {len(row) for row in rows[:7]} == {len(rows[0])}  # every row of the table as wide as its rules
    assert len(rows) == 12


def test_sequential_rejects_non_layers_and_late_add():
    with pytest.raises(TypeError, match="item 1 is a int"):
        nn.Sequential(nn.Dense(2, 2), 3)
    model = nn.Sequential(nn.Dense(2, 2))
    model.add(nn.ReLU())
    model.build((2,))
    with pytest.raises(RuntimeError, match="already built"):
        model.add(nn.ReLU())


def test_to_torch_and_back_keeps_the_weights():
    model = _mlp()
    model.build((6,))
    x = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
    want = model.predict(x)
    model.to("torch")
    assert isinstance(model.flat_params, torch.Tensor) and isinstance(model.params["0.weight"], torch.Tensor)
    assert model.params["0.weight"].data_ptr() != 0
    np.testing.assert_allclose(model.predict(x), want, atol=1e-6)
    model.to("numpy")
    np.testing.assert_allclose(model.predict(x), want, atol=1e-6)
    assert np.shares_memory(model.params["2.weight"], model.flat_params)


def test_train_step_skips_the_unused_input_gradient_only():
    model = nn.Sequential(nn.Flatten(), nn.Dense(6, 4, activation="relu"), nn.Dense(4, 2))
    x = np.random.default_rng(5).standard_normal((3, 2, 3)).astype(np.float32)
    y = model.forward(x)
    dy = np.ones_like(y)
    model.zero_grad()
    dx = model.backward(dy)
    assert dx.shape == x.shape
    full = model.flat_grads.copy()
    model.zero_grad()
    model.forward(x)
    assert model.backward(dy, input_grad=False) is None
    np.testing.assert_array_equal(model.flat_grads, full)  # the same parameter gradients
    assert model[1].needs_input_grad  # the flag is only set during that backward
    outer = nn.Sequential(nn.Sequential(nn.Dense(6, 3)), nn.Dense(3, 1))  # nested first model
    outer.forward(x.reshape(3, 6))
    assert outer.backward(np.ones((3, 1), np.float32), input_grad=False) is None


def test_backward_restores_the_previous_input_grad_setting():
    """A container switches its bottom layer's ``needs_input_grad`` off for one backward and then back
    to what it was, not to True: a setting made by the layer's owner survives."""
    model = nn.Sequential(nn.Dense(6, 4), nn.Dense(4, 2))
    x = np.random.default_rng(6).standard_normal((3, 6)).astype(np.float32)
    model.forward(x)
    model[0].needs_input_grad = False  # as an enclosing model would for its own first layer
    model.backward(np.ones((3, 2), np.float32), input_grad=False)
    assert model[0].needs_input_grad is False
    with model[1].input_grad_needed(False) as layer:
        assert layer.needs_input_grad is False
    assert model[1].needs_input_grad is True
