import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.backend import ACTIVATIONS
from neuronet.testing import check_gradients, compare_with_torch

TORCH_ACT = {
    "linear": torch.nn.Identity(), "relu": torch.nn.ReLU(), "sigmoid": torch.nn.Sigmoid(),
    "tanh": torch.nn.Tanh(), "leaky_relu": torch.nn.LeakyReLU(0.01), "elu": torch.nn.ELU(),
    "selu": torch.nn.SELU(), "gelu": torch.nn.GELU(),
    "gelu_tanh": torch.nn.GELU(approximate="tanh"), "silu": torch.nn.SiLU(), "softmax": torch.nn.Softmax(-1),
    "log_softmax": torch.nn.LogSoftmax(-1),
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_matches_torch(activation):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(7, 5), TORCH_ACT[activation])
    layer = nn.Dense(7, 5, activation=activation)
    x = np.random.default_rng(1).standard_normal((6, 7))
    compare_with_torch(layer, module, x, name_map={"0.weight": "weight", "0.bias": "bias"})


def test_dense_on_3d_input_matches_torch():
    module = torch.nn.Linear(4, 3)
    x = np.random.default_rng(2).standard_normal((2, 5, 4))
    compare_with_torch(nn.Dense(4, 3, activation=None), module, x)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "silu", "softmax", "elu", "selu"])
def test_dense_gradcheck(activation):
    x = np.random.default_rng(3).standard_normal((3, 4)) + 0.1  # keep clear of ReLU's kink at 0
    check_gradients(nn.Dense(4, 3, activation=activation), x)


def test_dense_float32_torch_backend_matches_numpy():
    x = np.random.default_rng(4).standard_normal((8, 6)).astype(np.float32)
    a = nn.Dense(6, 4, activation="gelu")
    a.build((6,))
    b = nn.Dense(6, 4, activation="gelu")
    b.build((6,))
    b.load_state_dict(a.state_dict())
    b.to("torch")
    np.testing.assert_allclose(b.ops.to_numpy(b(x)), a(x), atol=1e-5)


def test_dense_wrong_feature_size_names_layer_and_shapes():
    model = nn.Sequential(nn.Dense(4, 3))
    model.build((4,))
    with pytest.raises(nn.ShapeError, match=r"Dense\(4, 3\).*\(N, \.\.\., 4\).*\(2, 5\)"):
        model.forward(np.zeros((2, 5), np.float32))


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_dense_without_bias_matches_torch(activation):
    module = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False), TORCH_ACT[activation])
    layer = nn.Dense(5, 4, activation=activation, bias=False)
    x = np.random.default_rng(5).standard_normal((3, 2, 5))
    compare_with_torch(layer, module, x, name_map={"0.weight": "weight"})
    assert list(layer.params) == ["weight"]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_dense_float32_grads_match_torch_on_each_backend(backend):
    module = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    layer = nn.Dense(16, 8, activation="relu")
    layer.build((16,))
    layer.to(backend)
    x = np.random.default_rng(6).standard_normal((32, 16)).astype(np.float32)
    compare_with_torch(layer, module, x, dtype="float32", atol=1e-5, rtol=1e-4,
                       name_map={"0.weight": "weight", "0.bias": "bias"})


def test_recompute_output_gives_y_again_from_z_and_refuses_where_y_is_z():
    layer = nn.Dense(4, 6, activation="gelu")
    layer.build((4,))
    y = layer.forward(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)).copy()
    layer._y[...] = 0.0  # (a container let another layer use the buffer)
    np.testing.assert_array_equal(layer.recompute_output(), y)
    relu = nn.Dense(4, 6, activation="relu")
    relu.build((4,))
    relu.forward(np.ones((2, 4), np.float32))
    with pytest.raises(RuntimeError, match="computes y over z"):
        relu.recompute_output()
