import numpy as np
import pytest
import torch
import torch.nn.functional as F

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch, numerical_gradient


class TorchExpert(torch.nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.linear1 = torch.nn.Linear(dim, hidden)
        self.linear2 = torch.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.linear2(F.gelu(self.linear1(x)))


class TorchMoE(torch.nn.Module):
    """The reference, written from API.md's description: top-k softmax gate, Switch aux loss."""

    def __init__(self, dim, hidden, num_experts, top_k):
        super().__init__()
        self.top_k = top_k
        self.gate = torch.nn.Linear(dim, num_experts, bias=False)
        self.experts = torch.nn.ModuleList(TorchExpert(dim, hidden) for _ in range(num_experts))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.gate(x)
        top, idx = torch.topk(logits, self.top_k, dim=-1)
        gates = torch.softmax(top, dim=-1)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(idx == e, as_tuple=True)
            if len(token):
                y = y.index_add(0, token, gates[token, slot, None] * expert(x[token]))
        num_experts = len(self.experts)
        f = torch.bincount(idx[:, 0], minlength=num_experts).to(x.dtype) / len(x)  # constant in the gradient
        self.aux_loss = num_experts * (f * torch.softmax(logits, dim=-1).mean(dim=0)).sum()
        return y.reshape(shape)


def _pair(dim=5, hidden=7, num_experts=4, top_k=2, x_shape=(9, 5), seed=0):
    torch.manual_seed(seed)
    module = TorchMoE(dim, hidden, num_experts, top_k).double()
    layer = nn.MoE(dim, hidden, num_experts, top_k)
    x = np.random.default_rng(seed).standard_normal(x_shape)
    return layer, module, x


@pytest.mark.parametrize("num_experts, top_k, x_shape", [(4, 2, (9, 5)), (3, 1, (6, 5)), (4, 4, (5, 5)),
                                                         (5, 2, (2, 6, 5))])
def test_moe_matches_torch(num_experts, top_k, x_shape):
    layer, module, x = _pair(num_experts=num_experts, top_k=top_k, x_shape=x_shape)
    compare_with_torch(layer, module, x)
    np.testing.assert_allclose(layer.aux_loss, module.aux_loss.item(), rtol=1e-10)


def test_moe_state_dict_keys_are_pytorch_names():
    layer, module, x = _pair()
    layer.build(x.shape[1:])
    assert set(layer.state_dict()) == set(module.state_dict())
    assert layer.num_params() == sum(p.numel() for p in module.parameters())


def test_moe_aux_gradient_matches_torch():
    layer, module, x = _pair(x_shape=(12, 5))
    layer.build(x.shape[1:], dtype="float64")
    layer.load_state_dict(module.state_dict())
    dy = np.random.default_rng(1).standard_normal(x.shape)
    scale = 0.37
    xt = torch.tensor(x, requires_grad=True)
    ((module(xt) * torch.tensor(dy)).sum() + scale * module.aux_loss).backward()
    layer.forward(x)
    layer.zero_grad()
    layer.set_aux_loss_scale(scale)
    dx = layer.backward(dy.copy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-10)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(layer.grads[name], p.grad.numpy(), atol=1e-10, err_msg=name)


def test_moe_gradcheck():
    layer = nn.MoE(4, 6, num_experts=3, top_k=2)
    check_gradients(layer, np.random.default_rng(2).standard_normal((7, 4)))


def test_moe_aux_gradcheck():
    """Numerical gradient of the aux loss alone (f is piecewise constant, so it drops out)."""
    layer = nn.MoE(4, 6, num_experts=3, top_k=2)
    x = np.random.default_rng(3).standard_normal((10, 4))
    layer.build(x.shape[1:], dtype="float64")
    layer.forward(x)
    layer.zero_grad()
    layer.set_aux_loss_scale(1.0)
    dx = layer.backward(np.zeros_like(x))

    def aux() -> float:
        layer.forward(x)
        return layer.aux_loss

    np.testing.assert_allclose(dx, numerical_gradient(aux, x), atol=1e-7)
    gate = layer.params["gate.weight"]
    np.testing.assert_allclose(layer.grads["gate.weight"], numerical_gradient(aux, gate), atol=1e-7)


def test_moe_torch_backend_matches_numpy():
    x = np.random.default_rng(4).standard_normal((16, 6)).astype(np.float32)
    dy = np.random.default_rng(5).standard_normal((16, 6)).astype(np.float32)
    a = nn.MoE(6, 8, num_experts=4, top_k=2)
    a.build((6,))
    b = nn.MoE(6, 8, num_experts=4, top_k=2)
    b.build((6,))
    b.load_state_dict(a.state_dict())
    b.to("torch")
    for layer in (a, b):
        layer.forward(layer.ops.asarray(x))
        layer.set_aux_loss_scale(0.5)
    np.testing.assert_allclose(b.ops.to_numpy(b.forward(b.ops.asarray(x))), a.forward(x), atol=1e-5)
    np.testing.assert_allclose(b.aux_loss, a.aux_loss, rtol=1e-5)
    dxa, dxb = a.backward(dy), b.backward(b.ops.asarray(dy))
    np.testing.assert_allclose(b.ops.to_numpy(dxb), dxa, atol=1e-5)
    np.testing.assert_allclose(b.ops.to_numpy(b.flat_grads), a.flat_grads, atol=1e-5)


def test_train_step_adds_aux_loss():
    model = nn.Sequential(nn.Dense(6, 6), nn.MoE(6, 8, num_experts=4, top_k=2, aux_loss_weight=0.5))
    model.compile(optimizer=nn.Adam(0.0), loss=nn.MSELoss())
    x = np.random.default_rng(6).standard_normal((10, 6)).astype(np.float32)
    y = np.random.default_rng(7).standard_normal((10, 6)).astype(np.float32)
    loss = model.train_step(x, y)
    moe = model[1]
    task = float(np.mean((model.forward(x) - y) ** 2))
    assert moe.aux_loss > 0
    np.testing.assert_allclose(loss, task + 0.5 * moe.aux_loss, rtol=1e-5)
    assert moe._aux_loss_scale == 0.0  # train_step set it back


@pytest.mark.parametrize("num_experts, top_k", [(4, 5), (4, 0), (0, 1)])
def test_moe_rejects_bad_top_k(num_experts, top_k):
    with pytest.raises(ValueError, match=r"MoE: need 1 <= top_k <= num_experts"):
        nn.MoE(4, 8, num_experts=num_experts, top_k=top_k)


def test_moe_wrong_dim_names_layer_and_shapes():
    model = nn.Sequential(nn.MoE(4, 8, num_experts=2, top_k=1))
    model.build((4,))
    expected = r"MoE\(4, 8, num_experts=2, top_k=1\).*\(N, \.\.\., 4\).*\(3, 5\)"
    with pytest.raises(nn.ShapeError, match=expected):
        model.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(nn.ShapeError, match=r"MoE.*\(N, \.\.\., 4\)"):
        nn.Sequential(nn.MoE(4, 8, num_experts=2, top_k=1)).build((5,))
