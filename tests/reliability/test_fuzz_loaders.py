"""Property-based fuzzing of every loader: on any input it returns, or raises a neuronet.errors class
(or OSError); it never raises anything else, never hangs.

Each property runs ``NEURONET_FUZZ_EXAMPLES`` cases (default 400; seconds in the suite). A longer run:
``NEURONET_FUZZ_EXAMPLES=50000 python -m pytest -q tests/reliability/test_fuzz_loaders.py``.
"""

import gzip
import json
import os
import struct

import numpy as np
import pytest
from conftest import write_nnet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neuronet as nn
from neuronet.cli.config import safe_yaml, validate
from neuronet.errors import NeuronetError

EXAMPLES = int(os.environ.get("NEURONET_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
ALLOWED = (NeuronetError, OSError)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) |
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**12, 1e-300, -0.0]) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def mutate(data: bytes, edits) -> bytes:
    """Apply (kind, position, value) edits: flip a byte, insert, delete, or truncate."""
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            break
        pos %= len(buf)
        if kind == 0:
            buf[pos] ^= value or 1
        elif kind == 1:
            buf[pos:pos] = bytes([value])
        elif kind == 2:
            del buf[pos]
        else:
            del buf[pos:]
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**31), st.integers(0, 255)), min_size=1,
                 max_size=4)


def _call(fn):
    try:
        fn()
    except ALLOWED:
        pass


# ---------------------------------------------------------------------------------------- .nnet
@pytest.fixture(scope="module")
def nnet_file(tmp_path_factory):
    model = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm1D(4), nn.Dense(4, 2))
    model.compile(nn.Adam(0.01), "cross_entropy", metrics=["accuracy"])
    model.fit(np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("nnet") / "m.nnet"
    model.save(path)
    return path


def _fuzz_bytes(raw: bytes, target, load) -> None:
    """``load(target)`` on mutations of the bytes ``raw``: only the allowed errors, never a crash."""
    @FUZZ
    @given(EDITS)
    def check(edits):
        target.write_bytes(mutate(raw, edits))
        _call(lambda: load(target))

    check()


def test_fuzz_nnet_bytes(nnet_file, tmp_path_factory):
    _fuzz_bytes(nnet_file.read_bytes(), tmp_path_factory.mktemp("fuzz") / "f.nnet", nn.load)


def _paths(value, prefix=()):
    """Every path into a JSON tree (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def test_fuzz_nnet_metadata(nnet_file, tmp_path_factory):
    from neuronet.io.nnet import read

    meta, tensors = read(nnet_file)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    paths = [p for p in _paths(meta) if p and p[0] != "training" or p[:2] == ("training", "epoch")]
    target = tmp_path_factory.mktemp("fuzz") / "f.nnet"

    @FUZZ
    @given(st.sampled_from(paths), JSON)
    def check(path, value):
        edited = json.loads(json.dumps(meta))
        node = edited
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        write_nnet(target, edited, tensors)
        _call(lambda: nn.load(target))

    check()


# ---------------------------------------------------------------------------------------- GGUF
def test_fuzz_gguf(tmp_path_factory):
    pytest.importorskip("gguf")
    model = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm1D(4))
    model.build((3,))
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    nn.export_gguf(model, path)
    _fuzz_bytes(path.read_bytes(), path.with_name("f.gguf"), nn.load_gguf)


# ---------------------------------------------------------------------------------------- IDX, CIFAR
def _idx(t, dims, body, trailing):
    head = bytes([0, 0, t, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return (head + body)[: len(head) + len(body) - trailing]


IDX = st.builds(
    _idx,
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
    st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), max_size=4),
    st.binary(max_size=64), st.integers(0, 3))


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
def test_fuzz_idx(tmp_path_factory, compressed):
    target = tmp_path_factory.mktemp("idx") / ("f-idx.gz" if compressed else "f-idx")

    @FUZZ
    @given(IDX | st.binary(max_size=40), EDITS | st.just([]))
    def check(data, edits):
        data = gzip.compress(data) if compressed else data
        target.write_bytes(mutate(data, edits) if edits else data)
        _call(lambda: nn.data.read_idx(target, max_bytes=1 << 20))

    check()


def test_fuzz_cifar(tmp_path_factory):
    target = tmp_path_factory.mktemp("cifar") / "b.bin"

    @FUZZ
    @given(st.integers(0, 3), st.binary(min_size=0, max_size=8), st.integers(0, 15))
    def check(records, tail, label):
        target.write_bytes((bytes([label]) + bytes(3072)) * records + tail)
        _call(lambda: nn.data.read_cifar10_bin(target))

    check()


# ---------------------------------------------------------------------------------------- CSV
CSV_TEXT = st.text(alphabet=st.sampled_from(list(',"\n\r\t 0123456789.-+eEinfaxyz;\x00\u00e9')), max_size=80)


def test_fuzz_csv(tmp_path_factory):
    target = tmp_path_factory.mktemp("csv") / "t.csv"

    @FUZZ
    @given(CSV_TEXT, st.sampled_from([-1, 0, 1, 5, None, "a", "x"]), st.sampled_from([None, True, False]))
    def check(text, label_column, header):
        target.write_bytes(text.encode("utf-8", "surrogatepass"))
        _call(lambda: nn.data.load_csv(target, label_column=label_column, header=header))

    check()


# ---------------------------------------------------------------------------------------- YAML
YAML_TOKENS = [*"&*ab:{}[],-? \n'\"!0123.eE#|>", "model", "layers", "type", "Dense", "!!python/object "]
YAML_TEXT = st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join)


def _config_tree(value):
    return {"model": {"layers": [{"type": "Dense", "in_features": 2, "out_features": value}]},
            "dataset": {"source": "digits"}}


def test_fuzz_yaml_text():
    @FUZZ
    @given(YAML_TEXT)
    def check(text):
        def run():
            raw = safe_yaml(text)
            validate(raw if raw is not None else {})
        _call(run)

    check()


def test_fuzz_config_values():
    from neuronet.cli.config import build_model, compile_model

    @FUZZ
    @given(st.sampled_from(["layer", "training", "dataset", "raw"]), JSON)
    def check(where, value):
        raw = _config_tree(2)
        if where == "layer":
            raw["model"]["layers"][0]["out_features"] = value
        elif where == "training":
            raw["training"] = {"optimizer": value} if isinstance(value, (str, dict)) else {"epochs": value}
        elif where == "dataset":
            raw["dataset"] = value
        else:
            raw = value

        def run():
            cfg = validate(raw)
            model = build_model(cfg)
            compile_model(model, cfg)
        _call(run)

    check()


def test_fuzz_helpers():
    assert mutate(b"abcd", [(3, 2, 0)]) == b"ab" and list(_paths({"a": [1]})) == [(), ("a",), ("a", 0)]
