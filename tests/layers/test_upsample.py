"""Upsample (nearest, bilinear with align_corners=False): against PyTorch on both backends in float32 and
float64, numerical gradients, zero-allocation steps, .nnet round trip, errors."""

import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import assert_step_allocates_nothing, check_gradients, compare_with_torch

DTYPES = {"float64": dict(atol=1e-10, rtol=1e-8), "float32": dict(atol=1e-5, rtol=1e-5)}

# (scale_factor, mode, input (C, H, W))
CASES = [
    (2, "nearest", (3, 4, 5)),
    (3, "nearest", (2, 3, 2)),
    ((2, 3), "nearest", (2, 3, 4)),
    (1.5, "nearest", (2, 5, 4)),
    (2, "bilinear", (3, 4, 5)),
    (3, "bilinear", (1, 2, 3)),
    ((2, 1.5), "bilinear", (2, 3, 4)),
    (1, "bilinear", (2, 3, 3)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,mode,shape", CASES)
def test_upsample_matches_torch(scale, mode, shape, dtype, backend):
    layer = nn.Upsample(scale, mode)
    layer.build(shape, dtype=dtype)
    layer.to(backend)
    corners = {} if mode == "nearest" else {"align_corners": False}
    module = torch.nn.Upsample(scale_factor=scale, mode=mode, **corners)
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(dtype)
    compare_with_torch(layer, module, x, dtype=dtype, **DTYPES[dtype])
    assert layer.output_shape == tuple(module(torch.tensor(x[:1])).shape[1:])


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_gradcheck(mode):
    check_gradients(nn.Upsample((2, 3), mode), np.random.default_rng(1).standard_normal((2, 2, 3, 4)))


def test_decoder_with_upsample_allocates_nothing_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 2, 6, 6)).astype(np.float32)
    y = rng.standard_normal((8, 1, 12, 12)).astype(np.float32)
    model = nn.Sequential(nn.Conv2D(2, 4, 3, padding="same", activation="relu"), nn.Upsample(2, "bilinear"),
                          nn.Conv2D(4, 4, 3, padding=1), nn.MaxPool2D(2), nn.Upsample(2), nn.Conv2D(4, 1, 1))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.MSELoss())
    assert_step_allocates_nothing(lambda: model.train_step(x, y))
    model.save(tmp_path / "up.nnet")
    loaded = nn.load(tmp_path / "up.nnet")
    assert loaded.layers[1].get_config() == {"scale_factor": 2, "mode": "bilinear"}
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_upsample_moves_between_backends():
    layer = nn.Upsample(2, "bilinear")
    layer.build((1, 3, 3), dtype="float64")
    x = np.random.default_rng(3).standard_normal((1, 1, 3, 3))
    on_numpy = layer.forward(x).copy()
    layer.to("torch")
    np.testing.assert_allclose(layer.ops.to_numpy(layer.forward(layer.ops.asarray(x))), on_numpy, rtol=1e-12)


def test_upsample_errors_name_layer_and_argument():
    with pytest.raises(nn.ShapeError, match=r"Upsample\(scale_factor=2, mode='nearest'\).*\(N, C, H, W\)"
                                            r".*\(N, 3, 8\)"):
        nn.Sequential(nn.Upsample(2)).forward(np.zeros((2, 3, 8), np.float32))
    with pytest.raises(nn.ShapeError, match=r"Upsample.*\(N, C, H, W\).*\(N, 1, 2, 3, 4\)"):
        nn.Upsample(2).build((1, 2, 3, 4))
    with pytest.raises(nn.errors.ConfigError, match=r"Upsample: mode.*nearest, bilinear.*'bicubic'"):
        nn.Upsample(2, mode="bicubic")
    with pytest.raises(nn.errors.ConfigError, match=r"Upsample: scale_factor.*-1"):
        nn.Upsample(-1)
