import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.errors import ConfigError
from neuronet.testing import check_gradients, compare_with_torch


def built(layer, shape, backend):
    layer.build(shape, dtype="float64")
    return layer.to(backend)


def _bn_then_relu(module, x):
    return torch.relu(module(x))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_matches_torch(training, backend):
    torch.manual_seed(0)
    module = torch.nn.BatchNorm2d(3)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
        module.running_mean.uniform_(-1, 1)
        module.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 6)) * 2 + 1
    layer = built(nn.BatchNorm2D(3), (3, 5, 6), backend)
    compare_with_torch(layer, module, x, training=training)


@pytest.mark.parametrize("cls, torch_cls, shape", [(nn.BatchNorm2D, torch.nn.BatchNorm2d, (5, 3, 4)),
                                                   (nn.BatchNorm1D, torch.nn.BatchNorm1d, (5,))])
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_in_channel_blocks_matches_torch(cls, torch_cls, shape, training, activation,
                                                   rows_on_threads, monkeypatch):
    """The NumPy backend's passes (plain and with the fused ReLU) over blocks of channels on three threads
    (5 channels: 1, 2, 2), down each channel's values (N, C, H, W) and along the rows (N, C)."""
    from neuronet.backend import numpy_ops

    monkeypatch.setattr(numpy_ops, "PASS_SPLIT_WORK", 0)
    monkeypatch.setattr(numpy_ops, "BULK_SPLIT_WORK", 0)
    torch.manual_seed(1)
    module = torch_cls(5)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(2).standard_normal((7, *shape)) * 2 + 1 - (activation is not None)
    compare_with_torch(built(cls(5, activation=activation), shape, "numpy"), module, x,
                       training=training, torch_forward=_bn_then_relu if activation else None)


@pytest.mark.parametrize("shape", [(5,), (5, 7)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_matches_torch(shape, training, backend):
    torch.manual_seed(0)
    module = torch.nn.BatchNorm1d(5, eps=1e-3, momentum=0.2)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(1).standard_normal((6, *shape))
    layer = built(nn.BatchNorm1D(5, eps=1e-3, momentum=0.2), shape, backend)
    compare_with_torch(layer, module, x, training=training)


def test_running_statistics_follow_torch_over_several_steps(backend):
    module = torch.nn.BatchNorm2d(4, momentum=0.3).double()
    layer = built(nn.BatchNorm2D(4, momentum=0.3), (4, 3, 5), backend)
    rng = np.random.default_rng(2)
    for _ in range(5):
        x = rng.standard_normal((3, 4, 3, 5)) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)
        module(torch.tensor(x))
        layer.forward(layer.ops.asarray(x), training=True)
    state = layer.state_dict()
    for key, value in module.state_dict().items():
        np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-12, atol=1e-12, err_msg=key)
    assert state["num_batches_tracked"] == 5 and state["num_batches_tracked"].dtype == np.int64
    x = rng.standard_normal((2, 4, 3, 5))
    module.eval()
    np.testing.assert_allclose(layer.ops.to_numpy(layer.forward(layer.ops.asarray(x), training=False)),
                               module(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_torch_backend_running_statistics_in_the_kernel_or_apart(threads, activation, monkeypatch):
    """With torch on two threads (and on a GPU) PyTorch's one kernel computes the statistics into the
    layer's workspaces and updates the running averages (``fused_batch_norm_training``); on one thread the
    NumPy kernels run and the layer updates them: both follow torch over several steps, values and
    gradients."""
    from neuronet.backend import get_ops

    ops, fused = get_ops("torch-cpu"), []  # (the CPU's threads; on a GPU PyTorch's kernel always runs)
    real = ops.fused_batch_norm_training
    monkeypatch.setattr(ops, "fused_batch_norm_training", lambda *a: fused.append(real(*a)) or fused[-1])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = torch.nn.BatchNorm2d(4, momentum=0.3).double()
        layer = built(nn.BatchNorm2D(4, momentum=0.3, activation=activation), (4, 3, 5), "torch-cpu")
        rng = np.random.default_rng(3)
        for _ in range(4):
            x = rng.standard_normal((3, 4, 3, 5)) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)
            g, xt = rng.standard_normal(x.shape), torch.tensor(x, requires_grad=True)
            y = module(xt)
            ((torch.relu(y) if activation else y) * torch.tensor(g)).sum().backward()
            ours = layer.forward(layer.ops.asarray(x), training=True)
            np.testing.assert_allclose(ours.numpy(), (torch.relu(y) if activation else y).detach().numpy(),
                                       rtol=1e-10, atol=1e-12)
            dx = layer.backward(layer.ops.asarray(g))
            np.testing.assert_allclose(dx.numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-10)
        for key, value in module.state_dict().items():
            np.testing.assert_allclose(layer.state_dict()[key], value.numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=key)
        np.testing.assert_allclose(layer.grads["weight"].numpy(), module.weight.grad.numpy(), rtol=1e-9)
        np.testing.assert_allclose(layer.grads["bias"].numpy(), module.bias.grad.numpy(), rtol=1e-9)
    finally:
        torch.set_num_threads(before)
    assert len(fused) == 4 and all((f is not None) == (threads == 2) for f in fused)


def test_state_dict_names_are_pytorchs_and_load_both_ways():
    model = nn.Sequential(nn.Conv2D(1, 2, 3), nn.BatchNorm2D(2))
    model.build((1, 6, 6))
    torch_model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    assert set(model.state_dict()) == set(torch_model.state_dict())
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    model.load_state_dict(torch_model.state_dict())


@pytest.mark.parametrize("shape", [(2, 2, 3), (2,)], ids=["channels_of_planes", "features"])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradcheck(training, shape):
    x = np.random.default_rng(3).standard_normal((3, *shape))
    layer = (nn.BatchNorm2D if len(shape) == 3 else nn.BatchNorm1D)(2)
    layer.build(shape, dtype="float64")
    layer.params["weight"][...] = [0.7, 1.3]
    layer.params["bias"][...] = [0.1, -0.2]
    # The running statistics change on every training forward; the gradient does not depend on them.
    check_gradients(layer, x, training=training)


def test_batchnorm_bad_input():
    with pytest.raises(nn.ShapeError, match=r"BatchNorm2D\(3\).*\(N, 3, H, W\).*\(N, 4, 5, 5\)"):
        nn.BatchNorm2D(3).build((4, 5, 5))
    with pytest.raises(nn.ShapeError, match=r"BatchNorm1D\(3\).*\(N, 3\) or \(N, 3, L\).*\(N, 3, 2, 2\)"):
        nn.BatchNorm1D(3).build((3, 2, 2))
    layer = nn.BatchNorm1D(3)
    layer.build((3,))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.forward(np.zeros((1, 3), np.float32), training=True)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls, torch_cls, shape", [(nn.BatchNorm2D, torch.nn.BatchNorm2d, (3, 5, 6)),
                                                   (nn.BatchNorm1D, torch.nn.BatchNorm1d, (3, 7))])
def test_batchnorm_with_fused_relu_matches_torch(cls, torch_cls, shape, training, backend):
    """activation="relu" is BatchNorm followed by ReLU: values, dL/dx and both weight gradients (about
    half the outputs negative, so the mask matters in every channel)."""
    torch.manual_seed(0)
    module = torch_cls(3)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
        module.running_mean.uniform_(-1, 1)
        module.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(4).standard_normal((4, *shape)) * 2 + 1
    layer = built(cls(3, activation="relu"), shape, backend)
    result = compare_with_torch(layer, module, x, training=training, torch_forward=_bn_then_relu)
    assert 0.2 < np.mean(result["y"] == 0) < 0.8


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_with_fused_relu_gradcheck(training):
    x = np.random.default_rng(6).standard_normal((3, 2, 2, 3))
    layer = nn.BatchNorm2D(2, activation="relu")
    layer.build((2, 2, 3), dtype="float64")
    layer.params["weight"][...] = [0.7, 1.3]
    layer.params["bias"][...] = [0.1, -0.2]
    check_gradients(layer, x, training=training)


def test_batchnorm_activation_config_and_errors():
    layer = nn.BatchNorm2D(4, activation="relu")
    assert layer.get_config()["activation"] == "relu"
    assert "activation='relu'" in repr(layer)
    again = nn.BatchNorm2D(**layer.get_config())
    assert again.activation == "relu"
    assert nn.BatchNorm1D(4).get_config()["activation"] is None
    with pytest.raises(ConfigError, match=r"BatchNorm2D: activation must be None or 'relu'.*'gelu'"):
        nn.BatchNorm2D(4, activation="gelu")
