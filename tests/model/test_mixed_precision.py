"""compile(mixed_precision=...): products in bfloat16/float16 on the torch backend, float32 elsewhere, and
float16's dynamic loss scaling (skip on overflow, back off, grow)."""

import numpy as np
import pytest

import neuronet as nn
from neuronet.errors import ConfigError

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _mlp(mixed_precision, seed=0):
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Dense(12, 32, activation="relu"), nn.Dense(32, 3))
    model.compile(nn.SGD(0.1), "cross_entropy", mixed_precision=mixed_precision)
    model.build((12,))
    return model.to("torch")


def _data(n=16):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 12)).astype(np.float32), rng.integers(0, 3, n)


def test_bfloat16_forward_is_the_bfloat16_product_and_differs_from_float32():
    x, _ = _data()
    model = _mlp("bfloat16")
    w1, b1, w2, b2 = (torch.from_numpy(np.array(model.ops.to_numpy(p))) for _, p in model.named_parameters())
    low = torch.bfloat16
    h = torch.relu(torch.matmul(torch.from_numpy(x).to(low), w1.t().to(low)).float() + b1)
    expected = (torch.matmul(h.to(low), w2.t().to(low)).float() + b2).numpy()
    got = model.predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    exact = (torch.relu(torch.from_numpy(x) @ w1.t() + b1) @ w2.t() + b2).numpy()
    assert np.abs(got - exact).max() > 1e-4  # the products really ran in bfloat16


def test_bfloat16_convolution_runs_in_bfloat16():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2D(2, 4, 3, padding=1))
    model.compile(mixed_precision="bfloat16")
    model.build((2, 6, 6))
    model.to("torch")
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    w, b = (torch.from_numpy(np.array(model.ops.to_numpy(p))) for _, p in model.named_parameters())
    low = torch.bfloat16
    expected = F.conv2d(torch.from_numpy(x).to(low), w.to(low), b.to(low), padding=1).float().numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=1e-6)


def test_bfloat16_step_matches_torch_autocast_gradients():
    x, y = _data()
    model = _mlp("bfloat16")
    first, second = torch.nn.Linear(12, 32), torch.nn.Linear(32, 3)
    ref = torch.nn.Sequential(first, torch.nn.ReLU(), second)
    params = [torch.from_numpy(np.array(model.ops.to_numpy(p))) for _, p in model.named_parameters()]
    with torch.no_grad():
        for p, value in zip([first.weight, first.bias, second.weight, second.bias], params, strict=True):
            p.copy_(value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ref(torch.from_numpy(x))
    F.cross_entropy(out.float(), torch.from_numpy(y)).backward()
    model._gradients(model.ops.asarray(x), model.ops.asarray(y))
    flat = np.array(model.ops.to_numpy(model.flat_grads))
    expected = np.concatenate([p.grad.numpy().reshape(-1) for p in ref.parameters()])
    np.testing.assert_allclose(flat, expected, rtol=0.05, atol=2e-3)


def test_float16_loss_scaling_skips_an_overflowing_step_and_backs_off():
    x, y = _data()
    model = _mlp("float16")
    scale = model.loss_scale
    assert scale.scale == 2.0 ** 16
    before = np.array(model.ops.to_numpy(model.flat_params))
    scale.scale = 1e38  # the scaled gradients overflow float32
    model.train_step(model.ops.asarray(x), model.ops.asarray(y))
    np.testing.assert_array_equal(np.array(model.ops.to_numpy(model.flat_params)), before)
    assert model.skipped_steps == 1 and scale.scale == 0.5e38
    scale.scale, scale.growth_interval = 1024.0, 2
    for _ in range(2):
        model.train_step(model.ops.asarray(x), model.ops.asarray(y))
    assert scale.scale == 2048.0 and model.skipped_steps == 1
    assert not np.array_equal(np.array(model.ops.to_numpy(model.flat_params)), before)


def test_float16_scaled_gradients_are_unscaled_before_the_step():
    x, y = _data()
    plain, scaled = _mlp(None), _mlp("float16")
    plain._gradients(plain.ops.asarray(x), plain.ops.asarray(y))
    scaled._gradients(scaled.ops.asarray(x), scaled.ops.asarray(y))
    assert scaled.loss_scale.unscale_(scaled.ops, scaled.flat_grads)
    np.testing.assert_allclose(np.array(scaled.ops.to_numpy(scaled.flat_grads)),
                               np.array(plain.ops.to_numpy(plain.flat_grads)), rtol=0.05, atol=2e-3)


def test_bfloat16_training_converges_like_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 12)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64) + (x[:, 3] > 1)
    losses = {}
    for mp in (None, "bfloat16", "float16"):
        model = _mlp(mp)
        losses[mp] = model.fit(x, y, epochs=8, batch_size=32, verbose=0, shuffle=False).history["loss"][-1]
    assert losses[None] < 0.5
    assert abs(losses["bfloat16"] - losses[None]) < 0.05 and abs(losses["float16"] - losses[None]) < 0.05


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="mixed_precision must be"):
        nn.Sequential(nn.Dense(2, 2)).compile(mixed_precision="int8")
    model = nn.Sequential(nn.Dense(2, 2), dtype="float64")
    with pytest.raises(ConfigError, match="float32 model"):
        model.compile(mixed_precision="bfloat16")
    numpy_model = nn.Sequential(nn.Dense(2, 2))
    numpy_model.compile(mixed_precision="bfloat16")
    with pytest.raises(ConfigError, match="needs the torch backend"):
        numpy_model.predict(np.zeros((1, 2), np.float32))
    x, y = _data(8)
    with pytest.raises(ConfigError, match="float16 loss scaling"):
        _mlp("float16").fit(x, y, batch_size=4, workers=2, verbose=0)


def test_ops_compute_in_casts_every_product_and_restores():
    from neuronet.backend.torch_ops import TorchOps

    ops = TorchOps("cpu")
    rng = np.random.default_rng(0)
    a, b = (torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in ((5, 7), (7, 3)))
    low = (a.to(torch.float16) @ b.to(torch.float16)).float()
    out, acc = torch.empty(5, 3), torch.ones(5, 3)
    with ops.compute_in("float16"):
        ops.matmul(a, b, out)
        ops.matmul_acc(a, b, acc)
        with ops.compute_in(None):  # nested plain context: unchanged
            assert torch.allclose(ops.matmul(a, b, torch.empty(5, 3)), a @ b, rtol=1e-6, atol=1e-6)
    assert torch.equal(out, low) and torch.equal(acc, low + 1)
    assert torch.allclose(ops.matmul(a, b, out), a @ b, rtol=1e-6, atol=1e-6)  # restored on exit
    assert not torch.allclose(low, a @ b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="needs the torch backend"):
        nn.backend.NumpyOps().compute_in("bfloat16")


def test_float16_is_refused_with_the_cuda_graph():
    x, y = _data(8)
    model = nn.Sequential(nn.Dense(12, 3))
    model.compile(nn.SGD(0.1), "cross_entropy", mixed_precision="float16", cuda_graph=True)
    model.build((12,))
    model.to("torch")
    with pytest.raises(ConfigError, match="loss scale changes between steps"):
        model.train_step(model.ops.asarray(x), model.ops.asarray(y))
