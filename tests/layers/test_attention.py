import numpy as np
import pytest
import torch
from _transformer_refs import SelfAttention

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch


def _on(layer, backend, shape):
    layer.build(shape, dtype="float64")
    return layer.to(backend)


def _torch_mha(dim, heads):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():  # torch zeroes the biases: give them values so their gradients are tested
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    return m


def _call(causal):
    def forward(m, x):
        t = x.shape[1]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(t, dtype=x.dtype) if causal else None
        return m(x, x, x, attn_mask=mask, need_weights=False)[0]
    return forward


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("blocks", ["one", "per sample"])
def test_attention_matches_torch(causal, backend, blocks, request):
    if blocks == "per sample":  # the NumPy backend runs each sample's attention on its own thread
        request.getfixturevalue("rows_on_threads")
    x = np.random.default_rng(1).standard_normal((3, 5, 8))
    layer = _on(nn.MultiHeadAttention(8, 2, causal=causal), backend, (5, 8))
    compare_with_torch(layer, _torch_mha(8, 2), x, torch_forward=_call(causal))


def test_attention_state_dict_keys_match_torch():
    layer = nn.MultiHeadAttention(8, 4)
    layer.build((3, 8))
    ours = {k: v.shape for k, v in layer.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in torch.nn.MultiheadAttention(8, 4).state_dict().items()}


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_rope_matches_reference(causal, backend):
    torch.manual_seed(0)
    x = np.random.default_rng(2).standard_normal((2, 6, 8))
    layer = _on(nn.MultiHeadAttention(8, 2, causal=causal, rope=True), backend, (6, 8))
    compare_with_torch(layer, SelfAttention(8, 2, causal, use_rope=True), x)


@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"causal": True, "rope": True}])
def test_attention_gradcheck(opts):
    check_gradients(nn.MultiHeadAttention(4, 2, **opts), np.random.default_rng(3).standard_normal((2, 3, 4)))


def test_attention_shorter_sequence_after_build(backend):
    """A model built for T = 6 runs on T = 3 (sampling), with the causal mask and rope tables cut to size."""
    torch.manual_seed(0)
    x = np.random.default_rng(4).standard_normal((1, 3, 8))
    layer = _on(nn.MultiHeadAttention(8, 2, causal=True, rope=True), backend, (6, 8))
    layer.forward(layer.ops.asarray(np.zeros((1, 6, 8))))
    compare_with_torch(layer, SelfAttention(8, 2, True, use_rope=True), x)


def test_attention_dropout_identity_at_eval_and_scaled_while_training():
    x = np.random.default_rng(5).standard_normal((4, 16, 8))
    plain, drop = nn.MultiHeadAttention(8, 2), nn.MultiHeadAttention(8, 2, dropout=0.5)
    plain.build((16, 8), dtype="float64")
    drop.build((16, 8), dtype="float64")
    drop.load_state_dict(plain.state_dict())
    np.testing.assert_allclose(drop.forward(x, training=False), plain.forward(x, training=False))
    # Inverted dropout keeps the expectation: averaged over many masks the output approaches eval's.
    mean = np.mean([np.array(drop.forward(x, training=True)) for _ in range(300)], axis=0)
    ref = plain.forward(x, training=False)
    assert np.abs(mean - ref).mean() < 0.1 * np.abs(ref).mean()
    assert np.abs(np.array(drop.forward(x, training=True)) - ref).mean() > 0.1 * np.abs(ref).mean()


@pytest.mark.parametrize("rope", [False, True])
def test_attention_dropout_gradcheck(rope, rows_on_threads):
    x = np.random.default_rng(6).standard_normal((3, 4, 4))
    layer = nn.MultiHeadAttention(4, 2, causal=True, dropout=0.3, rope=rope)
    check_gradients(layer, x, reseed=lambda: nn.manual_seed(7))


def test_attention_bad_configuration_and_input():
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(10, 3\): dim 10 is not divisible by"):
        nn.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"rope needs an even head size, got 3"):
        nn.MultiHeadAttention(6, 2, rope=True)
    model = nn.Sequential(nn.MultiHeadAttention(8, 2))
    model.build((5, 8))
    with pytest.raises(nn.ShapeError, match=r"MultiHeadAttention\(8, 2\).*\(N, T, 8\).*\(N, 5, 6\)"):
        model.forward(np.zeros((1, 5, 6), np.float32))


# ----------------------------------------------------------------- the fused kernel (a GPU's path)
@pytest.fixture
def fused_on_cpu(monkeypatch):
    """The torch backend's fused attention (on a GPU the memory-efficient kernel) run on the CPU by
    PyTorch's CPU flash kernel, the same calls forward and backward; returns the count of fused
    backwards."""
    from neuronet.backend import get_ops

    ops = get_ops("torch-cpu")  # (the CPU also where gpu_check runs these tests with "torch" on CUDA)
    monkeypatch.setattr(ops, "fused_attention_devices", ("cpu",))
    backwards = []
    real = ops.fused_attention_backward
    monkeypatch.setattr(ops, "fused_attention_backward", lambda *a: backwards.append(1) or real(*a))
    return backwards


@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"causal": True, "rope": True}])
def test_fused_attention_matches_torch(opts, fused_on_cpu):
    """Values and every gradient (float64) against PyTorch through the fused kernel, which keeps no
    probabilities."""
    x = np.random.default_rng(8).standard_normal((3, 5, 8))
    layer = _on(nn.MultiHeadAttention(8, 2, **opts), "torch-cpu", (5, 8))
    reference = SelfAttention(8, 2, opts.get("causal", False), use_rope=True) if opts.get("rope") else \
        _torch_mha(8, 2)
    compare_with_torch(layer, reference, x, torch_forward=None if opts.get("rope") else
                       _call(opts.get("causal", False)))
    assert fused_on_cpu and layer.__dict__.get("_workspace", {}).get("probs") is None


def test_fused_cross_attention_trains_as_the_explicit_path(fused_on_cpu, monkeypatch):
    """Cross-attention (Tq != Tk) in a functional model: the same outputs, input and weight gradients."""
    from neuronet.backend import get_ops

    xs = [np.random.default_rng(9).standard_normal(s) for s in ((3, 5, 8), (3, 7, 8))]
    dy = np.random.default_rng(10).standard_normal((3, 5, 8))
    runs = []
    for fused in (False, True):
        monkeypatch.setattr(get_ops("torch-cpu"), "fused_attention_devices", ("cpu",) if fused else ())
        nn.manual_seed(0)
        q, kv = nn.Input((5, 8)), nn.Input((7, 8))
        model = nn.Model([q, kv], nn.MultiHeadAttention(8, 2)([q, kv]))
        model.build([(5, 8), (7, 8)], dtype="float64")
        model.to("torch-cpu")
        y = model.forward([model.ops.asarray(a) for a in xs])
        dx = model.backward(model.ops.asarray(dy))
        runs.append([y.numpy().copy(), *(d.numpy().copy() for d in dx), model.flat_grads.numpy().copy()])
    assert len(fused_on_cpu) == 1
    for explicit, fused in zip(*runs, strict=True):
        np.testing.assert_allclose(fused, explicit, rtol=1e-10, atol=1e-12)


def test_fused_attention_under_no_grad_keeps_nothing_for_a_backward(fused_on_cpu):
    layer = _on(nn.MultiHeadAttention(8, 2, causal=True), "torch-cpu", (5, 8))
    x = layer.ops.asarray(np.random.default_rng(11).standard_normal((2, 5, 8)))
    with_grad = layer.forward(x).numpy().copy()
    with nn.no_grad():
        np.testing.assert_allclose(layer.forward(x).numpy(), with_grad, rtol=1e-12)
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(layer.ops.asarray(np.ones((2, 5, 8))))
    assert not fused_on_cpu


def test_attention_with_dropout_keeps_the_explicit_path(fused_on_cpu):
    """Dropout's masks come from neuronet's generator: never the fused kernel while they are drawn."""
    layer = _on(nn.MultiHeadAttention(8, 2, dropout=0.5), "torch-cpu", (5, 8))
    x = layer.ops.asarray(np.random.default_rng(12).standard_normal((2, 5, 8)))
    layer.forward(x, training=True)
    layer.backward(layer.ops.asarray(np.ones((2, 5, 8))))
    assert not fused_on_cpu and layer._sdpa_saved is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("opts", [{}, {"causal": True, "rope": True}, {"cross": True}])
def test_fused_attention_on_cuda_matches_the_explicit_path(opts, monkeypatch):
    """On a GPU the kernel scaled_dot_product_attention picks for float32 (the memory-efficient one) against
    the explicit products and softmax: outputs, input and weight gradients."""
    from neuronet.backend import get_ops

    cross = opts.pop("cross", False)
    rng = np.random.default_rng(13)
    shapes = [(4, 16, 64), (4, 24, 64)] if cross else [(4, 16, 64)]
    xs, dy = [rng.standard_normal(s).astype(np.float32) for s in shapes], rng.standard_normal((4, 16, 64))
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(get_ops("cuda"), "fused_attention_devices", ("cuda",) if fused else ())
        nn.manual_seed(0)
        layer = nn.MultiHeadAttention(64, 4, **opts)
        if cross:
            inputs = [nn.Input(s[1:]) for s in shapes]
            model = nn.Model(inputs, layer(inputs))
            model.build([s[1:] for s in shapes])
        else:
            model = nn.Sequential(layer)
            model.build(shapes[0][1:])
        model.to("cuda")
        x = [model.ops.asarray(a) for a in xs]
        y = model.forward(x if cross else x[0])
        dx = model.backward(model.ops.asarray(dy.astype(np.float32)))
        assert (layer._sdpa_saved is not None) == fused
        runs.append([t.cpu().numpy() for t in (y, *(dx if cross else [dx]), model.flat_grads)])
    for got, want in zip(*runs, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
