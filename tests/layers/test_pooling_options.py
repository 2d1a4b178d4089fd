"""MaxPool1D/AvgPool1D, ceil_mode and count_include_pad: against PyTorch on both backends in float32 and
float64, numerical gradients, zero-allocation steps, .nnet round trips, errors."""

import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import assert_step_allocates_nothing, check_gradients, compare_with_torch

DTYPES = {"float64": dict(atol=1e-10, rtol=1e-8), "float32": dict(atol=1e-6, rtol=1e-5)}


def compare(layer, module, x, backend, dtype):
    layer.build(x.shape[1:], dtype=dtype)
    layer.to(backend)
    compare_with_torch(layer, module, x.astype(dtype), dtype=dtype, **DTYPES[dtype])
    assert layer.output_shape == tuple(module(torch.tensor(x[:1])).shape[1:])


def distinct(*shape, seed=0):
    """Distinct values (no max ties, whose winner PyTorch leaves to the kernel)."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0


# (kernel, stride, padding, ceil_mode, count_include_pad, input (C, H, W))
CASES_2D = [
    (2, None, 0, True, True, (2, 7, 9)),
    (3, 2, 1, True, True, (2, 8, 6)),
    (3, 2, 1, True, False, (2, 8, 6)),
    (3, 2, 1, False, False, (2, 7, 7)),
    ((3, 2), (2, 3), (1, 1), True, False, (1, 10, 8)),
    (4, 3, 2, True, True, (2, 6, 11)),     # a window that starts in the right padding is dropped
    (2, 2, 0, False, True, (3, 4, 6)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,ceil,include,shape", CASES_2D)
def test_pool2d_ceil_mode_and_count_include_pad_match_torch(k, s, p, ceil, include, shape, dtype, backend):
    x = distinct(2, *shape)
    compare(nn.MaxPool2D(k, s, p, ceil_mode=ceil), torch.nn.MaxPool2d(k, s, p, ceil_mode=ceil), x, backend,
            dtype)
    compare(nn.AvgPool2D(k, s, p, ceil_mode=ceil, count_include_pad=include),
            torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include), x, backend, dtype)


# (kernel, stride, padding, ceil_mode, count_include_pad, length)
CASES_1D = [(2, None, 0, False, True, 8), (3, 2, 1, False, True, 9), (3, 2, 1, True, False, 10),
            (2, None, 0, True, True, 7), (5, 3, 2, True, True, 12), (1, 1, 0, False, True, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,ceil,include,length", CASES_1D)
def test_pool1d_matches_torch(k, s, p, ceil, include, length, dtype, backend):
    x = distinct(2, 3, length, seed=1)
    compare(nn.MaxPool1D(k, s, p, ceil_mode=ceil), torch.nn.MaxPool1d(k, s, p, ceil_mode=ceil), x, backend,
            dtype)
    compare(nn.AvgPool1D(k, s, p, ceil_mode=ceil, count_include_pad=include),
            torch.nn.AvgPool1d(k, s, p, ceil_mode=ceil, count_include_pad=include), x, backend, dtype)


def test_max_pool1d_indices_are_pytorchs(backend):
    layer = nn.MaxPool1D(3, 2, 1, ceil_mode=True)
    layer.build((2, 8), dtype="float64")
    layer.to(backend)
    x = distinct(2, 2, 8, seed=2)
    layer.forward(layer.ops.asarray(x))
    _, want = torch.nn.functional.max_pool1d(torch.tensor(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(layer.ops.to_numpy(layer._index).reshape(want.shape), want.numpy())


@pytest.mark.parametrize("layer,shape", [
    (nn.MaxPool2D(3, 2, 1, ceil_mode=True), (2, 6, 7)),
    (nn.AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 6, 7)),
    (nn.AvgPool2D(2, ceil_mode=True), (1, 5, 5)),
    (nn.MaxPool1D(2, ceil_mode=True), (2, 7)),
    (nn.AvgPool1D(3, 2, 1, count_include_pad=False), (2, 8)),
])
def test_pool_options_gradcheck(layer, shape):
    check_gradients(layer, distinct(2, *shape, seed=3))


def test_sequence_model_with_1d_pools_matches_torch_and_allocates_nothing(backend):
    torch.manual_seed(0)
    tnn = torch.nn
    module = tnn.Sequential(tnn.Conv1d(3, 4, 3, padding="same"), tnn.MaxPool1d(2, ceil_mode=True),
                            tnn.Conv1d(4, 4, 3, padding=1),
                            tnn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False))
    model = nn.Sequential(nn.Conv1D(3, 4, 3, padding="same"), nn.MaxPool1D(2, ceil_mode=True),
                          nn.Conv1D(4, 4, 3, padding=1),
                          nn.AvgPool1D(3, 2, 1, ceil_mode=True, count_include_pad=False))
    model.build((3, 11), dtype="float64")
    model.to(backend)
    names = {f"{i}.{k}": f"{i}.{k}" for i in (0, 2) for k in ("weight", "bias")}
    compare_with_torch(model, module, np.random.default_rng(4).standard_normal((2, 3, 11)), name_map=names,
                       atol=1e-9, rtol=1e-7)
    if backend == "numpy":
        x = np.random.default_rng(5).standard_normal((8, 3, 11)).astype(np.float32)
        y = np.random.default_rng(6).standard_normal((8, *model.output_shape)).astype(np.float32)
        model = nn.Sequential(*(type(layer)(**layer.get_config()) for layer in model.layers))
        model.compile(optimizer=nn.SGD(0.1), loss=nn.MSELoss())
        model.build((3, 11))
        assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_pools_round_trip_through_nnet(tmp_path):
    model = nn.Sequential(nn.MaxPool2D(3, 2, 1, ceil_mode=True),
                          nn.AvgPool2D(2, ceil_mode=True, count_include_pad=False), nn.Reshape((2, 6)),
                          nn.MaxPool1D(3, 2, 1, ceil_mode=True), nn.AvgPool1D(2, padding=1))
    model.build((2, 7, 11))
    model.save(tmp_path / "pools.nnet")
    loaded = nn.load(tmp_path / "pools.nnet")
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in model.layers]
    x = distinct(3, 2, 7, 11, seed=7).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_pool1d_bad_input_names_layer_and_shape():
    with pytest.raises(nn.ShapeError, match=r"MaxPool1D\(kernel_size=2\).*\(N, C, L\).*\(N, 3, 8, 8\)"):
        nn.MaxPool1D(2).build((3, 8, 8))
    with pytest.raises(nn.ShapeError, match=r"AvgPool1D\(kernel_size=5\).*\(N, 3, 4\).*smaller"):
        nn.AvgPool1D(5).build((3, 4))
    with pytest.raises(nn.errors.ConfigError, match=r"MaxPool1D.*padding"):
        nn.MaxPool1D(2, padding=2)
    with pytest.raises(nn.errors.ConfigError, match=r"AvgPool1D.*kernel_size must be an int or a tuple of 1"):
        nn.AvgPool1D((2, 2))
