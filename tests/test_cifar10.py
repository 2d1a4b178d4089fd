import numpy as np
import pytest

from neuronet.data import DatasetNotFoundError, load_cifar10, read_cifar10_bin


def write_batch(path, images, labels):
    """CIFAR-10 binary records: <label><1024 R><1024 G><1024 B>."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    path.write_bytes(records.astype(np.uint8).tobytes())


def random_batch(rng, n):
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def test_read_generated_file_keeps_channel_planes(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = random_batch(rng, 3)
    write_batch(tmp_path / "b.bin", images, labels)
    raw = (tmp_path / "b.bin").read_bytes()
    assert raw[0] == labels[0] and raw[1 + 1024] == images[0, 1, 0, 0] and raw[1 + 33] == images[0, 0, 1, 1]
    x, y = read_cifar10_bin(tmp_path / "b.bin")
    assert x.dtype == np.uint8 and x.shape == (3, 3, 32, 32) and y.dtype == np.int64
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("nested", [False, True])
def test_load_cifar10_concatenates_the_batches(tmp_path, nested):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    parts = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        parts[name] = random_batch(rng, 2)
        write_batch(folder / name, *parts[name])
    x_train, y_train, x_test, y_test = load_cifar10(tmp_path, download=False)
    assert x_train.shape == (10, 3, 32, 32) and x_test.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(x_train[2:4], parts["data_batch_2.bin"][0])
    np.testing.assert_array_equal(y_test, parts["test_batch.bin"][1])


def test_bad_files_are_named(tmp_path):
    (tmp_path / "short.bin").write_bytes(bytes(3000))
    with pytest.raises(ValueError, match=r"short\.bin.*3000 bytes"):
        read_cifar10_bin(tmp_path / "short.bin")
    images, labels = random_batch(np.random.default_rng(2), 2)
    write_batch(tmp_path / "label.bin", images, np.array([3, 12]))
    with pytest.raises(ValueError, match=r"label\.bin: record 1 has label 12"):
        read_cifar10_bin(tmp_path / "label.bin")


def test_missing_files_without_download_say_what_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"CIFAR-10.*data_batch_1\.bin.*test_batch\.bin"):
        load_cifar10(tmp_path, download=False)


def test_real_200_image_sample(data_root):
    x, y = read_cifar10_bin(data_root / "cifar10-sample" / "train_sample_200.bin")
    assert x.shape == (200, 3, 32, 32)
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert np.bincount(y, minlength=10).tolist() == [14, 28, 22, 21, 19, 19, 18, 21, 15, 23]
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), [124.2, 120.9, 110.7], atol=0.06)
