"""Hostile and corrupt files: every loader validates before it allocates and raises only neuronet.errors."""

import gzip
import struct
import time

import numpy as np
import pytest
import yaml
from conftest import minimal_meta, small_tensors, write_nnet

import neuronet as nn
from neuronet.cli.config import load_config
from neuronet.errors import ConfigError, DataFormatError, NnetFormatError

MiB = 1 << 20


def _saved(tmp_path):
    model = nn.Sequential(nn.Dense(4, 8), nn.BatchNorm1D(8), nn.Dense(8, 2))
    model.compile("adam", "cross_entropy")
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    model.fit(x, np.arange(16) % 2, epochs=1, verbose=0)
    path = tmp_path / "m.nnet"
    model.save(path)
    return model, path


# ------------------------------------------------------------------------------------- .nnet
@pytest.mark.parametrize("layer, shape", [
    ({"type": "BatchNorm1D", "config": {"num_features": 10**8}}, [10**8]),
    ({"type": "PositionalEncoding", "config": {"max_len": 10**6, "dim": 64}}, [4, 64]),
    ({"type": "Dense", "config": {"in_features": 50_000, "out_features": 50_000}}, [50_000]),
])
def test_declared_sizes_are_checked_before_anything_is_allocated(tmp_path, peak_bytes, layer, shape):
    path = tmp_path / "hostile.nnet"
    write_nnet(path, minimal_meta([layer], shape), small_tensors())
    assert path.stat().st_size < 2000
    err, peak = peak_bytes(lambda: nn.load(path))
    assert isinstance(err, NnetFormatError), err
    assert peak < 4 * MiB, f"{peak / MiB:.0f} MiB allocated to reject a {path.stat().st_size}-byte file"


def test_a_file_may_not_ask_for_20000_layers(tmp_path, peak_bytes):
    path = tmp_path / "many.nnet"
    write_nnet(path, minimal_meta([{"type": "ReLU"}] * 20_000, [4]), small_tensors())
    err, peak = peak_bytes(lambda: nn.load(path))
    assert isinstance(err, NnetFormatError) and "more than 10000 layers" in str(err)
    assert peak < 16 * MiB, peak / MiB  # the parsed JSON only, not 20,000 Layer objects


def test_flipped_bit_in_the_weights_fails_the_checksum(tmp_path):
    _, path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(NnetFormatError, match="SHA-256 checksum"):
        nn.load(path)


def test_nan_weights_are_refused_unless_allowed(tmp_path):
    model, path = _saved(tmp_path)
    model[0].params["weight"][1, 2] = np.nan
    with pytest.warns(RuntimeWarning, match="'0.weight' holds NaN or inf"):
        model.save(path)
    with pytest.raises(NnetFormatError, match="tensor '0.weight' holds NaN or inf"):
        nn.load(path)
    assert np.isnan(nn.load(path, allow_nonfinite=True)[0].params["weight"][1, 2])


def _cfg(i):
    return lambda m: m["architecture"]["layers"][i]["config"]


@pytest.mark.parametrize("edit, message", [
    (lambda m: _cfg(1)(m).update(eps=-1e-5),
     r"BatchNorm1D: eps must be in \(0, inf\), got -1e-05"),
    (lambda m: _cfg(1)(m).update(momentum=float("nan")), "momentum must be in"),
    (lambda m: _cfg(0)(m).update(out_feature=8), "unexpected keyword"),
    (lambda m: _cfg(0)(m).update(in_features=4.0), "in_features must be an integer, got 4.0"),
    (lambda m: _cfg(0)(m).update(in_features=True), "in_features must be an integer, got True"),
    (lambda m: m.update(extras={}), "unknown key 'extras'"),
    (lambda m: m["training"].update(epochs=3), "unknown key 'epochs'"),
    (lambda m: m["training"].update(epoch=-1), "training.epoch' must be a non-negative integer"),
    (lambda m: m["training"].update(history={"loss": "high"}), "must be a list of numbers"),
    (lambda m: m["training"].update(history={"loss": [1.0], "acc": []}), "different lengths"),
    (lambda m: m["compile"]["optimizer"].update(iterations=1.5), "iterations' must be a non-negative"),
    (lambda m: m["compile"]["optimizer"].update(initial_lr=float("inf")), "initial_lr' must be a finite"),
    (lambda m: m["compile"]["optimizer"].update(lr=0.1), "unknown key 'lr'"),
    (lambda m: m["compile"]["optimizer"]["config"].update(lr=-1), "lr must be a finite number >= 0"),
    (lambda m: m["compile"]["optimizer"].update(scheduler={"type": "StepLR"}), "not a state of"),
    (lambda m: m["architecture"]["layers"][0].update(children=[]), "unknown key 'children'"),
])
def test_every_metadata_field_is_validated(tmp_path, edit, message):
    import json

    from neuronet.io.nnet import read

    _, path = _saved(tmp_path)
    meta, tensors = read(path)
    edit(meta)
    write_nnet(path, meta, {k: np.array(v) for k, v in tensors.items()})
    with pytest.raises(NnetFormatError, match=message):
        nn.load(path)
    assert json  # (imported for the reader of this test: the metadata is plain JSON)


def test_negative_eps_is_rejected_by_the_constructor():
    with pytest.raises(ConfigError, match=r"BatchNorm2D: eps must be in \(0, inf\), got -1"):
        nn.BatchNorm2D(3, eps=-1)
    with pytest.raises(ValueError, match="LayerNorm: eps"):
        nn.LayerNorm(3, eps=0)


# ------------------------------------------------------------------------------------- GGUF
def test_gguf_checks_shapes_before_allocating(tmp_path, peak_bytes):
    gguf = pytest.importorskip("gguf")
    import json

    path = tmp_path / "h.gguf"
    writer = gguf.GGUFWriter(path, "neuronet")
    config = {"format_version": 1, "input_shape": [30_000],
              "model": {"type": "Sequential", "config": {"dtype": "float32"},
                        "layers": [{"type": "Dense",
                                    "config": {"in_features": 30_000, "out_features": 30_000}}]}}
    writer.add_string("neuronet.config", json.dumps(config))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert path.stat().st_size < 1000
    err, peak = peak_bytes(lambda: nn.load_gguf(path))
    assert isinstance(err, NnetFormatError) and "missing ['0.bias', '0.weight']" in str(err)
    assert peak < 4 * MiB


def test_gguf_rejects_a_transposed_weight(tmp_path):
    pytest.importorskip("gguf")
    model = nn.Sequential(nn.Dense(3, 5))
    model.build((3,))
    nn.export_gguf(model, tmp_path / "m.gguf")
    import gguf

    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    writer = gguf.GGUFWriter(tmp_path / "t.gguf", "neuronet")
    writer.add_string("neuronet.config", reader.fields["neuronet.config"].contents())
    writer.add_tensor("0.weight", np.ones((3, 5), np.float32))  # (in, out): the right count, transposed
    writer.add_tensor("0.bias", np.ones(5, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(NnetFormatError, match=r"0.weight. has shape \[3, 5\], the architecture needs \[5, 3"):
        nn.load_gguf(tmp_path / "t.gguf")


@pytest.mark.parametrize("field", ["int32 array", "string", "tensor count", "dimensions"])
def test_gguf_counts_past_the_file_end_are_refused_before_parsing(tmp_path, peak_bytes, field):
    """A count flipped by 2^40: an NnetFormatError naming the claim, within a few MiB. The int32 array is
    the loader fuzz test's case: export_gguf's input_shape with its count's fifth byte changed and the
    bytes after it a whole number of int32s made gguf 0.19's reader build an object per claimed element
    (24 GB, then the OOM killer)."""
    pytest.importorskip("gguf")
    model = nn.Sequential(nn.Dense(3, 4))
    model.build((3,))
    path = tmp_path / "m.gguf"
    nn.export_gguf(model, path)
    data = bytearray(path.read_bytes())
    key = data.index(b"neuronet.input_shape") + len("neuronet.input_shape")  # then ARRAY, INT32, count
    count = {"int32 array": key + 8, "string": data.index(b"general.architecture") + 20 + 4,
             "tensor count": 8}
    if field == "dimensions":  # the first tensor info: name length, name "0.weight", dimension count
        at = data.index(b"0.weight", key) + len("0.weight")
        data[at:at + 4] = struct.pack("<I", 1 << 30)
    else:
        data[count[field] + 5] ^= 1
    data += bytes(-(len(data) - key - 16) % 4)  # the array's claimed data: whole int32s to the end
    path.write_bytes(bytes(data))
    err, peak = peak_bytes(lambda: nn.load_gguf(path))
    assert isinstance(err, NnetFormatError) and "not a readable GGUF file" in str(err), err
    assert peak < 4 * MiB


# ------------------------------------------------------------------------------------- IDX, CIFAR, CSV
def test_idx_gzip_bomb_stops_at_the_declared_size(tmp_path, peak_bytes):
    path = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 10))
        zeros = bytes(1 << 20)
        for _ in range(200):  # 200 MiB of zeros after a header that declares 10 bytes
            f.write(zeros)
    assert path.stat().st_size < 400_000
    err, peak = peak_bytes(lambda: nn.data.read_idx(path))
    assert isinstance(err, DataFormatError) and "holds more" in str(err)
    assert peak < 16 * MiB


def test_idx_header_over_the_cap_and_broken_gzip(tmp_path):
    path = tmp_path / "big-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 60000, 28, 28) + bytes(100))
    with pytest.raises(DataFormatError, match="over the limit of 1000 bytes"):
        nn.data.read_idx(path, max_bytes=1000)
    with pytest.raises(DataFormatError, match=r"\(47040000 data bytes\) but the file holds 100 bytes"):
        nn.data.read_idx(path)
    gz = tmp_path / "x-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"abc")[:-6])
    with pytest.raises(DataFormatError, match="corrupt gzip data"):
        nn.data.read_idx(gz)
    gz.write_bytes(b"\x1f\x8b junk")
    with pytest.raises(DataFormatError, match="corrupt gzip data"):
        nn.data.read_idx(gz)
    with pytest.raises(FileNotFoundError):
        nn.data.read_idx(tmp_path / "absent.gz")


def test_cifar_errors(tmp_path):
    path = tmp_path / "b.bin"
    path.write_bytes(bytes(3073) + b"\x01")
    with pytest.raises(DataFormatError, match="not a whole number"):
        nn.data.read_cifar10_bin(path)
    path.write_bytes(b"\x0c" + bytes(3072))
    with pytest.raises(DataFormatError, match="label 12"):
        nn.data.read_cifar10_bin(path)


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n3,inf\n", "row 3, column 'b': label 'inf' is not a finite number"),
    ("a,b\n1,2\nnan,0\n", "'nan' is not a finite number"),
    ("a,b\n1e999,2\n", "'1e999' is not a finite number"),
    ("a,b\n1e39,2\n", "does not fit float32"),
    ('a,b\n"1\n', "row 2 has 1 fields, expected 2"),
    ("a,b\n1,99999999999999999999\n", None),  # a float label, not a wrapped integer
])
def test_csv_rejects_nonfinite_and_malformed(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    if message is None:
        _, y = nn.data.load_csv(path)
        assert y.dtype == np.float32 and y[0] == np.float32(1e20)
        return
    with pytest.raises(DataFormatError, match=message):
        nn.data.load_csv(path)


def test_csv_not_utf8_and_huge_field(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(DataFormatError, match="not a readable CSV"):
        nn.data.load_csv(path)
    path.write_text("a,b\n" + "1" * 200_000 + ",1\n")
    with pytest.raises(DataFormatError, match="field larger than field limit"):
        nn.data.load_csv(path)


# ------------------------------------------------------------------------------------- YAML configs
def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    lines.append("model: {layers: *j}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines))
    assert path.stat().st_size < 600
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 100000 YAML nodes"):
        load_config(path)
    assert time.perf_counter() - start < 5  # not a timing benchmark: it hung before


@pytest.mark.parametrize("text, message", [
    ("&a [*a]", "refers to a node that contains it"),
    pytest.param("[" * 5000 + "]" * 5000, "nested too deeply|not valid YAML", id="deep-nesting"),
    ("model: {layers: [{type: Dense, in_features: .inf, out_features: 2}]}", "in_features must be an int"),
    ("model: {layers: [{type: Dense, 1: 2}]}", "no argument 1"),
    ("model: {layers: [{type: BatchNorm1D, num_features: 4, eps: -1}]}", "eps must be in"),
    ("training: {epochs: 1e400}", "expected int"),
    ("? [a, b]\n: 1", "not valid YAML"),
])
def test_yaml_errors_are_config_errors(tmp_path, text, message):
    from neuronet.cli.config import build_model

    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        cfg = load_config(path) if "layers" not in text else _with_source(path)
        build_model(cfg)


def _with_source(path):
    raw = yaml.safe_load(path.read_text())
    raw["dataset"] = {"source": "digits"}
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)
