"""The .nnet file: round trip, exact resume, atomic writes, and rejection of bad or hostile files."""

import json
import struct

import numpy as np
import pytest
from safetensors import safe_open

import neuronet as nn
from neuronet.io import NnetFormatError
from neuronet.io._nnet_meta import checksum
from neuronet.io.nnet import read


def _data(n=96):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)


def _model(optimizer=None):
    model = nn.Sequential(nn.Dense(6, 16, activation="relu"), nn.Dropout(0.2), nn.Dense(16, 3))
    model.compile(
        optimizer=optimizer or nn.Adam(1e-2),
        loss=nn.CrossEntropyLoss(label_smoothing=0.1),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture
def saved(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "m.nnet"
    model.save(path)
    return model, path


def test_round_trip_restores_weights_compile_and_position(saved):
    model, path = saved
    loaded = nn.load(path)
    x, _ = _data(8)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [type(layer).__name__ for layer in loaded] == ["Dense", "Dropout", "Dense"]
    assert loaded[0].activation == "relu" and loaded[1].p == 0.2
    assert type(loaded.optimizer) is nn.Adam
    assert loaded.optimizer.iterations == model.optimizer.iterations == 6
    for key in ("m", "v"):
        np.testing.assert_array_equal(loaded.optimizer.state[key], model.optimizer.state[key])
    assert loaded.loss.label_smoothing == 0.1 and list(loaded.metric_fns) == ["accuracy"]
    assert loaded.epoch == 1 and len(loaded.saved_history["loss"]) == 1
    with safe_open(str(path), "np") as f:  # a plain safetensors file for other tools
        np.testing.assert_array_equal(f.get_tensor("0.weight"), model.state_dict()["0.weight"])


@pytest.mark.parametrize("optimizer", [lambda: nn.Adam(1e-2), lambda: nn.SGD(0.05, momentum=0.9)])
def test_resume_reproduces_uninterrupted_run(tmp_path, optimizer):
    x, y = _data()
    nn.manual_seed(7)
    straight = _model(optimizer())
    straight.fit(x, y, epochs=2, batch_size=16, verbose=0)

    nn.manual_seed(7)
    first = _model(optimizer())
    first.fit(x, y, epochs=1, batch_size=16, verbose=0)
    first.save(tmp_path / "ckpt.nnet")
    nn.manual_seed(12345)  # a different process state: load must restore the generator
    resumed = nn.load(tmp_path / "ckpt.nnet")
    resumed.fit(x, y, epochs=2, batch_size=16, verbose=0, initial_epoch=resumed.epoch)
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)


def test_model_checkpoint_callback_writes_loadable_file(tmp_path):
    x, y = _data()
    model = _model()
    checkpoint = nn.ModelCheckpoint(str(tmp_path / "e{epoch}.nnet"))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[checkpoint])
    assert nn.load(tmp_path / "e2.nnet").epoch == 2


def test_save_is_atomic(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pathlib.Path.write_bytes", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["m.nnet"]


def _rewrite(path, edit_header=None, edit_meta=None, data_cut=0, drop=None):
    """Re-encode a saved file after editing its JSON header and/or the neuronet metadata."""
    if drop:
        from safetensors.numpy import load_file, save_file

        with safe_open(str(path), "np") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        del tensors[drop]
        save_file(tensors, str(path), metadata=metadata)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    if edit_meta:
        meta = json.loads(header["__metadata__"]["neuronet"])
        edit_meta(meta)
        header["__metadata__"]["neuronet"] = json.dumps(meta)
    if edit_header:
        edit_header(header)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[: len(data) - data_cut])
    _rehash(path)


def _rehash(path):
    """Recompute the stored checksum, so that an edited file reaches the deeper checks."""
    try:
        meta, tensors = read(path)
    except NnetFormatError:
        return  # a structurally broken file: the checksum is never reached
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta["checksum"] = {"sha256": checksum(tensors)}
    header["__metadata__"]["neuronet"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def _set_layer(meta, i, node):
    meta["architecture"]["layers"][i] = node


BAD_FILES = {
    "truncated data": (dict(data_cut=5), "needs .* bytes"),
    "tensor count": (dict(drop="2.bias"), r"missing \['2.bias'\]"),
    "wrong shape in JSON": (
        dict(
            edit_meta=lambda m: _set_layer(
                m, 2, {"type": "Dense", "config": {"in_features": 16, "out_features": 4}}
            )
        ),
        r"tensor '2.weight' is float32\[3, 16\].*needs float32\[4, 16\]",
    ),
    "unknown layer": (
        dict(edit_meta=lambda m: _set_layer(m, 1, {"type": "os.system", "config": {}})),
        "unknown layer class 'os.system'",
    ),
    "private base class": (
        dict(edit_meta=lambda m: _set_layer(m, 1, {"type": "_Conv", "config": {}})),
        "unknown layer class '_Conv'",
    ),
    "bad config": (
        dict(edit_meta=lambda m: _set_layer(m, 1, {"type": "Dropout", "config": {"p": 7}})),
        "Dropout cannot be rebuilt",
    ),
    "huge declared size": (
        dict(
            edit_meta=lambda m: _set_layer(
                m, 2, {"type": "Dense", "config": {"in_features": 16, "out_features": 10**12}}
            )
        ),
        r"out_features must be <= 2147483647, got 1000000000000",
    ),
    "path-traversal name": (
        dict(edit_header=lambda h: h.update({"../../etc/passwd": h.pop("0.bias")})),
        "invalid tensor name",
    ),
    "huge tensor shape": (dict(edit_header=lambda h: h["0.weight"].update(shape=[2**40, 2**12])), "needs"),
    "mistyped shape": (
        dict(edit_header=lambda h: h["0.weight"].update(shape="16x6")),
        "lists of non-negative",
    ),
    "mistyped input_shape": (dict(edit_meta=lambda m: m.update(input_shape=["6"])), "input_shape"),
    "wrong format version": (dict(edit_meta=lambda m: m.update(format_version=99)), "format_version 99"),
    "unknown optimizer": (
        dict(edit_meta=lambda m: m["compile"]["optimizer"].update(type="Evil")),
        "unknown optimizer 'Evil'",
    ),
    "bad rng state": (
        dict(edit_meta=lambda m: m["training"].update(rng_state={"bit_generator": "PCG64"})),
        "rng_state is invalid",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_rejected(saved, case):
    _, path = saved
    kwargs, message = BAD_FILES[case]
    _rewrite(path, **kwargs)
    with pytest.raises(NnetFormatError, match=message):
        nn.load(path)


def test_truncated_and_random_files(saved, tmp_path):
    _, path = saved
    raw = path.read_bytes()
    for cut in (0, 5, 8, 100, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(NnetFormatError):
            nn.load(path)
    rng = np.random.default_rng(0)
    for _ in range(20):
        path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes())
        with pytest.raises(NnetFormatError):
            nn.load(path)
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(NnetFormatError, match="header length"):
        read(path)


def test_plain_safetensors_file_is_not_a_model(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(NnetFormatError, match="without neuronet metadata"):
        nn.load(tmp_path / "plain.safetensors")


def test_buffers_and_conv_round_trip(tmp_path):
    model = nn.Sequential(
        nn.LAYERS["Conv2D"](1, 4, 3, padding=1),
        nn.LAYERS["BatchNorm2D"](4),
        nn.ReLU(),
        nn.LAYERS["MaxPool2D"](2),
        nn.Flatten(),
        nn.Dense(16, 2),
    )
    x = np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32)
    model.compile(optimizer=nn.SGD(0.1, momentum=0.9), loss="cross_entropy")
    model.fit(x, np.arange(6) % 2, epochs=2, batch_size=3, verbose=0)
    model.save(tmp_path / "cnn.nnet")
    loaded = nn.load(tmp_path / "cnn.nnet")
    for key, value in model.state_dict().items():  # includes running_mean/var and int64 num_batches_tracked
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_torch_backend_model_saves_and_loads_on_either_backend(tmp_path):
    x, y = _data(32)
    model = _model().to("torch")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model.save(tmp_path / "t.nnet")
    on_numpy = nn.load(tmp_path / "t.nnet", device="numpy")
    on_torch = nn.load(tmp_path / "t.nnet", device="torch")
    assert on_torch.ops.name != on_numpy.ops.name
    np.testing.assert_allclose(on_numpy.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_torch.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    on_torch.fit(x, y, epochs=2, batch_size=16, verbose=0, initial_epoch=1)  # optimizer state lives on torch
    assert on_torch.optimizer.iterations == 4
