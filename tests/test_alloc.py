"""A steady-state training step on the NumPy backend allocates (almost) nothing."""

import numpy as np
import pytest

import neuronet as nn
from neuronet.testing import assert_step_allocates_nothing


def _step(model, batch=64, features=784, classes=10):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, features)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    return lambda: model.train_step(x, y)


@pytest.mark.parametrize("optimizer", [lambda: nn.Adam(1e-3), lambda: nn.SGD(1e-2, momentum=0.9),
                                       lambda: nn.AdamW(1e-3)])
def test_mlp_train_step_allocates_nothing(optimizer):
    model = nn.Sequential(nn.Dense(784, 256, activation="relu"), nn.Dense(256, 128, activation="relu"),
                          nn.Dense(128, 10))
    model.compile(optimizer=optimizer(), loss=nn.CrossEntropyLoss())
    assert_step_allocates_nothing(_step(model))


def test_every_activation_and_dropout_allocate_nothing():
    acts = ("tanh", "sigmoid", "gelu", "silu", "elu", "leaky_relu")
    layers = [nn.Dense(32, 32, activation=a) for a in acts]
    model = nn.Sequential(*layers, nn.Dropout(0.2), nn.SELU(), nn.Dense(32, 10, activation="log_softmax"))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.NLLLoss())
    assert_step_allocates_nothing(_step(model, batch=32, features=32))


def test_mse_regression_step_allocates_nothing():
    model = nn.Sequential(nn.Dense(16, 64, activation="relu"), nn.Dense(64, 4))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.MSELoss())
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((128, 16)).astype(np.float32), rng.standard_normal((128, 4)).astype(np.float32)
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_forward_in_inference_allocates_nothing():
    model = nn.Sequential(nn.Dense(784, 256, activation="relu"), nn.Dropout(0.5), nn.Dense(256, 10))
    x = np.random.default_rng(2).standard_normal((64, 784)).astype(np.float32)
    assert_step_allocates_nothing(lambda: model.forward(x, training=False), "forward")
