import numpy as np
import pytest
import torch
from _transformer_refs import Block

import neuronet as nn
from neuronet.layers import transformer
from neuronet.testing import assert_step_allocates_nothing, check_gradients, compare_with_torch


def _on(layer, backend, shape):
    layer.build(shape, dtype="float64")
    return layer.to(backend)


def _perturbed(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module


def _encoder_layer(causal):
    torch.manual_seed(0)
    m = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True,
                                         norm_first=True)

    def forward(mod, x):
        t = x.shape[1]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(t, dtype=x.dtype) if causal else None
        return mod(x, src_mask=mask, is_causal=causal)
    return _perturbed(m), forward


@pytest.mark.parametrize("causal", [False, True])
def test_block_matches_torch_encoder_layer(causal, backend):
    module, forward = _encoder_layer(causal)
    layer = _on(nn.TransformerBlock(8, 2, 16, causal=causal), backend, (5, 8))
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    compare_with_torch(layer, module, x, torch_forward=forward)


def test_block_state_dict_keys_match_torch():
    layer = nn.TransformerBlock(8, 2, 16)
    layer.build((5, 8))
    torch_layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=True)
    assert {k: v.shape for k, v in layer.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in torch_layer.state_dict().items()}


VARIANTS = [
    {"norm": "rms"},
    {"ffn": "swiglu"},
    {"rope": True},
    {"norm": "rms", "ffn": "swiglu", "rope": True},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_llama_variants_match_reference(variant, backend):
    torch.manual_seed(0)
    opts = {"norm": "layer", "ffn": "gelu", "rope": False, **variant}
    module = _perturbed(Block(8, 2, 12, True, opts["norm"], opts["ffn"], opts["rope"]))
    layer = _on(nn.TransformerBlock(8, 2, 12, causal=True, **variant), backend, (6, 8))
    compare_with_torch(layer, module, np.random.default_rng(2).standard_normal((2, 6, 8)))


def test_llama_block_keys():
    layer = nn.TransformerBlock(8, 2, 12, norm="rms", ffn="swiglu", rope=True)
    layer.build((4, 8))
    assert sorted(layer.state_dict()) == sorted([
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight", "norm1.weight",
        "norm2.weight"])


@pytest.mark.parametrize("opts", [{"causal": True}, {"norm": "rms", "ffn": "swiglu", "rope": True}])
def test_block_gradcheck(opts):
    check_gradients(nn.TransformerBlock(4, 2, 6, **opts), np.random.default_rng(3).standard_normal((2, 3, 4)))


def test_block_bad_arguments():
    with pytest.raises(ValueError, match=r"not divisible by num_heads 3"):
        nn.TransformerBlock(8, 3, 16)
    with pytest.raises(ValueError, match=r"TransformerBlock\(8, 2, 16.*norm must be one of layer, rms"):
        nn.TransformerBlock(8, 2, 16, norm="batch")
    with pytest.raises(ValueError, match=r"ffn must be one of gelu, swiglu"):
        nn.TransformerBlock(8, 2, 16, ffn="relu")
    model = nn.Sequential(nn.TransformerBlock(8, 2, 16))
    model.build((5, 8))
    with pytest.raises(nn.ShapeError, match=r"\(N, T, 8\).*\(N, 5, 4\)"):
        model.forward(np.zeros((1, 5, 4), np.float32))


def _tiny_gpt(llama=False):
    style = {"norm": "rms", "ffn": "swiglu", "rope": True} if llama else {}
    layers = [nn.Embedding(11, 16)] + ([] if llama else [nn.PositionalEncoding(8, 16, learned=True)])
    layers += [nn.TransformerBlock(16, 2, 32, causal=True, **style) for _ in range(2)]
    return nn.Sequential(*layers, nn.RMSNorm(16) if llama else nn.LayerNorm(16), nn.Dense(16, 11))


@pytest.mark.parametrize("llama", [False, True])
@pytest.mark.parametrize("blocks", ["one", "per sample"])
def test_gpt_train_step_allocates_nothing_on_numpy(llama, blocks, request):
    if blocks == "per sample":  # attention's samples on the row threads: the hand-offs allocate nothing
        request.getfixturevalue("rows_on_threads")
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 11, (4, 8)), rng.integers(0, 11, (4, 8))
    model = _tiny_gpt(llama)
    model.compile(optimizer=nn.AdamW(1e-3), loss=nn.CrossEntropyLoss())
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def _train(backend, steps):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 11, (4, 8))
    y = (x + 1) % 11  # predict the next id
    nn.manual_seed(0)
    model = _tiny_gpt()
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss())
    model.build((8,))
    model.to(backend)
    return [model.train_step(x, y) for _ in range(steps)]


def test_gpt_learns():
    losses = _train("numpy", 30)
    assert losses[-1] < 0.3 * losses[0]


def test_gpt_training_agrees_across_backends():
    np.testing.assert_allclose(_train("numpy", 3), _train("torch", 3), rtol=1e-4)


@pytest.mark.parametrize("llama", [False, True])
def test_gpt_is_causal_and_runs_shorter_contexts(llama, backend):
    """Logits at t depend only on ids <= t: a 3-step prefix gives the first 3 rows of the full run."""
    model = _tiny_gpt(llama)
    model.build((8,), dtype="float64")
    model.to(backend)
    ids = np.random.default_rng(6).integers(0, 11, (2, 8))
    full = np.array(model.ops.to_numpy(model.forward(ids, training=False)))
    prefix = model.ops.to_numpy(model.forward(ids[:, :3], training=False))
    np.testing.assert_allclose(prefix, full[:, :3], atol=1e-12)


def test_block_dropout_identity_at_eval_and_active_while_training():
    x = np.random.default_rng(7).standard_normal((2, 6, 8))
    plain = nn.TransformerBlock(8, 2, 16, causal=True)
    drop = nn.TransformerBlock(8, 2, 16, causal=True, dropout=0.3)
    plain.build((6, 8), dtype="float64")
    drop.build((6, 8), dtype="float64")
    drop.load_state_dict(plain.state_dict())
    np.testing.assert_allclose(drop.forward(x, training=False), plain.forward(x, training=False))
    assert not np.allclose(drop.forward(x, training=True), plain.forward(x, training=True))
    check_gradients(drop, x, reseed=lambda: nn.manual_seed(3))


def test_block_dropouts_in_place_and_one_shared_hidden_buffer_change_nothing_else(backend, monkeypatch):
    """The three dropouts of a block run in place (their inputs are read by nothing after them), and the
    blocks' feed-forward hidden outputs are one buffer, made again in backward: the same training steps
    bit for bit as with buffers of their own, and no (N, T, ff) or (N, T, dim) buffer of theirs."""
    monkeypatch.setattr(transformer, "SHARED_HIDDEN_FROM", 0)  # these blocks are small: share anyway
    x = np.random.default_rng(0).integers(0, 20, (4, 10))
    runs = []
    for economical in (True, False):
        nn.manual_seed(0)
        blocks = [nn.TransformerBlock(16, 2, 32, causal=True, dropout=0.2) for _ in range(2)]
        model = nn.Sequential(nn.Embedding(20, 16), *blocks, nn.Dense(16, 20))
        model.build((10,))
        model.to(backend)
        drops = [b.children[k] for b in blocks for k in ("dropout", "dropout1", "dropout2")]
        assert all(d.inplace for d in drops)
        hidden = [b.children["linear1"] for b in blocks]
        if not economical:
            for layer in drops:
                layer.inplace = False
            monkeypatch.setattr(transformer, "SHARED_HIDDEN_FROM", 1 << 40)
        model.compile(nn.AdamW(1e-2), "cross_entropy")
        nn.manual_seed(1)
        runs.append(([model.train_step(x, x) for _ in range(3)], model.state_dict()))
        assert all(("y" in d.__dict__.get("_workspace", {})) != economical for d in drops)
        assert all(("y" in h.__dict__.get("_workspace", {})) != economical for h in hidden)
        assert model.ops.may_share_memory(hidden[0]._y, hidden[1]._y) == economical
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        np.testing.assert_array_equal(runs[1][1][name], value, err_msg=name)


def test_blocks_sharing_the_hidden_buffer_may_run_backward_in_any_order(monkeypatch):
    """Forward A, forward B (which overwrites the shared hidden buffer), then backward A before B: each
    block makes its hidden output again, so both gradients are those of a block run alone."""
    monkeypatch.setattr(transformer, "SHARED_HIDDEN_FROM", 0)
    rng = np.random.default_rng(3)
    x1, x2, dy1, dy2 = (rng.standard_normal((2, 5, 8)) for _ in range(4))
    nn.manual_seed(0)
    a, b = nn.TransformerBlock(8, 2, 16, dropout=0.25), nn.TransformerBlock(8, 2, 16, dropout=0.25)
    for block in (a, b):
        block.build((5, 8), dtype="float64")
    alone = []
    for block, x, dy, seed in ((a, x1, dy1, 1), (b, x2, dy2, 2)):
        nn.manual_seed(seed)
        block.forward(x)
        block.zero_grad()
        alone.append((block.backward(dy).copy(), {k: v.copy() for k, v in block.grads.items()}))
    nn.manual_seed(1)
    a.forward(x1)
    nn.manual_seed(2)
    b.forward(x2)
    a.zero_grad()
    b.zero_grad()
    together = [(a.backward(dy1).copy(), a.grads), (b.backward(dy2).copy(), b.grads)]
    for (dx, grads), (dx_alone, grads_alone) in zip(together, alone, strict=True):
        np.testing.assert_array_equal(dx, dx_alone)
        for name, value in grads_alone.items():
            np.testing.assert_array_equal(grads[name], value, err_msg=name)


def test_the_hidden_buffer_is_shared_from_its_size_and_not_inside_a_remat(monkeypatch):
    """Below SHARED_HIDDEN_FROM elements a block keeps its hidden output (nothing made again); from it the
    blocks share one; inside a Remat the Remat's sharing stands and the block makes nothing again."""
    nn.manual_seed(0)
    block = nn.TransformerBlock(8, 2, 16)
    block.build((5, 8))
    linear1 = block.children["linear1"]
    x = np.random.default_rng(0).standard_normal((4, 5, 8)).astype(np.float32)
    block.forward(x)
    assert not block._remake_hidden and "_shared_workspaces" not in linear1.__dict__
    monkeypatch.setattr(transformer, "SHARED_HIDDEN_FROM", 4 * 5 * 16)
    block.forward(x)
    assert block._remake_hidden and linear1._shared_workspaces == ("transformer.ffn:", frozenset({"y"}))
    block.forward(x[:3])  # a smaller batch: its own buffer again
    assert not block._remake_hidden and "_shared_workspaces" not in linear1.__dict__
    monkeypatch.setattr(transformer, "SHARED_HIDDEN_FROM", 0)
    remat = nn.Remat(nn.TransformerBlock(8, 2, 16))
    remat.build((5, 8))
    remat.forward(x)
    inner = remat.block
    assert not inner._remake_hidden
    assert inner.children["linear1"]._shared_workspaces == ("remat:linear1.:", None)
