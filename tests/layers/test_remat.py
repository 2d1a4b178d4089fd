"""Remat (activation checkpointing): the same values and gradients as the block itself and as
torch.utils.checkpoint, the same training run bit for bit (dropout masks, BatchNorm statistics), one
block's activations for a stack of them, and the library's paths around a layer (files, ONNX, the pool)."""

import numpy as np
import pytest
import torch
from torch.utils.checkpoint import checkpoint

import neuronet as nn
from neuronet.errors import ConfigError, ShapeError
from neuronet.testing import assert_step_allocates_nothing, check_gradients, compare_with_torch


def _ffn(width=16, hidden=32, p=0.3):
    return nn.Sequential(nn.Dense(width, hidden, activation="gelu"), nn.Dropout(p), nn.Dense(hidden, width))


def _stack(remat: bool, blocks: int = 2, width: int = 16, hidden: int = 32, p: float = 0.3, bn: bool = True):
    nn.manual_seed(0)
    wrap = nn.Remat if remat else (lambda block: block)
    body = [wrap(nn.Residual(_ffn(width, hidden, p))) for _ in range(blocks)]
    norm = [nn.BatchNorm1D(width)] if bn else []
    return nn.Sequential(nn.Dense(8, width, activation="relu"), *body, *norm, nn.Dense(width, 3))


def _batch(n=32):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 8)).astype(np.float32), rng.integers(0, 3, n)


def _train(model, backend="numpy", steps=4, workers=1):
    model.build((8,))
    model.to(backend)
    model.compile(nn.Adam(1e-2), "cross_entropy", workers=workers)
    x, y = _batch()
    nn.manual_seed(5)  # the dropout masks
    return [model.train_step(x, y) for _ in range(steps)], model.state_dict()


def test_remat_trains_exactly_as_the_blocks_themselves(backend):
    """Dropout inside the remat'd blocks draws the same masks again in backward, and BatchNorm's running
    statistics (outside here, inside below) move once per step: losses, weights and buffers are equal."""
    plain, remat = _train(_stack(False), backend), _train(_stack(True), backend)
    assert plain[0] == remat[0]
    assert plain[1].keys() == remat[1].keys()  # Remat adds no prefix to the names
    for name, value in plain[1].items():
        np.testing.assert_array_equal(remat[1][name], value, err_msg=name)


def test_remat_restores_batchnorm_statistics_inside_the_block(backend):
    def model(remat):
        nn.manual_seed(0)
        block = nn.Sequential(nn.Conv2D(2, 4, 3, padding=1), nn.BatchNorm2D(4, activation="relu"),
                              nn.Dropout(0.2))
        return nn.Sequential(nn.Remat(block) if remat else block, nn.Flatten(), nn.Dense(4 * 6 * 6, 3))

    x = np.random.default_rng(0).standard_normal((8, 2, 6, 6)).astype(np.float32)
    y = np.arange(8) % 3
    runs = []
    for remat in (False, True):
        m = model(remat)
        m.build((2, 6, 6))
        m.to(backend)
        m.compile(nn.SGD(0.1), "cross_entropy")
        nn.manual_seed(3)
        runs.append(([m.train_step(x, y) for _ in range(3)], m.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1]["0.1.num_batches_tracked"] == 3  # moved once per step, not twice
    for name, value in runs[0][1].items():
        np.testing.assert_array_equal(runs[1][1][name], value, err_msg=name)


def test_remat_matches_torch_checkpoint_of_a_transformer_layer(backend):
    torch.manual_seed(0)
    module = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True,
                                              norm_first=True)

    def forward(mod, x):
        mask = torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype)
        return checkpoint(lambda t: mod(t, src_mask=mask, is_causal=True), x, use_reentrant=False)

    layer = nn.Remat(nn.TransformerBlock(8, 2, 16, causal=True))
    layer.build((5, 8), dtype="float64")
    layer.to(backend)
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    compare_with_torch(layer, module, x, torch_forward=forward)


def test_remat_numerical_gradients():
    nn.manual_seed(0)
    layer = nn.Remat(nn.Sequential(nn.Dense(5, 7, activation="tanh"), nn.LayerNorm(7), nn.Dense(7, 4)))
    check_gradients(layer, np.random.default_rng(2).standard_normal((3, 5)))


def _activation_bytes(model) -> int:
    """Bytes of the model's layers' workspaces and of this thread's Remat buffers."""
    own = sum(buf.nbytes for _, layer in model.named_layers()
              for buf in layer.__dict__.get("_workspace", {}).values())
    shared = model.ops.__dict__["_temporaries"].buffers.items()
    return own + sum(buf.nbytes for (name, _), buf in shared if name.startswith("remat:"))


def test_a_stack_of_remat_blocks_keeps_one_blocks_activations():
    """Eight wide blocks: without Remat each keeps its activations (the hidden layer's output, its
    dropout mask and output, ...); with it one block's worth, and each block's output."""
    sizes = {}
    for remat in (False, True):
        nn.manual_seed(0)
        model = nn.Sequential(nn.Dense(8, 128), *[(nn.Remat if remat else nn.Sequential)(_ffn(128, 512, 0.1))
                                                   for _ in range(8)], nn.Dense(128, 3))
        _train(model, steps=2)
        sizes[remat] = _activation_bytes(model)
    assert sizes[True] < 0.3 * sizes[False], sizes


def test_kernels_inside_remat_write_into_the_shared_buffers_on_the_torch_backend():
    """The torch backend keeps its convolutions' and norms' own results (ops.NEW); inside a Remat block
    they write into the block's shared buffers instead, or each kept result would hold its own memory."""
    norm = nn.LayerNorm(16)
    block = nn.Remat(nn.Sequential(norm, nn.Dense(16, 16)))
    block.build((16,))
    block.to("torch")
    assert norm.kernel_output("y", (4, 16)) is not nn.backend.NEW
    free = nn.LayerNorm(16)
    free.build((16,))
    free.to("torch")
    assert free.kernel_output("y", (4, 16)) is nn.backend.NEW


def test_remat_allocates_nothing_in_a_steady_step(backend):
    model = _stack(True)
    model.build((8,))
    model.to(backend)
    model.compile(nn.Adam(1e-2), "cross_entropy")
    x, y = _batch()
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_the_pool_with_remat_blocks_equals_one_worker():
    """Each training replica's thread has its own shared buffers (no BatchNorm: its statistics are per
    replica, and no dropout: its masks per shard)."""
    one = _train(_stack(True, p=0.0, bn=False), workers=1)
    two = _train(_stack(True, p=0.0, bn=False), workers=2)
    np.testing.assert_allclose(two[0], one[0], rtol=1e-5)
    for name, value in one[1].items():
        np.testing.assert_allclose(two[1][name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_remat_saves_loads_and_its_weights_load_without_it(tmp_path):
    model = _stack(True)
    _train(model)
    x, _ = _batch(6)
    want = model.predict(x)
    model.save(tmp_path / "remat.nnet")
    loaded = nn.load(tmp_path / "remat.nnet")
    assert isinstance(loaded.layers[1], nn.Remat)
    np.testing.assert_array_equal(loaded.predict(x), want)
    plain = _stack(False)
    plain.build((8,))
    plain.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(plain.predict(x), want)


def test_remat_exports_to_onnx_as_its_block(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _stack(True)
    _train(model)
    x, _ = _batch(6)
    path = nn.export_onnx(model, tmp_path / "remat.onnx", (8,))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, model.predict(x), atol=1e-5)


def test_remat_refuses_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="Remat: block is a int, not a neuronet Layer"):
        nn.Remat(3)
    with pytest.raises(ConfigError, match="inside the block of another Remat"):
        nn.Sequential(nn.Remat(nn.Sequential(nn.Remat(nn.Dense(4, 4))))).build((4,))
    with pytest.raises(ShapeError, match="several inputs"):
        nn.Remat(nn.Add()).build(((4,), (4,)))


def _functional(wrap):
    inp = nn.Input((10,))
    h = nn.Dense(10, 16, activation="relu")(inp)
    a = wrap(nn.Sequential(nn.Dense(16, 16, activation="gelu"), nn.Dropout(0.3)))(h)
    b = wrap(nn.Sequential(nn.Dense(16, 16, activation="gelu"), nn.Dropout(0.3)))(h)
    return nn.Model(inp, nn.Dense(16, 3)(nn.Add()([a, b])))


FAMILIES = {  # a model around remat'd blocks, its input shape, and a batch (x, y)
    "lstm": (lambda w: nn.Sequential(w(nn.LSTM(5, 12, return_sequences=True, num_layers=2, dropout=0.2)),
                                     nn.LSTM(12, 8), nn.Dense(8, 3)), (6, 5), "sequences"),
    "bidirectional gru": (lambda w: nn.Sequential(w(nn.Bidirectional(nn.GRU(5, 8))), nn.Dense(16, 3)), (6, 5),
                          "sequences"),
    "moe": (lambda w: nn.Sequential(nn.Dense(10, 16), w(nn.MoE(16, 24, 4, 2)), nn.Dense(16, 3)), (10,),
            "features"),
    "functional branches": (_functional, (10,), "features"),
    "llama blocks": (lambda w: nn.Sequential(nn.Embedding(20, 16), *[w(nn.TransformerBlock(
        16, 4, 32, causal=True, norm="rms", ffn="swiglu", rope=True, dropout=0.1)) for _ in range(2)],
        nn.Dense(16, 20)), (12,), "tokens"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_remat_is_exact_around_every_family(family, backend):
    """Recurrent loops (their packed weights and row blocks), the MoE's routing and balancing loss, a
    functional model's branches and LLaMA-style blocks (rotary, SwiGLU, dropout): bit for bit."""
    make, shape, kind = FAMILIES[family]
    rng = np.random.default_rng(0)
    x, y = {"sequences": (rng.standard_normal((16, 6, 5)).astype(np.float32), rng.integers(0, 3, 16)),
            "features": (rng.standard_normal((32, 10)).astype(np.float32), rng.integers(0, 3, 32)),
            "tokens": (rng.integers(0, 20, (8, 12)), rng.integers(0, 20, (8, 12)))}[kind]
    runs = []
    for wrap in (lambda block: block, nn.Remat):
        nn.manual_seed(0)
        model = make(wrap)
        model.build(shape)
        model.to(backend)
        model.compile(nn.Adam(1e-2), "cross_entropy")
        nn.manual_seed(3)
        runs.append(([model.train_step(x, y) for _ in range(3)], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        np.testing.assert_array_equal(runs[1][1][name], value, err_msg=name)


def test_the_block_that_ran_forward_last_is_not_computed_again():
    """A stack of three: the top block's activations are still in the shared buffers when its backward
    comes, so a step runs 3 + 2 block forwards; after another Remat's forward it recomputes again."""
    calls = []
    model = _stack(True, blocks=3)
    for remat in model.layers[1:4]:
        forward = remat.block.forward
        remat.block.forward = lambda x, training=True, forward=forward, block=remat.block: (
            calls.append(block), forward(x, training))[1]
    model.build((8,))
    model.compile("sgd", "cross_entropy")
    x, y = _batch()
    model.train_step(x, y)
    blocks = [r.block for r in model.layers[1:4]]
    assert calls == blocks + blocks[1::-1]  # forward 0 1 2; backward 2 (kept), 1 and 0 again
    calls.clear()
    model.layers[1].forward(model.layers[0].forward(model.ops.asarray(x)))  # block 0 writes last now
    model.layers[3].backward(model.ops.zeros((32, 16), np.float32))
    assert calls == [blocks[0], blocks[2]]
