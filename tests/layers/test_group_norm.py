"""GroupNorm against nn.GroupNorm: values and every gradient on both backends, numerical gradients,
allocation-free training, .nnet round trip and ONNX export."""

import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch


def _perturbed(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("groups,shape", [(2, (6, 5, 4)), (3, (6, 7)), (1, (6,)), (6, (6, 3, 2, 2))])
def test_group_norm_matches_torch(groups, shape, backend):
    torch.manual_seed(0)
    layer = nn.GroupNorm(groups, 6, eps=1e-4)
    layer.build(shape, dtype="float64")
    layer.to(backend)
    x = np.random.default_rng(1).standard_normal((3, *shape)) * 3 + 1
    compare_with_torch(layer, _perturbed(torch.nn.GroupNorm(groups, 6, eps=1e-4)), x, atol=1e-9, rtol=1e-7)


def test_group_norm_float32_backends_agree_with_torch():
    torch.manual_seed(1)
    x = (np.random.default_rng(2).standard_normal((4, 8, 5, 5)) * 2).astype(np.float32)
    for backend in ("numpy", "torch"):
        layer = nn.GroupNorm(4, 8)
        layer.build((8, 5, 5))
        layer.to(backend)
        compare_with_torch(layer, _perturbed(torch.nn.GroupNorm(4, 8)), x, dtype="float32", atol=2e-5,
                           rtol=1e-4)


def test_group_norm_gradcheck():
    layer = nn.GroupNorm(2, 4)
    layer.build((4, 3), dtype="float64")
    rng = np.random.default_rng(3)
    layer.params["weight"][...] = rng.standard_normal(4)
    layer.params["bias"][...] = rng.standard_normal(4)
    check_gradients(layer, rng.standard_normal((2, 4, 3)))


def test_group_norm_saves_loads_and_exports(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = nn.Sequential(nn.Conv2D(2, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.Flatten(), nn.Dense(96, 2))
    model.build((2, 4, 4))
    model.compile(optimizer=nn.SGD(0.1), loss=nn.CrossEntropyLoss())
    x = np.random.default_rng(6).standard_normal((5, 2, 4, 4)).astype(np.float32)
    model.train_step(x, np.array([0, 1, 1, 0, 1]))  # non-trivial weight and bias
    model.save(tmp_path / "m.nnet")
    loaded = nn.load(tmp_path / "m.nnet")
    assert repr(loaded[1]) == "GroupNorm(3, 6, eps=1e-05)"
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    path = nn.export_onnx(model, tmp_path / "m.onnx", (2, 4, 4))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, model.predict(x), atol=1e-4, rtol=0)


def test_group_norm_bad_arguments_and_input():
    with pytest.raises(nn.errors.ConfigError, match=r"num_channels \(6\) must be divisible by num_groups"):
        nn.GroupNorm(4, 6)
    with pytest.raises(nn.errors.ConfigError, match="num_groups"):
        nn.GroupNorm(0, 6)
    model = nn.Sequential(nn.GroupNorm(2, 4))
    model.build((4, 3))
    with pytest.raises(nn.ShapeError, match=r"GroupNorm\(2, 4.*\(N, 4, \.\.\.\).*\(2, 5, 3\)"):
        model.forward(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(nn.ShapeError, match=r"GroupNorm\(2, 4.*\(N, 4, \.\.\.\), got \(N, 3\)"):
        nn.Sequential(nn.GroupNorm(2, 4)).build((3,))
