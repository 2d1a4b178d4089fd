import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch, step_allocations


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


def test_torch_backend_matches_numpy():
    x = np.random.default_rng(3).standard_normal((6, 3))
    dy = np.random.default_rng(4).standard_normal((6, 5))
    outs = []
    for backend in ("numpy", "torch"):
        nn.manual_seed(0)
        layer = nn.RBF(3, 5, gamma=1.5)
        layer.build((3,), dtype="float64")
        layer.to(backend)
        y = layer.ops.to_numpy(layer.forward(layer.ops.asarray(x)))
        layer.zero_grad()
        dx = layer.ops.to_numpy(layer.backward(layer.ops.asarray(dy)))
        outs.append((np.array(y), np.array(dx), np.array(layer.ops.to_numpy(layer.grads["centers"]))))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


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


def test_train_step_allocates_nothing():
    x = np.random.default_rng(5).standard_normal((64, 1)).astype(np.float32)
    y = np.sin(3 * x)
    model = nn.Sequential(nn.RBF(1, 32, gamma=4.0), nn.Dense(32, 1))
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.MSELoss())
    growth, peak = step_allocations(lambda: model.train_step(x, y))
    assert growth < 64 * 1024 and peak < 256 * 1024, (growth, peak)
