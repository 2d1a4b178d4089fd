"""Shared dL/dx buffers: inside Sequential and TransformerBlock a layer's input gradient comes from one of
two temporaries per nesting level (``Layer.input_grad_buffer``) instead of its own workspace. The
gradients must be exactly those of per-layer workspaces, through pass-through layers (Flatten, Dropout
with p = 0), nested containers and residual branches."""

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
        "transformer": (lambda: nn.Sequential(
            nn.Embedding(11, 8), nn.TransformerBlock(8, 2, 16, causal=True),
            nn.TransformerBlock(8, 2, 16, causal=True), nn.LayerNorm(8), nn.Dense(8, 11)), (7,)),
    }


def _unshared(model):
    for _, layer in model.named_layers():
        layer.__dict__.pop("_grad_depth", None)
    return model


def _input(name, shape, rng):
    return rng.integers(0, 11, (3, *shape)) if name == "transformer" else rng.standard_normal((3, *shape))


@pytest.mark.parametrize("name", list(_models()))
def test_shared_input_grads_equal_per_layer_workspaces(name):
    make, shape = _models()[name]
    rng = np.random.default_rng(0)
    x = _input(name, shape, rng)
    input_grad = name != "transformer"  # (token ids have no gradient)
    grads, dxs = [], []
    for share in (True, False):
        nn.manual_seed(1)
        model = make()
        model.build(shape, dtype="float64")
        if not share:
            _unshared(model)
        y = model.forward(x)
        model.zero_grad()
        dx = model.backward(np.random.default_rng(3).standard_normal(y.shape), input_grad=input_grad)
        grads.append(np.array(model.flat_grads))
        dxs.append(None if dx is None else np.array(dx))
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_array_equal(grads[0], grads[1])
    if input_grad:
        np.testing.assert_array_equal(dxs[0], dxs[1])


def test_inner_layers_keep_no_input_grad_workspace():
    model = _models()["transformer"][0]()
    model.build((7,))
    x = np.random.default_rng(2).integers(0, 11, (4, 7))
    model.compile(optimizer="Adam", loss="cross_entropy")
    model.train_step(x, x)
    with_dx = [name for name, layer in model.named_layers() if "dx" in layer.__dict__.get("_workspace", {})]
    assert with_dx == []  # the bottom Embedding computes no dx in train_step; every other one is shared
    assert_step_allocates_nothing(lambda: model.train_step(x, x))
