import numpy as np
import pytest
import torch
from _transformer_refs import SwiGLU

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch


def test_swiglu_matches_reference(backend):
    torch.manual_seed(0)
    layer = nn.SwiGLU(6, 10)
    layer.build((4, 6), dtype="float64")
    layer.to(backend)
    compare_with_torch(layer, SwiGLU(6, 10), np.random.default_rng(1).standard_normal((3, 4, 6)))


def test_swiglu_parameters_are_bias_free_with_llama_names():
    layer = nn.SwiGLU(4, 7)
    layer.build((4,))
    assert {k: v.shape for k, v in layer.state_dict().items()} == \
        {"w1.weight": (7, 4), "w2.weight": (4, 7), "w3.weight": (7, 4)}


def test_swiglu_gradcheck():
    check_gradients(nn.SwiGLU(3, 5), np.random.default_rng(2).standard_normal((2, 4, 3)))


def test_swiglu_wrong_feature_size():
    model = nn.Sequential(nn.SwiGLU(4, 8))
    model.build((4,))
    with pytest.raises(nn.ShapeError, match=r"SwiGLU\(4, 8\).*\(N, \.\.\., 4\).*\(2, 3\)"):
        model.forward(np.zeros((2, 3), np.float32))
