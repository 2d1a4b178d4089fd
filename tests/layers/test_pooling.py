import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch

# (kernel, stride, padding, input (C, H, W), batch)
CASES = [
    (2, None, 0, (3, 8, 8), 2),
    (2, None, 0, (2, 7, 9), 1),
    (3, 2, 1, (2, 9, 6), 2),
    (3, 1, 0, (1, 5, 7), 3),
    ((2, 3), (1, 2), (1, 1), (2, 6, 7), 2),
    (3, 3, 1, (2, 4, 4), 1),
]


def built(layer, shape, backend):
    layer.build(shape, dtype="float64")
    return layer.to(backend)


@pytest.mark.parametrize("k,s,p,shape,n", CASES)
def test_max_pool_matches_torch(k, s, p, shape, n, backend):
    x = np.random.default_rng(0).standard_normal((n, *shape))
    compare_with_torch(built(nn.MaxPool2D(k, s, p), shape, backend), torch.nn.MaxPool2d(k, s, p), x)


@pytest.mark.parametrize("k,s,p,shape,n", CASES)
def test_avg_pool_matches_torch_counting_padded_zeros(k, s, p, shape, n, backend):
    x = np.random.default_rng(1).standard_normal((n, *shape))
    compare_with_torch(built(nn.AvgPool2D(k, s, p), shape, backend), torch.nn.AvgPool2d(k, s, p), x)


def test_global_avg_pool_matches_torch(backend):
    x = np.random.default_rng(2).standard_normal((3, 4, 5, 6))
    module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    compare_with_torch(built(nn.GlobalAvgPool2D(), (4, 5, 6), backend), module, x)


def test_max_pool_ties_and_nan_follow_torch(backend):
    x = np.zeros((1, 2, 4, 4))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 1.0  # a tie: the first in scan order wins
    x[0, 1, 1, 1] = x[0, 1, 2, 3] = np.nan
    layer = built(nn.MaxPool2D(2), (2, 4, 4), backend)
    y = layer.ops.to_numpy(layer.forward(layer.ops.asarray(x)))
    yt, it = torch.nn.functional.max_pool2d(torch.tensor(x), 2, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(layer.ops.to_numpy(layer._index), it.numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k,s,p,shape,n", CASES)
def test_max_pool_under_no_grad_keeps_no_indices(k, s, p, shape, n, dtype, backend):
    """The maxima alone (NaN and ties as PyTorch's), no int64 index workspace; a backward then names the
    layer and no_grad, and a forward outside no_grad makes backward work again."""
    x = np.random.default_rng(5).standard_normal((n, *shape)).astype(dtype)
    x[0, 0, 1, 1], x[-1, -1, 0, :2] = np.nan, 7.0
    layer = nn.MaxPool2D(k, s, p)
    layer.build(shape, dtype=dtype)
    layer.to(backend)
    with nn.no_grad():
        y = np.array(layer.ops.to_numpy(layer.forward(layer.ops.asarray(x))))
    assert "index" not in layer.__dict__.get("_workspace", {})
    np.testing.assert_array_equal(y, torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p).numpy())
    dy = layer.ops.asarray(np.ones_like(y))
    with pytest.raises(RuntimeError, match=r"MaxPool2D\(.*no_grad"):
        layer.backward(dy)
    layer.forward(layer.ops.asarray(x))
    assert layer.backward(dy).shape == x.shape


@pytest.mark.parametrize("layer", [nn.MaxPool2D(3, 2, 1), nn.AvgPool2D(3, 2, 1), nn.GlobalAvgPool2D()])
def test_pool_gradcheck(layer):
    x = np.random.default_rng(3).permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) / 10.0  # distinct: no ties
    check_gradients(layer, x)


def test_pool_in_a_model_with_conv_matches_torch():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                 torch.nn.AvgPool2d(2, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten())
    model = nn.Sequential(nn.Conv2D(2, 3, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
                          nn.AvgPool2D(2, padding=1), nn.GlobalAvgPool2D())
    x = np.random.default_rng(4).standard_normal((2, 2, 8, 10))
    compare_with_torch(model, module, x, name_map={"0.weight": "0.weight", "0.bias": "0.bias"})


def test_pool_bad_input_names_layer_and_shapes():
    with pytest.raises(nn.ShapeError, match=r"MaxPool2D\(kernel_size=5\).*\(N, 1, 3, 8\).*smaller"):
        nn.MaxPool2D(5).build((1, 3, 8))
    with pytest.raises(nn.ShapeError, match=r"AvgPool2D\(kernel_size=2\).*\(N, C, H, W\).*\(N, 8\)"):
        nn.AvgPool2D(2).build((8,))
    with pytest.raises(ValueError, match="padding"):
        nn.MaxPool2D(2, padding=2)
    model = nn.Sequential(nn.MaxPool2D(2))
    model.build((3, 8, 8))
    with pytest.raises(nn.ShapeError, match=r"MaxPool2D.*\(N, 3, 8, 8\).*\(2, 3, 8, 6\)"):
        model.forward(np.zeros((2, 3, 8, 6), np.float32))
