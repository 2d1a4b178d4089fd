"""GGUF export: read back with the reference gguf.GGUFReader (names, shapes, types, values, metadata)."""

import json

import numpy as np
import pytest

import neuronet as nn

gguf = pytest.importorskip("gguf")

RNG = np.random.default_rng(0)
QT = gguf.GGMLQuantizationType


def layer(name, *args, **kwargs):
    if not hasattr(nn, name):
        pytest.skip(f"nn.{name} is not implemented yet")
    return getattr(nn, name)(*args, **kwargs)


def mlp():
    model = nn.Sequential(nn.Dense(32, 64, activation="gelu"), nn.Dropout(0.1), nn.Dense(64, 10))
    model.build((32,))
    return model, RNG.standard_normal((5, 32)).astype(np.float32)


def gpt():
    model = nn.Sequential(layer("Embedding", 40, 32), layer("PositionalEncoding", 16, 32, learned=True),
                          layer("TransformerBlock", 32, 4, 64, causal=True),
                          layer("TransformerBlock", 32, 4, 64, causal=True, norm="rms", ffn="swiglu",
                                rope=True),
                          layer("LayerNorm", 32), nn.Dense(32, 40))
    model.build((8,))
    return model, RNG.integers(0, 40, (3, 8)).astype(np.int64)


def cnn():
    model = nn.Sequential(layer("Conv2D", 1, 4, 3, padding=1, activation="relu"), layer("BatchNorm2D", 4),
                          layer("MaxPool2D", 2), nn.Flatten(), nn.Dense(64, 3))
    model.build((1, 8, 8))
    x = RNG.standard_normal((6, 1, 8, 8)).astype(np.float32)
    model.compile(optimizer=nn.SGD(0.01), loss=nn.CrossEntropyLoss())
    model.train_step(x, RNG.integers(0, 3, 6))  # running statistics and num_batches_tracked move
    return model, x


def rnn():
    model = nn.Sequential(layer("Bidirectional", layer("LSTM", 3, 32, return_sequences=True)),
                          layer("GRU", 64, 32), nn.Dense(32, 2))
    model.build((5, 3))
    return model, RNG.standard_normal((4, 5, 3)).astype(np.float32)


def moe():
    model = nn.Sequential(nn.Dense(4, 32), layer("MoE", 32, 32, 4, 2), nn.Dense(32, 3))
    model.build((4,))
    return model, RNG.standard_normal((6, 4)).astype(np.float32)


MODELS = {"mlp": mlp, "gpt": gpt, "cnn": cnn, "rnn": rnn, "moe": moe}


def read(path):
    reader = gguf.GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("which", MODELS)
def test_f32_file_holds_state_dict_exactly(which, tmp_path):
    model, _ = MODELS[which]()
    state = model.state_dict()
    nn.export_gguf(model, tmp_path / "m.gguf", "f32")
    reader, tensors = read(tmp_path / "m.gguf")
    assert list(tensors) == list(state)
    for name, want in state.items():
        t = tensors[name]
        want_shape = want.shape or (1,)
        assert tuple(int(d) for d in t.shape) == tuple(reversed(want_shape)), name  # GGUF: innermost first
        assert t.data.shape == want_shape
        np.testing.assert_array_equal(t.data, want.reshape(want_shape), err_msg=name)
        if np.issubdtype(want.dtype, np.floating):
            assert t.tensor_type == QT.F32


def test_metadata_describes_the_model(tmp_path):
    model, _ = mlp()
    nn.export_gguf(model, tmp_path / "m.gguf", "f16", name="tiny-mlp")
    reader, _ = read(tmp_path / "m.gguf")
    fields = reader.fields
    assert fields["general.architecture"].contents() == "neuronet"
    assert fields["general.name"].contents() == "tiny-mlp"
    assert fields["neuronet.input_shape"].contents() == [32]
    assert fields["neuronet.weight_type"].contents() == "f16"
    assert fields["neuronet.param_count"].contents() == model.num_params()
    config = json.loads(fields["neuronet.config"].contents())
    assert config["input_shape"] == [32]
    layers = config["model"]["layers"]
    assert [layers[i]["config"]["out_features"] for i in (0, 2)] == [64, 10]
    assert layers[0]["config"]["activation"] == "gelu"


def test_f16_weights_and_f32_vectors(tmp_path):
    model, _ = mlp()
    nn.export_gguf(model, tmp_path / "m.gguf", "f16")
    _, tensors = read(tmp_path / "m.gguf")
    for name, want in model.state_dict().items():
        t = tensors[name]
        assert t.tensor_type == (QT.F16 if want.ndim == 2 else QT.F32), name
        np.testing.assert_allclose(t.data.astype(np.float32), want, rtol=1e-3, atol=1e-6, err_msg=name)


def test_q8_0_weights_within_quantisation_error(tmp_path):
    model, _ = gpt()
    nn.export_gguf(model, tmp_path / "m.gguf", "q8_0")
    _, tensors = read(tmp_path / "m.gguf")
    n_q8 = 0
    for name, want in model.state_dict().items():
        t = tensors[name]
        if want.ndim < 2:
            assert t.tensor_type == QT.F32, name
            continue
        if want.shape[-1] % 32:  # rows that are not whole Q8_0 blocks fall back to f16
            assert t.tensor_type == QT.F16, name
            continue
        n_q8 += 1
        assert t.tensor_type == QT.Q8_0, name
        got = gguf.quants.dequantize(t.data, t.tensor_type)
        blocks = want.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127  # one Q8_0 step per block, its scale in f16
        assert np.all(np.abs(got.reshape(-1, 32) - blocks) <= step * (0.5 + 127 * 2.0**-11) + 1e-7), name
    assert n_q8 >= 8


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("dtype, atol", [("f32", 0.0), ("f16", 2e-2), ("q8_0", 5e-2)])
def test_load_gguf_rebuilds_a_working_model(which, dtype, atol, tmp_path):
    model, x = MODELS[which]()
    nn.export_gguf(model, tmp_path / "m.gguf", dtype)
    loaded = nn.load_gguf(tmp_path / "m.gguf")
    assert repr(loaded) == repr(model)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), atol=atol, rtol=0)


def test_export_from_torch_backend(tmp_path):
    model, x = mlp()
    want = model.predict(x)
    model.to("torch")
    nn.export_gguf(model, tmp_path / "m.gguf")
    np.testing.assert_array_equal(nn.load_gguf(tmp_path / "m.gguf").predict(x), want)


# --------------------------------------------------------------------------- bad input
def test_bad_dtype(tmp_path):
    model, _ = mlp()
    with pytest.raises(ValueError, match=r"dtype must be one of f32, f16, q8_0, got 'q4'"):
        nn.export_gguf(model, tmp_path / "m.gguf", "q4")


def test_unbuilt_model_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="export_gguf needs the parameters"):
        nn.export_gguf(nn.Sequential(nn.Dense(2, 2)), tmp_path / "m.gguf")


def test_unwritable_path_is_a_clear_error_and_leaves_nothing(tmp_path):
    model, _ = mlp()
    with pytest.raises(FileNotFoundError, match=r"export_gguf: cannot write .*does not exist"):
        nn.export_gguf(model, tmp_path / "missing" / "m.gguf")
    assert list(tmp_path.iterdir()) == []


class Opaque(nn.Layer):
    """A user layer whose config cannot be written as JSON."""

    def get_config(self):
        return {"fn": object()}

    def forward(self, x, training=True):
        return x


def test_unserialisable_layer_names_layer_and_leaves_nothing(tmp_path):
    model = nn.Sequential(nn.Dense(3, 3), Opaque())
    model.build((3,))
    with pytest.raises(TypeError, match=r"export_gguf: layer 1 \(Opaque\(\)\).*not JSON-serialisable"):
        nn.export_gguf(model, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_foreign_and_broken_files(tmp_path):
    other = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(other, "llama")
    writer.add_tensor("w", np.ones((2, 2), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="no 'neuronet.config' metadata"):
        nn.load_gguf(other)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x00" * 7)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        nn.load_gguf(junk)
    with pytest.raises(FileNotFoundError, match="load_gguf: no such file"):
        nn.load_gguf(tmp_path / "absent.gguf")


def test_load_rejects_tampered_architecture(tmp_path):
    model, _ = mlp()
    nn.export_gguf(model, tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "bad.gguf").write_bytes(data.replace(b'"Dense"', b'"Bogus"', 1))
    with pytest.raises(ValueError, match="Bogus"):
        nn.load_gguf(tmp_path / "bad.gguf")
