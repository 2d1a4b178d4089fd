"""Offline datasets (digits, CSV, character text) and the array utilities (split, one-hot, augment...)."""

import numpy as np
import pytest

import neuronet as nn
from neuronet.data import (
    CharDataset,
    augment_images,
    batches,
    load_csv,
    load_digits,
    normalize,
    one_hot,
    standardize,
    train_test_split,
)


def test_digits_offline():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    assert y.dtype == np.int64 and len(y) == 1797 and load_digits(flat=True)[0].shape == (1797, 64)


def test_csv_iris(data_root):
    # scikit-learn's layout: a "150,4,setosa,..." first row is data-like, so skip it explicitly as a header
    x, y = load_csv(data_root / "iris" / "iris.csv", label_column=-1, header=True)
    assert x.shape == (150, 4) and y.dtype == np.int64 and np.bincount(y).tolist() == [50, 50, 50]
    np.testing.assert_allclose(x.mean(axis=0), [5.843, 3.057, 3.758, 1.199], atol=1e-3)


def test_csv_named_label_and_errors(tmp_path, data_root):
    # dates are not numbers: the error names the row and the column
    with pytest.raises(ValueError, match=r"row 1, column 'Date': '2017-10-02' is not a number"):
        load_csv(data_root / "goog-stock" / "GOOG.csv", label_column="Close")
    (tmp_path / "t.csv").write_text("a,b,kind\n1,2,cat\n3,4,dog\n5,6,cat\n")
    x, y = load_csv(tmp_path / "t.csv", label_column="kind")
    assert x.tolist() == [[1, 2], [3, 4], [5, 6]] and y.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="no column 'label'.*a, b, kind"):
        load_csv(tmp_path / "t.csv", label_column="label")
    (tmp_path / "r.csv").write_text("1,2,0.5\n3,4,1.5\n")
    x, y = load_csv(tmp_path / "r.csv")
    assert y.dtype == np.float32 and y.tolist() == [0.5, 1.5]


def test_char_dataset(data_root):
    ds = CharDataset.from_file(data_root / "tinyshakespeare" / "input.txt", block_size=8)
    assert ds.vocab_size == 65 and len(ds) == 1115394 - 8
    assert ds.decode(ds.encode("First Citizen")) == "First Citizen"
    x, y = ds.batch(4, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    train, val = ds.split(0.9)
    assert (len(train), len(val)) == (1003854, 111540)
    with pytest.raises(ValueError, match="character 'é' is not in the vocabulary"):
        ds.encode("café")


def test_split_one_hot_scaling():
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, seed=1)
    assert len(x_te) == 3 and sorted(np.concatenate([y_tr, y_te]).tolist()) == list(range(10))
    np.testing.assert_array_equal(x_tr[:, 0] // 2, y_tr)
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="does not fit num_classes=2"):
        one_hot(np.array([2]), 2)
    assert normalize(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    z, mean, std = standardize(np.array([[1.0], [3.0]]))
    assert z.ravel().tolist() == pytest.approx([-1, 1]) and mean.item() == 2.0


def test_augment_images():
    x = np.zeros((3, 1, 5, 5), np.float32)
    x[:, 0, 2, 1] = 1.0
    flipped = augment_images(x, flip=True, rng=np.random.default_rng(0))
    assert all(img.sum() == 1.0 and (img[0, 2, 1] == 1.0 or img[0, 2, 3] == 1.0) for img in flipped)
    shifted = augment_images(x, shift=1, rng=np.random.default_rng(0))
    assert all(img.sum() == 1.0 for img in shifted) and x[:, 0, 2, 1].sum() == 3.0  # input untouched
    centre = np.zeros((4, 2, 5, 5), np.float32)
    centre[:, :, 2, 2] = 1.0
    np.testing.assert_array_equal(augment_images(centre, rotate=180.0, rng=np.random.default_rng(0)), centre)
    col = np.zeros((1, 1, 5, 5), np.float32)
    col[0, 0, :, 2] = 1.0  # a vertical bar turned by ~90 degrees becomes horizontal
    turned = augment_images(col, rotate=90.0, rng=np.random.default_rng(3))
    assert turned[0, 0, 2].sum() >= 3 and turned[0, 0, :, 2].sum() <= 2
    np.testing.assert_array_equal(augment_images(x), x)
    with pytest.raises(ValueError, match="NCHW"):
        augment_images(x[0])


def test_batches():
    nn.manual_seed(0)
    a, b = np.arange(10), np.arange(10) * 2
    got = list(batches(a, b, batch_size=4))
    assert [len(p[0]) for p in got] == [4, 4, 2]
    assert sorted(np.concatenate([p[0] for p in got]).tolist()) == list(range(10))
    assert all(np.array_equal(p[1], p[0] * 2) for p in got)
    assert [len(p[0]) for p in batches(a, batch_size=4, shuffle=False, drop_last=True)] == [4, 4]
