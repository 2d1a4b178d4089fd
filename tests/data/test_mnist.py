"""MNIST/Fashion-MNIST IDX loading: the real files, raw vs gzip, and the missing/corrupt-file errors."""

import gzip
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest

from neuronet.data import DatasetNotFoundError, load_fashion_mnist, load_mnist, read_idx

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_set(root, n_train=5, n_test=3, gz=False):
    rng = np.random.default_rng(0)
    arrays = []
    for n in (n_train, n_test):
        arrays += [rng.integers(0, 256, (n, 4, 4), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)]
    for name, a in zip(NAMES, arrays, strict=True):
        data = _idx(a)
        (root / (name + ".gz")).write_bytes(gzip.compress(data)) if gz else (root / name).write_bytes(data)
    return arrays


def test_real_mnist(data_root):
    x_train, y_train, x_test, y_test = load_mnist(data_root / "mnist", download=False)
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28) and y_train.dtype == np.int64 and y_test.shape == (10000,)
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert abs(x_test.mean() - 33.79) < 0.01


@pytest.mark.parametrize("gz", [False, True])
def test_raw_and_gzip_files_load_identically(tmp_path, gz):
    arrays = _write_set(tmp_path, gz=gz)
    for got, want in zip(load_fashion_mnist(tmp_path, download=False), arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    assert load_mnist(tmp_path)[1].dtype == np.int64


def test_missing_files_message_says_what_to_put_where(tmp_path):
    want = r"MNIST: missing .*train-images-idx3-ubyte\.gz.*downloading is disabled"
    with pytest.raises(DatasetNotFoundError, match=want):
        load_mnist(tmp_path / "nowhere", download=False)


def test_no_network_message(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("network unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    want = rf"download failed.*network unreachable.*Put the files .* in {tmp_path}"
    with pytest.raises(DatasetNotFoundError, match=want):
        load_mnist(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial files left behind


def test_corrupt_idx_is_rejected(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(ValueError, match=r"declares shape \(10, 28, 28\)"):
        read_idx(tmp_path / "bad")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
