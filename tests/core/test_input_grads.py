"""Shared dL/dx buffers: inside Sequential and TransformerBlock a layer's input gradient comes from one of
two temporaries per nesting level (``Layer.input_grad_buffer``), inside a functional Model from a
temporary that no waiting gradient is in, instead of its own workspace. The gradients must be exactly
those of per-layer workspaces, through pass-through layers (Flatten, Dropout with p = 0, Add), nested
containers, residual branches, interleaved branches, a shared layer and several inputs and outputs."""

import numpy as np
import pytest

import neuronet as nn
from neuronet.testing import assert_step_allocates_nothing


def _models():
    return {
        "cnn with flatten": (lambda: nn.Sequential(
            nn.Conv2D(2, 4, 3, padding=1, activation="relu"), nn.MaxPool2D(2), nn.Flatten(), nn.Dropout(0.0),
            nn.Dense(36, 8, activation="tanh"), nn.Flatten(), nn.Dense(8, 3)), (2, 6, 6)),
        "nested and residual": (lambda: nn.Sequential(
            nn.Dense(5, 6), nn.Sequential(nn.Dense(6, 6, activation="gelu"), nn.LayerNorm(6), nn.Dense(6, 6)),
            nn.Residual(nn.Sequential(nn.Dense(6, 6, activation="relu"), nn.Dense(6, 6))), nn.Dense(6, 3)),
                                (5,)),
        "functional resnet": (_resnet, (2, 6, 6)),
        "functional branches": (_branches, [(5,), (4,)]),
        "parallel chains": (_parallel_chains, (5,)),
        "model in sequential": (lambda: nn.Sequential(
            nn.Dense(5, 6), _residual_model(6), nn.Flatten(), _residual_model(6), nn.Dense(6, 3)), (5,)),
        "transformer": (lambda: nn.Sequential(
            nn.Embedding(11, 8), nn.TransformerBlock(8, 2, 16, causal=True),
            nn.TransformerBlock(8, 2, 16, causal=True), nn.LayerNorm(8), nn.Dense(8, 11)), (7,)),
    }


def _resnet():
    """Stem, two residual blocks (conv-BN-ReLU-conv-BN + skip, ReLU), pooling, head: Add passes dy on."""
    def block(h):
        b = nn.ReLU()(nn.BatchNorm2D(3)(nn.Conv2D(3, 3, 3, padding=1, bias=False)(h)))
        b = nn.BatchNorm2D(3)(nn.Conv2D(3, 3, 3, padding=1, bias=False)(b))
        return nn.ReLU()(nn.Add()([h, b]))
    inp = nn.Input((2, 6, 6))
    h = block(block(nn.ReLU()(nn.Conv2D(2, 3, 3, padding=1)(inp))))
    return nn.Model(inp, nn.Dense(3, 4)(nn.GlobalAvgPool2D()(h)))


def _branches():
    """Two inputs, a layer used twice, a concatenation, an input added straight to a hidden tensor (its
    gradient passes through Add to the model's input) and two outputs."""
    a, b = nn.Input((5,)), nn.Input((4,))
    shared = nn.Dense(6, 6, activation="tanh")
    ha = nn.Dense(5, 6, activation="gelu")(a)
    hb = nn.Dense(4, 6)(b)
    left = shared(nn.LayerNorm(6)(ha))
    right = shared(hb)
    both = nn.Concatenate()([left, nn.Multiply()([right, ha])])
    out1 = nn.Dense(12, 3)(nn.Dense(12, 12, activation="relu")(both))
    out2 = nn.Dense(5, 2)(nn.Add()([a, nn.Dense(6, 5)(right)]))
    return nn.Model([a, b], [out1, out2])


def _parallel_chains():
    """Two chains of three layers joined by Add: Add passes its dy to both chain ends, and one end's
    gradient waits in that temporary while the other chain runs backward."""
    x = nn.Input((5,))
    h = nn.Dense(5, 6)(x)
    chains = []
    for act in ("tanh", "relu"):
        c = h
        for _ in range(3):
            c = nn.Dense(6, 6, activation=act)(c)
        chains.append(c)
    return nn.Model(x, nn.Dense(6, 3)(nn.Add()(chains)))


def _residual_model(width):
    x = nn.Input((width,))
    return nn.Model(x, nn.Add()([x, nn.Dense(width, width)(nn.Dense(width, width, activation="relu")(x))]))


def _unshared(model):
    for _, layer in model.named_layers():
        layer.__dict__.pop("_grad_slots", None)
        layer.__dict__.pop("_slot_depth", None)
    return model


def _input(name, shape, rng):
    if isinstance(shape, list):
        return [rng.standard_normal((3, *s)) for s in shape]
    return rng.integers(0, 11, (3, *shape)) if name == "transformer" else rng.standard_normal((3, *shape))


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _each(f, value):
    """f of each array of a list, or of the one array."""
    return [f(v) for v in value] if isinstance(value, list) else f(value)


def _dy(y, rng):
    if isinstance(y, list):
        return [rng.standard_normal(yi.shape) for yi in y]
    return rng.standard_normal(y.shape)


@pytest.mark.parametrize("name", list(_models()))
def test_shared_input_grads_equal_per_layer_workspaces(name, backend):
    make, shape = _models()[name]
    rng = np.random.default_rng(0)
    x = _input(name, shape, rng)
    input_grad = name != "transformer"  # (token ids have no gradient)
    grads, dxs = [], []
    for share in (True, False):
        nn.manual_seed(1)
        model = make()
        model.build(shape, dtype="float64")
        model.to(backend)
        if not share:
            _unshared(model)
        ops = model.ops
        y = model.forward(_each(ops.asarray, x))
        dy = _dy(_each(ops.to_numpy, y), np.random.default_rng(3))
        model.zero_grad()
        dx = model.backward(_each(ops.asarray, dy), input_grad=input_grad)
        grads.append(np.array(ops.to_numpy(model.flat_grads)))
        dxs.append(None if dx is None else [np.array(ops.to_numpy(d)) for d in _as_list(dx)])
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_array_equal(grads[0], grads[1])
    if input_grad:
        for shared, own in zip(dxs[0], dxs[1], strict=True):
            np.testing.assert_array_equal(shared, own)


@pytest.mark.parametrize("name", ["functional resnet", "functional branches", "parallel chains"])
def test_functional_model_shares_input_grads_and_allocates_nothing(name):
    make, shape = _models()[name]
    model = make()
    model.build(shape)
    rng = np.random.default_rng(4)
    x = _input(name, shape, rng)
    y = [rng.integers(0, 3, 3), rng.standard_normal((3, 2))] if name == "functional branches" else \
        rng.integers(0, 3, 3)
    loss = ["cross_entropy", "mse"] if name == "functional branches" else "cross_entropy"
    model.compile(optimizer="Adam", loss=loss)
    model.train_step(x, y)
    with_dx = [key for key, layer in model.named_layers() if "dx" in layer.__dict__.get("_workspace", {})]
    assert len(with_dx) <= 2  # only layers reading a model input (none needs dx in train_step) or Multiply
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_inner_layers_keep_no_input_grad_workspace():
    model = _models()["transformer"][0]()
    model.build((7,))
    x = np.random.default_rng(2).integers(0, 11, (4, 7))
    model.compile(optimizer="Adam", loss="cross_entropy")
    model.train_step(x, x)
    with_dx = [name for name, layer in model.named_layers() if "dx" in layer.__dict__.get("_workspace", {})]
    assert with_dx == []  # the bottom Embedding computes no dx in train_step; every other one is shared
    assert_step_allocates_nothing(lambda: model.train_step(x, x))
