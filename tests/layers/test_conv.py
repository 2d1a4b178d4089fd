import numpy as np
import pytest
import torch
from _backends import assert_backends_train_alike

import neuronet as nn
from neuronet.testing import assert_step_allocates_nothing, check_gradients, compare_with_torch

TORCH_ACT = {"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh(), "gelu": torch.nn.GELU(),
             "sigmoid": torch.nn.Sigmoid(), "leaky_relu": torch.nn.LeakyReLU(0.01), "silu": torch.nn.SiLU()}
PAIRS = {"0.weight": "weight", "0.bias": "bias"}


def on_backend(layer, shape, backend, dtype="float64"):
    layer.build(shape, dtype=dtype)
    return layer.to(backend)


# (in, out, kernel, stride, padding, input (C, H, W), batch)
CONV2D_CASES = [
    (3, 4, 3, 1, 0, (3, 7, 6), 2),
    (3, 4, 3, 1, 1, (3, 5, 8), 2),
    (2, 5, 5, 2, 2, (2, 9, 7), 3),
    (2, 3, 1, 1, 0, (2, 4, 5), 2),
    (2, 3, 1, 2, 0, (2, 5, 5), 1),
    (1, 2, 3, 2, 1, (1, 8, 11), 1),
    (3, 2, (3, 5), (2, 1), (1, 2), (3, 6, 9), 2),
    (2, 2, 5, 1, 2, (2, 5, 5), 1),
]


@pytest.mark.parametrize("case", CONV2D_CASES)
def test_conv2d_matches_torch(case, backend):
    cin, cout, k, s, p, shape, n = case
    torch.manual_seed(0)
    module = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p)
    layer = on_backend(nn.Conv2D(cin, cout, k, stride=s, padding=p), shape, backend)
    x = np.random.default_rng(1).standard_normal((n, *shape))
    compare_with_torch(layer, module, x, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("stride", [1, 2])  # the NumPy backend's fused stride-1 path, and im2col
@pytest.mark.parametrize("activation", list(TORCH_ACT))
def test_conv2d_fused_activation_matches_torch(activation, stride, backend):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride, padding=1), TORCH_ACT[activation])
    layer = on_backend(nn.Conv2D(3, 4, 3, stride, padding=1, activation=activation), (3, 5, 6), backend)
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 6))
    compare_with_torch(layer, module, x, name_map=PAIRS, atol=1e-8, rtol=1e-7)


def test_conv2d_without_bias_and_float32_matches_torch():
    torch.manual_seed(0)
    module = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
    x = np.random.default_rng(3).standard_normal((4, 3, 10, 9)).astype(np.float32)
    compare_with_torch(nn.Conv2D(3, 6, 3, stride=2, padding=1, bias=False), module, x, dtype="float32")


@pytest.mark.parametrize("k,s,p,length", [(3, 1, 0, 9), (3, 1, 1, 7), (5, 2, 2, 11), (1, 1, 0, 4),
                                          (4, 3, 1, 10)])
def test_conv1d_matches_torch(k, s, p, length, backend):
    torch.manual_seed(0)
    module = torch.nn.Conv1d(3, 4, k, stride=s, padding=p)
    layer = on_backend(nn.Conv1D(3, 4, k, stride=s, padding=p), (3, length), backend)
    x = np.random.default_rng(4).standard_normal((2, 3, length))
    compare_with_torch(layer, module, x, atol=1e-8, rtol=1e-7)


def test_conv1d_weight_layout_is_pytorchs():
    layer = nn.Conv1D(3, 5, 4)
    layer.build((3, 10))
    assert layer.params["weight"].shape == (5, 3, 4) and layer.params["bias"].shape == (5,)
    assert np.abs(layer.params["weight"]).max() <= 1 / np.sqrt(12)


@pytest.mark.parametrize("activation,stride", [(None, 2), ("tanh", 2), ("gelu", 1), ("sigmoid", 1)])
def test_conv2d_gradcheck(activation, stride, conv_path):
    x = np.random.default_rng(5).standard_normal((2, 2, 5, 4))
    check_gradients(nn.Conv2D(2, 3, 3, stride=stride, padding=1, activation=activation), x)


@pytest.mark.parametrize("groups,out_channels", [(2, 16), (4, 4)], ids=["groups_of_8", "depthwise"])
def test_conv2d_grouped_stride1_gradcheck(groups, out_channels):
    """float64 numerical gradients of a grouped stride-1 convolution: on the NumPy backend a group of 8
    outputs takes its weight gradient as a GEMM, a depthwise one as dot products."""
    x = np.random.default_rng(7).standard_normal((2, 4, 5, 4))
    check_gradients(nn.Conv2D(4, out_channels, 3, padding=1, groups=groups, activation="tanh"), x)


def test_conv1d_gradcheck():
    x = np.random.default_rng(6).standard_normal((2, 2, 7))
    check_gradients(nn.Conv1D(2, 3, 3, stride=2, padding=2), x)


def test_conv2d_wrong_channel_count_names_layer_and_shapes():
    model = nn.Sequential(nn.Conv2D(3, 8, 3))
    model.build((3, 16, 16))
    name = r"Conv2D\(3, 8, kernel_size=3\)"
    with pytest.raises(nn.ShapeError, match=name + r".*\(N, 3, 16, 16\).*\(2, 1, 16, 16\)"):
        model.forward(np.zeros((2, 1, 16, 16), np.float32))
    with pytest.raises(nn.ShapeError, match=name + r".*\(N, 3, H, W\).*\(N, 1, 16, 16\)"):
        nn.Sequential(nn.Conv2D(3, 8, 3)).forward(np.zeros((2, 1, 16, 16), np.float32))


def test_conv_input_smaller_than_kernel_names_layer_and_shapes():
    with pytest.raises(nn.ShapeError, match=r"Conv2D\(1, 2, kernel_size=5\).*\(N, 1, 3, 8\).*smaller.*5, 5"):
        nn.Conv2D(1, 2, 5).build((1, 3, 8))
    with pytest.raises(nn.ShapeError, match=r"Conv1D\(1, 2, kernel_size=4\).*\(N, 1, 2\)"):
        nn.Sequential(nn.Conv1D(1, 2, 4)).forward(np.zeros((1, 1, 2), np.float32))


def test_conv_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2D(1, 2, (3, 3, 3))
    with pytest.raises(ValueError, match="stride"):
        nn.Conv2D(1, 2, 3, stride=0)


def mnist_like_cnn(dtype="float32"):
    return nn.Sequential(
        nn.Conv2D(1, 4, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
        nn.Conv2D(4, 8, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(8 * 3 * 3, 16, activation="relu"), nn.Dense(16, 10), dtype=dtype)


def test_cnn_train_step_allocates_nothing():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((16, 1, 12, 12)).astype(np.float32), rng.integers(0, 10, 16)
    model = nn.Sequential(*mnist_like_cnn().layers[:4], nn.BatchNorm2D(8), nn.AvgPool2D(3, padding=1),
                          nn.GlobalAvgPool2D(), nn.Dense(8, 10))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss())
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_cnn_numpy_and_torch_backends_agree():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((8, 1, 12, 12)), rng.integers(0, 10, 8)
    assert_backends_train_alike(lambda: mnist_like_cnn("float64"), (1, 12, 12), nn.CrossEntropyLoss(), x, y)
