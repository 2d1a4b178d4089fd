import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.core import random as nnrandom
from neuronet.testing import check_gradients


def _forward(layer, x, training=True):
    if not layer.built:
        layer.build(x.shape[1:], dtype=str(x.dtype))
    return np.asarray(layer.ops.to_numpy(layer.forward(layer.ops.asarray(x), training=training)))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics_and_scaling(p):
    x = np.ones((200, 500), np.float32)
    y = _forward(nn.Dropout(p), x)
    dropped = np.mean(y == 0)
    assert abs(dropped - p) < 0.01  # 100k Bernoulli draws: std ~0.0016
    np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - p), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.03  # inverted dropout keeps the expectation


def test_identity_at_eval_and_with_p_zero():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    layer = nn.Dropout(0.5)
    np.testing.assert_array_equal(_forward(layer, x, training=False), x)
    np.testing.assert_array_equal(layer.backward(x), x)
    np.testing.assert_array_equal(_forward(nn.Dropout(0.0), x, training=True), x)


def test_backward_uses_the_forward_mask():
    x = np.random.default_rng(1).standard_normal((8, 10)) + 5.0  # no exact zeros
    layer = nn.Dropout(0.3)
    y = _forward(layer, x)
    dy = np.random.default_rng(2).standard_normal(x.shape)
    dx = layer.backward(dy)
    mask = y / x  # 0 or 1/(1-p)
    np.testing.assert_allclose(dx, dy * mask, rtol=1e-12)


def test_gradcheck_with_a_fixed_mask():
    x = np.random.default_rng(3).standard_normal((3, 5))
    check_gradients(nn.Dropout(0.4), x, reseed=lambda: nn.manual_seed(7))


def test_seed_reproduces_the_mask_on_both_backends():
    x = np.ones((16, 32), np.float32)
    nn.manual_seed(3)
    a = _forward(nn.Dropout(0.5), x)
    nn.manual_seed(3)
    layer = nn.Dropout(0.5)
    layer.build((32,))
    layer.to("torch")
    b = _forward(layer, x)
    np.testing.assert_array_equal(a, b)
    nn.manual_seed(4)
    assert not np.array_equal(a, _forward(nn.Dropout(0.5), x))


def test_bad_p_is_rejected():
    for p in (-0.1, 1.0, 2):
        with pytest.raises(ValueError, match="Dropout: p must be in"):
            nn.Dropout(p)


def test_dropout_in_a_model_is_off_in_predict():
    model = nn.Sequential(nn.Dense(4, 4), nn.Dropout(0.9))
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(model.predict(x), model.predict(x))
    np.testing.assert_allclose(model.predict(x), model.forward(x, training=False))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_drawn_in_chunks_is_the_one_draw_of_the_specification(dtype, monkeypatch):
    """The NumPy backend draws a large mask through a small buffer (an odd chunk here, so float32 draws
    straddle the generator's 64-bit outputs): the same uniforms as one ``rng.random`` of the whole shape."""
    from neuronet.backend import NumpyOps, numpy_ops

    monkeypatch.setattr(numpy_ops, "DRAW_CHUNK", 333)
    mask = NumpyOps().dropout_mask(0.6, np.random.default_rng(5), np.empty((7, 1000), bool), dtype)
    np.testing.assert_array_equal(mask, np.random.default_rng(5).random((7, 1000), dtype=dtype) < 0.6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_dropped_nan_stays_nan_as_in_pytorch(backend):
    x = np.full((64, 64), np.nan, np.float32)
    layer = nn.Dropout(0.5)
    layer.build((64,))
    layer.to(backend)
    assert np.isnan(_forward(layer, x)).all()  # NaN * 0, as torch.nn.functional.dropout gives
    assert np.isnan(np.asarray(layer.ops.to_numpy(layer.backward(layer.ops.asarray(x))))).all()


def test_inplace_writes_over_x_with_the_same_values_and_gradient(backend):
    """PyTorch's inplace=True: the same mask (same seed), the result in x's own memory, dL/dx unchanged;
    it survives save/load in its config."""
    x = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((6, 40)).astype(np.float32)
    results = []
    for inplace in (False, True):
        layer = nn.Dropout(0.3, inplace=inplace)
        layer.build((40,))
        layer.to(backend)
        xb = layer.ops.asarray(x.copy())
        nn.manual_seed(4)
        y = layer.forward(xb)
        assert (y is xb) == inplace and layer.ops.may_share_memory(y, xb) == inplace
        dx = layer.backward(layer.ops.asarray(dy))
        results.append((layer.ops.to_numpy(y).copy(), layer.ops.to_numpy(dx)))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    assert nn.Dropout(0.3, inplace=True).get_config() == {"p": 0.3, "inplace": True}
    assert repr(nn.Dropout(0.3, inplace=True)) == "Dropout(p=0.3, inplace=True)"


@pytest.fixture
def device_masks(monkeypatch):
    """The torch backend draws dropout's uniforms as it does off the CPU (by torch's generator, seeded
    from one draw of the NumPy generator), here on CPU tensors."""
    import neuronet.backend.torch_ops as torch_ops

    ops = nn.backends.get_ops("torch")
    real = torch_ops._on_cpu
    monkeypatch.setattr(torch_ops, "_on_cpu", lambda x: False if x.dtype == torch.bool else real(x))
    monkeypatch.setattr(ops, "host_masks", False)
    return ops


def test_device_masks_are_seeded_by_the_numpy_generator_and_take_one_draw(device_masks):
    ops, shape = device_masks, (300, 400)

    def mask(seed):
        nn.manual_seed(seed)
        out = ops.dropout_mask(0.8, nnrandom.generator(), ops.empty(shape, "bool"), "float32")
        return np.array(ops.to_numpy(out)), nnrandom.generator().random()

    (a, after), (b, _), (c, _) = mask(0), mask(0), mask(1)
    np.testing.assert_array_equal(a, b)  # a seed fixes the mask
    assert not np.array_equal(a, c)
    assert abs(a.mean() - 0.8) < 0.005
    reference = np.random.default_rng(0)
    reference.integers(2**63)
    assert after == reference.random()  # the generator moved by one draw, whatever the mask's size


def test_host_masks_are_the_numpy_backends(device_masks, monkeypatch):
    monkeypatch.setattr(device_masks, "host_masks", True)
    masks = []
    for ops in (nn.backends.get_ops("numpy"), device_masks):
        nn.manual_seed(2)
        masks.append(np.asarray(ops.to_numpy(ops.dropout_mask(0.7, nnrandom.generator(),
                                                              ops.empty((50, 60), "bool"), "float32"))))
    np.testing.assert_array_equal(masks[0], masks[1])


def test_remat_redraws_the_same_device_masks(device_masks):
    """Remat's recomputation restores the NumPy generator, so the device generator gets the same seed and
    the same masks: a remat'd block with dropout trains exactly as the block."""
    def run(remat):
        nn.manual_seed(0)
        block = nn.TransformerBlock(8, 2, 16, causal=True, dropout=0.3)
        model = nn.Sequential(nn.Remat(block) if remat else block, nn.Flatten(), nn.Dense(5 * 8, 3))
        model.build((5, 8))
        model.to("torch")
        model.compile(nn.Adam(1e-2), "cross_entropy")
        x = np.random.default_rng(1).standard_normal((4, 5, 8)).astype(np.float32)
        nn.manual_seed(4)
        return [model.train_step(x, np.arange(4) % 3) for _ in range(3)], model.state_dict()

    plain, remat = run(False), run(True)
    assert plain[0] == remat[0]
    for name, value in plain[1].items():
        np.testing.assert_array_equal(remat[1][name], value, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 50001), (64, 3000), (5, 7)])
def test_masks_drawn_in_parallel_parts_are_the_one_stream(dtype, shape, rows_on_threads):
    """The NumPy backend draws a large mask in row blocks at once, each from the PCG64 stream advanced to its
    part (three parts here, odd sizes): the same mask as the reference's single draw, and the generator
    left where that draw leaves it; a generator holding half an output draws in one part."""
    from neuronet.backend import Ops

    ops = nn.backends.get_ops("numpy")
    for prime in (False, True):  # True: rng.random(dtype=float32) once first (half a 64-bit output kept)
        rngs = [np.random.default_rng(3), np.random.default_rng(3)]
        if prime:
            for r in rngs:
                r.random(dtype=np.float32)
        mask = ops.dropout_mask(0.7, rngs[0], np.empty(shape, bool), dtype)
        expected = Ops.dropout_mask(ops, 0.7, rngs[1], np.empty(shape, bool), dtype)
        np.testing.assert_array_equal(mask, expected)
        assert rngs[0].bit_generator.state == rngs[1].bit_generator.state
