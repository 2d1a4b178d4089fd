import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch


class TorchGlobalAttention(torch.nn.Module):
    """API.md: a = softmax_T(v . tanh(x_t @ weight.T + bias)), y = sum_t a_t x_t."""

    def __init__(self, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(dim, dim) * 0.5)
        self.bias = torch.nn.Parameter(torch.randn(dim) * 0.5)
        self.v = torch.nn.Parameter(torch.randn(dim))

    def forward(self, x):
        scores = torch.tanh(torch.nn.functional.linear(x, self.weight, self.bias)) @ self.v  # (N, T)
        a = torch.softmax(scores, dim=1)
        return (a.unsqueeze(-1) * x).sum(dim=1)


@pytest.mark.parametrize("shape", [(3, 5, 4), (1, 1, 4), (2, 7, 4)])
def test_matches_torch(shape):
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal(shape)
    compare_with_torch(nn.GlobalAttention(4), TorchGlobalAttention(4), x, atol=1e-9, rtol=1e-7)


def test_float32_matches_torch():
    torch.manual_seed(1)
    x = np.random.default_rng(1).standard_normal((8, 6, 16)).astype(np.float32)
    compare_with_torch(nn.GlobalAttention(16), TorchGlobalAttention(16), x, dtype="float32", atol=1e-5)


def test_gradcheck():
    check_gradients(nn.GlobalAttention(3), np.random.default_rng(2).standard_normal((2, 4, 3)))


def test_weights_sum_to_one_so_a_constant_sequence_pools_to_itself():
    layer = nn.GlobalAttention(3)
    x = np.tile(np.array([[[1.0, -2.0, 0.5]]], np.float32), (2, 6, 1))
    np.testing.assert_allclose(layer(x), x[:, 0], rtol=1e-5)


def test_bad_input_names_the_layer():
    model = nn.Sequential(nn.GlobalAttention(4))
    model.build((5, 4))
    with pytest.raises(nn.ShapeError, match=r"GlobalAttention\(4\).*\(N, T, 4\).*\(2, 5, 3\)"):
        model.forward(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(nn.ShapeError, match=r"GlobalAttention\(4\)"):
        nn.Sequential(nn.GlobalAttention(4)).build((4,))
