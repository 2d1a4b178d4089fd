"""CIFAR-10 from its binary version: records of <1 byte label><1024 R><1024 G><1024 B> (32x32, row-major)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..errors import DataFormatError
from .download import DatasetNotFoundError, ensure_files

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]
FOLDER = "cifar-10-batches-bin"  # what the official tarball unpacks to
ARCHIVE = "cifar-10-binary.tar.gz"
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_cifar10_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file (any number of 3073-byte records).

    Returns:
        images uint8 ``(N, 3, 32, 32)`` (NCHW, RGB) and labels int64 ``(N,)`` in 0..9.
    Raises ``DataFormatError`` naming the file when its length is not a whole number of records or a
    label is out of range; ``OSError`` when it is missing or unreadable.
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise DataFormatError(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 records "
                         f"({RECORD} bytes each: 1 label byte + 3x32x32 pixels)")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataFormatError(f"{path}: record {bad} has label {labels[bad]}; CIFAR-10 labels are 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def load_cifar10(root: str | os.PathLike, *, download: bool = True) -> Arrays:
    """Load CIFAR-10 (binary version) from ``root``.

    Looks for ``data_batch_1.bin`` … ``data_batch_5.bin`` and ``test_batch.bin`` in ``root`` or in
    ``root/cifar-10-batches-bin`` (what the official ``cifar-10-binary.tar.gz`` unpacks to). When they
    are absent and ``download`` is true, fetches that archive into ``root`` and unpacks those files;
    without a network, ``DatasetNotFoundError`` says which files to put where.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images uint8 ``(50000, 3, 32, 32)`` and
        ``(10000, 3, 32, 32)`` (NCHW, RGB), labels int64 in 0..9. Scale the images yourself,
        e.g. ``x.astype("float32") / 255``.
    """
    root = Path(root).expanduser()
    folder = _find_folder(root)
    if folder is None:
        folder = _download(root, download)
    x_train, y_train = _concat([read_cifar10_bin(folder / n) for n in TRAIN_FILES])
    x_test, y_test = _concat([read_cifar10_bin(folder / n) for n in TEST_FILES])
    return x_train, y_train, x_test, y_test


def _find_folder(root: Path) -> Path | None:
    for folder in (root, root / FOLDER):
        if all((folder / n).exists() for n in TRAIN_FILES + TEST_FILES):
            return folder
    return None


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def _download(root: Path, download: bool) -> Path:
    """Fetch the official archive and unpack the six batch files into ``root/cifar-10-batches-bin``."""
    try:
        ensure_files(root, [ARCHIVE], MIRRORS, dataset="CIFAR-10", download=download)
    except DatasetNotFoundError as e:
        names = ", ".join(TRAIN_FILES + TEST_FILES)
        raise DatasetNotFoundError(f"{e} Or put the unpacked files {names} in {root.resolve()} "
                                   f"(or in {root.resolve() / FOLDER}).") from None
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    wanted = set(TRAIN_FILES + TEST_FILES)
    with tarfile.open(root / ARCHIVE, "r:gz") as archive:
        for member in archive:
            name = Path(member.name).name  # never a path from the archive: only these known names
            if member.isfile() and name in wanted:
                with atomic_path(folder / name, "CIFAR-10") as tmp:
                    tmp.write_bytes(archive.extractfile(member).read())
                wanted.discard(name)
    if wanted:
        raise DatasetNotFoundError(f"CIFAR-10: {root / ARCHIVE} lacks {', '.join(sorted(wanted))}")
    return folder

