import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch


class TorchRBF(torch.nn.Module):
    """The API.md formula: y_j = exp(-gamma * ||x - c_j||^2), written directly (no expansion trick)."""

    def __init__(self, in_features, num_centers, gamma):
        super().__init__()
        self.gamma = gamma
        self.centers = torch.nn.Parameter(torch.randn(num_centers, in_features))

    def forward(self, x):
        diff = x.unsqueeze(-2) - self.centers  # (..., K, F)
        return torch.exp(-self.gamma * (diff * diff).sum(-1))


@pytest.mark.parametrize("shape", [(5, 3), (1, 3), (2, 4, 3)])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_matches_torch(shape, gamma):
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal(shape) * 0.7
    compare_with_torch(nn.RBF(3, 4, gamma=gamma), TorchRBF(3, 4, gamma), x, atol=1e-9, rtol=1e-7)


def test_float32_matches_torch():
    torch.manual_seed(1)
    x = np.random.default_rng(1).standard_normal((16, 6)).astype(np.float32)
    compare_with_torch(nn.RBF(6, 5, gamma=0.3), TorchRBF(6, 5, 0.3), x, dtype="float32", atol=1e-5)


def test_gradcheck():
    check_gradients(nn.RBF(3, 4, gamma=0.7), np.random.default_rng(2).standard_normal((4, 3)))


def test_output_at_a_centre_is_one_and_never_above():
    layer = nn.RBF(2, 3)
    layer.build((2,))
    x = np.array(layer.params["centers"][:1])
    y = layer(x)
    assert y[0, 0] == pytest.approx(1.0, abs=1e-6) and np.all(y <= 1.0)


def test_bad_input_and_gamma():
    with pytest.raises(nn.ShapeError, match=r"RBF\(3, 4, gamma=1.0\).*\(N, \.\.\., 3\).*\(N, 5\)"):
        nn.Sequential(nn.RBF(3, 4)).build((5,))
    with pytest.raises(ValueError, match="gamma"):
        nn.RBF(3, 4, gamma=0.0)
