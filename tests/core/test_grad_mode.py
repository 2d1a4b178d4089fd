"""nn.no_grad / nn.is_grad_enabled (PyTorch's grad mode) and the inference that runs under it."""

import threading

import numpy as np
import pytest

import neuronet as nn


def test_no_grad_nests_restores_and_decorates():
    assert nn.is_grad_enabled()
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        with nn.no_grad():
            assert not nn.is_grad_enabled()
        assert not nn.is_grad_enabled()
    assert nn.is_grad_enabled()

    @nn.no_grad()
    def infer():
        return nn.is_grad_enabled()

    assert infer() is False and nn.is_grad_enabled()
    with pytest.raises(KeyError), nn.no_grad():
        raise KeyError("restored on the way out")
    assert nn.is_grad_enabled()


def test_no_grad_is_per_thread():
    seen = []
    with nn.no_grad():
        thread = threading.Thread(target=lambda: seen.append(nn.is_grad_enabled()))
        thread.start()
        thread.join()
    assert seen == [True]


def _cnn():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2D(1, 4, 3, padding=1, activation="relu"), nn.MaxPool2D(2), nn.Flatten(),
                          nn.Dense(4 * 4 * 4, 3))
    model.build((1, 8, 8))
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss())
    return model


def test_predict_and_evaluate_run_under_no_grad_and_training_still_works(backend):
    model = _cnn().to(backend)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 6)
    pool = model.layers[1]
    expected = np.array(model.ops.to_numpy(model.forward(model.ops.asarray(x), training=False)))
    pool.clear_workspace()
    np.testing.assert_array_equal(model.predict(x), expected)
    model.evaluate(x, y)
    assert "index" not in pool.__dict__["_workspace"]  # neither kept the argmax positions
    assert nn.is_grad_enabled()
    before = model.state_dict()["0.weight"].copy()
    model.train_step(model.ops.asarray(x), model.ops.asarray(y))  # after predict: the index is made again
    assert "index" in pool.__dict__["_workspace"]
    assert not np.array_equal(model.state_dict()["0.weight"], before)


@pytest.mark.parametrize("make, shape, kept, error", [
    (lambda: nn.Dense(6, 5, activation="gelu"), (4, 6), "z", r"Dense\(.*no_grad.*pre-activation"),
    (lambda: nn.Conv2D(2, 3, 3, padding=1, activation="silu"), (2, 2, 5, 5), "a", r"Conv2D\(.*activation"),
    (lambda: nn.Conv1D(2, 3, 3, activation="elu"), (2, 2, 7), "a", r"Conv1D\(.*pre-activation"),
    (lambda: nn.MultiHeadAttention(8, 2, causal=True), (3, 5, 8), "probs",
     r"MultiHeadAttention\(.*no_grad.*attention probabilities"),
    (lambda: nn.MultiHeadAttention(8, 2, rope=True), (2, 6, 8), "probs", "attention probabilities"),
])
def test_under_no_grad_layers_keep_less_and_compute_the_same(make, shape, kept, error, backend):
    """Under no_grad GELU, SiLU, ELU (derivatives that read z) write their output over z, attention keeps
    no probabilities (N, H, T, T): the same values; a backward then names the layer and what it lacks;
    outside no_grad the gradients are as before."""
    x = np.random.default_rng(1).standard_normal(shape)
    fresh, reference = make(), make()
    for layer in (fresh, reference):
        nn.manual_seed(0)
        layer.build(shape[1:], dtype="float64")
        layer.to(backend)
    ops = fresh.ops
    with nn.no_grad():
        y = np.array(ops.to_numpy(fresh.forward(ops.asarray(x))))
    assert kept not in fresh.__dict__.get("_workspace", {})
    np.testing.assert_array_equal(y, ops.to_numpy(reference.forward(ops.asarray(x))))
    dy = ops.asarray(np.random.default_rng(2).standard_normal(y.shape))
    with pytest.raises(RuntimeError, match=error):
        fresh.backward(dy)
    fresh.forward(ops.asarray(x))
    np.testing.assert_array_equal(ops.to_numpy(fresh.backward(dy)), ops.to_numpy(reference.backward(dy)))
    np.testing.assert_array_equal(ops.to_numpy(fresh.flat_grads), ops.to_numpy(reference.flat_grads))


def test_transformer_predict_under_no_grad_matches_forward(backend):
    """A GELU feed-forward (its hidden Dense shares workspaces across blocks) predicts as it forwards."""
    nn.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 16), nn.TransformerBlock(16, 2, 32, causal=True),
                          nn.TransformerBlock(16, 2, 32, causal=True), nn.Dense(16, 11))
    model.build((8,))
    model.to(backend)
    x = np.random.default_rng(0).integers(0, 11, (3, 8))
    expected = np.array(model.ops.to_numpy(model.forward(model.ops.asarray(x), training=False)))
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=1e-6)


def _blocks():
    """Containers whose output is their own buffer (TransformerBlocks, Residuals, one Residual inside
    another): under no_grad their layers' buffers are shared by the blocks of a class."""
    nn.manual_seed(3)
    inner = nn.Residual(nn.Sequential(nn.Dense(8, 8, activation="tanh"), nn.LayerNorm(8)))
    model = nn.Sequential(nn.TransformerBlock(8, 2, 16, causal=True),
                          nn.TransformerBlock(8, 2, 16, causal=True),
                          nn.Residual(nn.Sequential(inner, nn.Dense(8, 8, activation="gelu"))),
                          nn.Residual(nn.Sequential(nn.Dense(8, 8, activation="relu"), nn.Dense(8, 8))),
                          nn.Flatten(), nn.Dense(5 * 8, 3))
    model.build((5, 8), dtype="float64")
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss())
    return model, inner


def _inside_blocks(model):
    return [layer for block in model.layers[:4] for _, layer in block.named_layers() if layer is not block]


def test_blocks_share_their_layers_buffers_under_no_grad(backend):
    """predict keeps no buffer inside a block (the inner Residual run alone first, then inside the outer
    one), gives forward's values, and training afterwards steps exactly as a model never predicted."""
    (model, inner), (twin, _) = _blocks(), _blocks()
    model.to(backend), twin.to(backend)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 5, 8)), rng.integers(0, 3, 6)
    with nn.no_grad():
        inner.forward(model.ops.asarray(x))
    predicted = model.predict(x)
    assert not any(layer.__dict__.get("_workspace") for layer in _inside_blocks(model))
    expected = twin.ops.to_numpy(twin.forward(twin.ops.asarray(x), training=False))
    np.testing.assert_allclose(predicted, expected, rtol=1e-12, atol=1e-12)
    for m in (model, twin):
        m.train_step(m.ops.asarray(x), m.ops.asarray(y))
    np.testing.assert_array_equal(model.ops.to_numpy(model.flat_grads), twin.ops.to_numpy(twin.flat_grads))
    np.testing.assert_array_equal(model.state_dict()["0.linear1.weight"],
                                  twin.state_dict()["0.linear1.weight"])
    np.testing.assert_allclose(model.predict(x), twin.predict(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("index, name", [(1, "TransformerBlock"), (3, "Residual")])
def test_backward_after_a_no_grad_forward_raises_before_any_gradient(index, name):
    """The blocks' buffers hold whichever block ran last: their backward refuses, adding nothing."""
    model, _ = _blocks()
    x = np.random.default_rng(5).standard_normal((6, 5, 8))
    with nn.no_grad():
        model.forward(x)
    block = model.layers[index]
    with pytest.raises(RuntimeError, match=rf"(?s){name}\(.*no_grad.*activations of its layers"):
        block.backward(np.ones((6, 5, 8)))
    assert not np.any(model.flat_grads)


def test_a_blocks_output_outlives_the_next_block_under_no_grad(backend):
    """A functional model that adds two blocks' outputs: each block's own output is not among the buffers
    the blocks share, so predict equals forward."""
    nn.manual_seed(0)
    inp = nn.Input((8,))
    h = nn.Embedding(11, 16)(inp)
    a = nn.TransformerBlock(16, 2, 32, causal=True)(h)
    b = nn.TransformerBlock(16, 2, 32, causal=True)(a)
    c = nn.Residual(nn.Dense(16, 16, activation="tanh"))(b)
    d = nn.Residual(nn.Dense(16, 16, activation="tanh"))(c)
    model = nn.Model(inp, nn.Dense(16, 11)(nn.Add()([a, b, c, d])))
    model.build((8,))
    model.to(backend)
    x = np.random.default_rng(0).integers(0, 11, (3, 8))
    expected = np.array(model.ops.to_numpy(model.forward(model.ops.asarray(x), training=False)))
    np.testing.assert_array_equal(model.predict(x), expected)


SEQUENCE, IMAGE = (6, 8), (4, 8, 8)
SHARING_BLOCKS = {  # shape-keeping blocks of many layer kinds: (make, input shape)
    "dense": (lambda: nn.Sequential(nn.Dense(8, 16, activation="gelu"), nn.Dense(16, 8)), SEQUENCE),
    "norms": (lambda: nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8), nn.Dense(8, 8, activation="silu")),
              SEQUENCE),
    "lstm": (lambda: nn.LSTM(8, 8, return_sequences=True, num_layers=2), SEQUENCE),
    "bidirectional_gru": (lambda: nn.Bidirectional(nn.GRU(8, 4, return_sequences=True)), SEQUENCE),
    "attention": (lambda: nn.MultiHeadAttention(8, 2, causal=True, rope=True), SEQUENCE),
    "llama_block": (lambda: nn.TransformerBlock(8, 2, 16, norm="rms", ffn="swiglu"), SEQUENCE),
    "moe": (lambda: nn.MoE(8, 16, 4, 2), SEQUENCE),
    "conv1d_rbf": (lambda: nn.Sequential(nn.Conv1D(6, 6, 3, padding=1), nn.RBF(8, 5), nn.Dense(5, 8)),
                   SEQUENCE),
    "conv_batchnorm": (lambda: nn.Sequential(nn.Conv2D(4, 4, 3, padding=1),
                                             nn.BatchNorm2D(4, activation="relu"),
                                             nn.Conv2D(4, 4, 3, padding=1, activation="gelu")), IMAGE),
    "pool_upsample": (lambda: nn.Sequential(nn.MaxPool2D(2), nn.Upsample(2), nn.AvgPool2D(2),
                                            nn.Upsample(2, mode="bilinear")), IMAGE),
    "transpose_groupnorm": (lambda: nn.Sequential(nn.ConvTranspose2D(4, 4, 3, padding=1), nn.GroupNorm(2, 4)),
                            IMAGE),
    "depthwise_softmax": (lambda: nn.Sequential(nn.Conv2D(4, 4, 3, padding=1, groups=4, activation="elu"),
                                                nn.Softmax(), nn.SELU()), IMAGE),
    "positions_remat": (lambda: nn.Sequential(nn.PositionalEncoding(6, 8, learned=True),
                                              nn.Remat(nn.TransformerBlock(8, 2, 16)), nn.LogSoftmax()),
                        SEQUENCE),
}


@pytest.mark.parametrize("kind", sorted(SHARING_BLOCKS))
def test_residual_blocks_of_every_kind_predict_what_they_forward(kind, backend):
    """Three Residual blocks of one kind (thirteen kinds, a Remat inside one) share their layers' buffers
    under no_grad: no layer may read in a call what it wrote in an earlier one. predict (shared buffers)
    against forward (each layer its own)."""
    make, shape = SHARING_BLOCKS[kind]
    nn.manual_seed(7)
    model = nn.Sequential(*(nn.Residual(make()) for _ in range(3)))
    model.build(shape, dtype="float64")
    model.to(backend)
    x = np.random.default_rng(8).standard_normal((5, *shape))
    expected = np.array(model.ops.to_numpy(model.forward(model.ops.asarray(x), training=False)))
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.predict(x[:3]), expected[:3], rtol=1e-12, atol=1e-12)
