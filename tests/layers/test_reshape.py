import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch


class _View(torch.nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def test_flatten_matches_torch():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    out = compare_with_torch(nn.Flatten(), torch.nn.Flatten(), x)
    assert out["y"].shape == (2, 60)


@pytest.mark.parametrize("shape, want", [((4, 15), (4, 15)), ((-1, 3), (20, 3)), ((60,), (60,)),
                                         ((3, -1, 5), (3, 4, 5))])
def test_reshape_matches_torch_view(shape, want):
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    layer = nn.Reshape(shape)
    assert layer.build((3, 4, 5), dtype="float64") == want
    out = compare_with_torch(layer, _View(*want), x)
    assert out["y"].shape == (2, *want)


def test_reshape_gradcheck():
    check_gradients(nn.Reshape((6, 2)), np.random.default_rng(2).standard_normal((2, 3, 4)))
    check_gradients(nn.Flatten(), np.random.default_rng(3).standard_normal((2, 3, 4)))


def test_reshape_of_a_wrong_size_names_both_shapes():
    with pytest.raises(nn.ShapeError, match=r"Reshape\(\(7, -1\)\).*\(N, 3, 4\).*\(N, 7, -1\)"):
        nn.Reshape((7, -1)).build((3, 4))
    with pytest.raises(nn.ShapeError, match="cannot reshape"):
        nn.Reshape((-1, -1)).build((3, 4))


def test_flatten_in_a_model_returns_to_the_input_shape():
    model = nn.Sequential(nn.Flatten(), nn.Dense(12, 2), nn.Reshape((2, 1)))
    x = np.random.default_rng(4).standard_normal((5, 3, 4)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (5, 2, 1)
    assert model.backward(np.ones_like(y)).shape == x.shape


def test_config_round_trip():
    layer = nn.Reshape((-1, 3))
    assert nn.Reshape(**layer.get_config()).shape == (-1, 3)
