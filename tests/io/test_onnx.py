"""ONNX export: every layer family runs in onnxruntime and matches model.predict (float32, 1e-4)."""

import numpy as np
import pytest

import neuronet as nn
from neuronet.backend import ACTIVATIONS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(0)


def layer(name, *args, **kwargs):
    """``nn.<name>(...)``, skipping the test while that layer does not exist yet."""
    if not hasattr(nn, name):
        pytest.skip(f"nn.{name} is not implemented yet")
    return getattr(nn, name)(*args, **kwargs)


def run_onnx(model, x, tmp_path, **kwargs):
    """Export, check and run in onnxruntime; returns (onnxruntime output, model.predict output)."""
    path = nn.export_onnx(model, tmp_path / "model.onnx", x.shape[1:], **kwargs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0], model.predict(x)


def assert_runs_like_predict(model, x, tmp_path, **kwargs):
    got, want = run_onnx(model, x, tmp_path, **kwargs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def floats(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- MLP and activations
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_with_each_activation(activation, tmp_path):
    model = nn.Sequential(nn.Dense(6, 8, activation="tanh"), nn.Dense(8, 5, activation=activation))
    assert_runs_like_predict(model, floats(4, 6), tmp_path)


def test_activation_layers_dropout_reshape_flatten(tmp_path):
    model = nn.Sequential(
        nn.Dense(6, 12), nn.LeakyReLU(0.2), nn.ELU(0.5), nn.SELU(), nn.GELU(), nn.SiLU(), nn.Dropout(0.5),
        nn.Activation("gelu_tanh"), nn.Reshape((3, 4)), nn.Dense(4, 4, activation="relu"), nn.Sigmoid(),
        nn.Tanh(), nn.Flatten(), nn.Dense(12, 3, bias=False), nn.Softmax(), nn.LogSoftmax(), nn.ReLU())
    assert_runs_like_predict(model, floats(5, 6), tmp_path)


def test_dense_on_sequences_and_dynamic_batch(tmp_path):
    model = nn.Sequential(nn.Dense(4, 6, activation="gelu"), nn.Dense(6, 2))
    model.build((3, 4))
    path = nn.export_onnx(model, tmp_path / "m.onnx", (3, 4))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = floats(batch, 3, 4)
        np.testing.assert_allclose(session.run(None, {"input": x})[0], model.predict(x), atol=1e-4, rtol=0)


def test_graph_uses_opset_17_and_state_dict_names(tmp_path):
    model = nn.Sequential(nn.Dense(3, 2))
    proto = onnx.load(str(nn.export_onnx(model, tmp_path / "m.onnx", (3,))))
    assert proto.opset_import[0].version >= 17
    assert {"0.weight", "0.bias"} <= {init.name for init in proto.graph.initializer}
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_float64_model_exports_float32(tmp_path):
    model = nn.Sequential(nn.Dense(3, 4, activation="silu"), nn.Dense(4, 2), dtype="float64")
    x = floats(3, 3)
    got, want = run_onnx(model, x, tmp_path)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_model_on_torch_backend_exports(tmp_path):
    model = nn.Sequential(nn.Dense(4, 6, activation="elu"), nn.Dense(6, 2))
    x = floats(3, 4)
    want = model.predict(x)
    model.to("torch")
    got, _ = run_onnx(model, x, tmp_path)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- CNN
def test_cnn(tmp_path):
    model = nn.Sequential(
        layer("Conv2D", 3, 4, 3, padding=1), layer("BatchNorm2D", 4, activation="relu"),
        layer("MaxPool2D", 2), layer("Conv2D", 4, 6, 3, stride=2, padding=1), layer("AvgPool2D", 2, stride=1),
        layer("GlobalAvgPool2D"), nn.Dense(6, 3))
    model.build((3, 10, 10))
    _train_a_little(model, floats(8, 3, 10, 10), RNG.integers(0, 3, 8))  # non-trivial BatchNorm statistics
    assert_runs_like_predict(model, floats(2, 3, 10, 10), tmp_path)


def test_cnn_flatten_padded_pools(tmp_path):
    model = nn.Sequential(layer("Conv2D", 2, 3, (3, 2), activation="gelu"),
                          layer("AvgPool2D", 3, stride=2, padding=1), layer("MaxPool2D", 2, padding=1),
                          nn.Flatten(), nn.Dense(27, 2))
    model.build((2, 9, 8))
    assert_runs_like_predict(model, floats(3, 2, 9, 8), tmp_path)


def test_conv1d_batchnorm1d(tmp_path):
    model = nn.Sequential(layer("Conv1D", 3, 4, 3, padding=1, activation="tanh"), nn.Flatten(),
                          nn.Dense(28, 5), layer("BatchNorm1D", 5), nn.ReLU())
    model.build((3, 7))
    _train_a_little(model, floats(8, 3, 7), RNG.integers(0, 5, 8))
    assert_runs_like_predict(model, floats(4, 3, 7), tmp_path)


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_group_norm(opset, tmp_path):
    model = nn.Sequential(layer("Conv1D", 3, 6, 3), layer("GroupNorm", 3, 6), nn.Flatten(), nn.Dense(30, 4),
                          layer("GroupNorm", 2, 4))
    model.build((3, 7))
    _train_a_little(model, floats(8, 3, 7), RNG.integers(0, 4, 8))  # non-trivial weight and bias
    assert_runs_like_predict(model, floats(4, 3, 7), tmp_path, opset=opset)


def test_embedding_with_padding_idx(tmp_path):
    model = nn.Sequential(layer("Embedding", 10, 4, padding_idx=0), layer("MeanPooling"), nn.Dense(4, 2))
    x = tokens(3, 5, 10)
    x[:, -2:] = 0  # padded tail
    assert_runs_like_predict(model, x, tmp_path)


def _train_a_little(model, x, y):
    model.compile(optimizer=nn.SGD(0.01), loss=nn.CrossEntropyLoss())
    for _ in range(3):
        model.train_step(x, y)


# --------------------------------------------------------------------------- recurrent
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_rnn(cell, return_sequences, tmp_path):
    model = nn.Sequential(layer(cell, 3, 5, return_sequences=return_sequences), nn.Dense(5, 2))
    assert_runs_like_predict(model, floats(4, 6, 3), tmp_path)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_rnn(cell, return_sequences, tmp_path):
    model = nn.Sequential(layer("Bidirectional", layer(cell, 3, 4, return_sequences=return_sequences)),
                          nn.Dense(8, 2))
    assert_runs_like_predict(model, floats(2, 5, 3), tmp_path)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_stacked_rnn(cell, bidirectional, return_sequences, tmp_path):
    rnn = layer(cell, 3, 4, return_sequences=return_sequences, num_layers=3, dropout=0.5)
    width = 8 if bidirectional else 4
    model = nn.Sequential(nn.Bidirectional(rnn) if bidirectional else rnn, nn.Dense(width, 2))
    assert_runs_like_predict(model, floats(2, 5, 3), tmp_path)


@pytest.mark.parametrize("pooling", ["MeanPooling", "CLSPooling", "LastToken"])
def test_sequence_pooling(pooling, tmp_path):
    model = nn.Sequential(nn.Dense(3, 4), layer(pooling), nn.Dense(4, 2))
    assert_runs_like_predict(model, floats(3, 5, 3), tmp_path)


def test_global_attention(tmp_path):
    model = nn.Sequential(nn.Dense(3, 4), layer("GlobalAttention", 4), nn.Dense(4, 2))
    assert_runs_like_predict(model, floats(3, 5, 3), tmp_path)


def test_rbf(tmp_path):
    model = nn.Sequential(layer("RBF", 3, 6, gamma=0.5), nn.Dense(6, 2))
    assert_runs_like_predict(model, floats(4, 3), tmp_path)


# --------------------------------------------------------------------------- attention and transformers
def tokens(n, t, vocab):
    return RNG.integers(0, vocab, (n, t)).astype(np.int64)


@pytest.mark.parametrize("variant", [
    {}, {"causal": True}, {"causal": True, "norm": "rms", "ffn": "swiglu", "rope": True}])
def test_small_gpt(variant, tmp_path):
    model = nn.Sequential(layer("Embedding", 20, 16), layer("PositionalEncoding", 12, 16),
                          layer("TransformerBlock", 16, 4, 32, **variant),
                          layer("TransformerBlock", 16, 4, 32, **variant), layer("LayerNorm", 16),
                          nn.Dense(16, 20))
    assert_runs_like_predict(model, tokens(3, 6, 20), tmp_path)


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_attention_norms_swiglu(opset, tmp_path):
    model = nn.Sequential(layer("Embedding", 10, 8), layer("PositionalEncoding", 8, 8, learned=True),
                          layer("MultiHeadAttention", 8, 2, causal=True, rope=True), layer("RMSNorm", 8),
                          layer("SwiGLU", 8, 12), layer("MeanPooling"), nn.Dense(8, 3))
    assert_runs_like_predict(model, tokens(2, 5, 10), tmp_path, opset=opset)


def test_every_public_layer_has_a_converter():
    from neuronet.io.onnx import ONNX_CONVERTERS
    from neuronet.layers import __all__ as public_layers

    missing = sorted(set(public_layers) - set(ONNX_CONVERTERS))
    assert not missing, f"add an ONNX converter (neuronet/io/onnx.py) for {missing}"


# --------------------------------------------------------------------------- bad input
class Squarer(nn.Layer):
    """A user layer with no ONNX converter."""

    def forward(self, x, training=True):
        return x * x


def test_unsupported_layer_names_layer_and_other_formats(tmp_path):
    model = nn.Sequential(nn.Dense(3, 3), Squarer())
    target = tmp_path / "m.onnx"
    with pytest.raises(NotImplementedError, match=r"layer 1 \(Squarer\(\)\).*export_gguf.*\.nnet"):
        nn.export_onnx(model, target, (3,))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_path_is_a_clear_error_and_leaves_nothing(tmp_path):
    model = nn.Sequential(nn.Dense(3, 3))
    with pytest.raises(FileNotFoundError, match=r"export_onnx: cannot write .*does not exist"):
        nn.export_onnx(model, tmp_path / "missing" / "m.onnx", (3,))
    with pytest.raises(IsADirectoryError, match="export_onnx"):
        nn.export_onnx(model, tmp_path, (3,))
    assert list(tmp_path.iterdir()) == []


def test_input_shape_must_match_built_model(tmp_path):
    model = nn.Sequential(nn.Dense(3, 3))
    model.build((3,))
    with pytest.raises(nn.ShapeError, match=r"built for input \(N, 3\), got input_shape \(4\)"):
        nn.export_onnx(model, tmp_path / "m.onnx", (4,))


def test_moe(tmp_path):
    model = nn.Sequential(nn.Dense(6, 8), layer("MoE", 8, 12, 4, 2), nn.Dense(8, 3))
    assert_runs_like_predict(model, floats(3, 5, 6), tmp_path)
