import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch


def _perturbed(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def _on(layer, backend, shape):
    layer.build(shape, dtype="float64")
    return layer.to(backend)


CASES = [
    (lambda: nn.LayerNorm(6), lambda: torch.nn.LayerNorm(6)),
    (lambda: nn.LayerNorm(6, eps=1e-3), lambda: torch.nn.LayerNorm(6, eps=1e-3)),
    (lambda: nn.RMSNorm(6), lambda: torch.nn.RMSNorm(6, eps=1e-6)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_norm_matches_torch(case, backend):
    ours, theirs = CASES[case]
    torch.manual_seed(0)
    x = np.random.default_rng(1).standard_normal((3, 4, 6)) * 2 + 0.5
    compare_with_torch(_on(ours(), backend, (4, 6)), _perturbed(theirs()), x)


@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.RMSNorm])
def test_norm_gradcheck(cls):
    layer = cls(5)
    layer.build((3, 5), dtype="float64")
    layer.params["weight"][...] = np.random.default_rng(2).standard_normal(5)
    check_gradients(layer, np.random.default_rng(3).standard_normal((2, 3, 5)))


def test_norm_float32_numpy_matches_torch_backend():
    x = np.random.default_rng(4).standard_normal((8, 16)).astype(np.float32)
    a, b = nn.LayerNorm(16), nn.LayerNorm(16)
    a.build((16,))
    b.build((16,))
    b.to("torch")
    np.testing.assert_allclose(b.ops.to_numpy(b(x)), a(x), atol=1e-5)


def test_rmsnorm_has_no_bias_and_layernorm_keys_match_torch():
    r, ln = nn.RMSNorm(4), nn.LayerNorm(4)
    r.build((4,))
    ln.build((4,))
    assert set(r.state_dict()) == set(torch.nn.RMSNorm(4).state_dict()) == {"weight"}
    assert set(ln.state_dict()) == set(torch.nn.LayerNorm(4).state_dict())


@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.RMSNorm])
def test_norm_wrong_feature_size(cls):
    model = nn.Sequential(cls(4))
    model.build((3, 4))
    with pytest.raises(nn.ShapeError, match=rf"{cls.__name__}\(4.*\(N, \.\.\., 4\).*\(2, 3, 5\)"):
        model.forward(np.zeros((2, 3, 5), np.float32))
