"""MNIST and Fashion-MNIST from their IDX files (gzip-compressed or not)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .download import DatasetNotFoundError, ensure_files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_MIRRORS = {
    "MNIST": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "Fashion-MNIST": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],  # http only
}

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw): big-endian magic ``0x0000TTDD``, DD uint32 dims, then data.

    Raises ``ValueError`` naming the file when the header or the data length is wrong.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if expected != len(raw):
        raise ValueError(f"{path}: IDX header declares shape {shape} ({expected} bytes) "
                         f"but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _load_idx_set(root: str | os.PathLike, dataset: str, download: bool) -> Arrays:
    root = Path(root).expanduser()
    paths = []
    for name in _FILES:
        found = next((root / (name + s) for s in (".gz", "") if (root / (name + s)).exists()), None)
        dotted = root / name.replace("-idx", ".idx")  # the "train-images.idx3-ubyte" spelling
        if found is None and dotted.exists():
            found = dotted
        paths.append(found)
    if any(p is None for p in paths):
        try:
            missing = [n + ".gz" for n, p in zip(_FILES, paths, strict=True) if p is None]
            ensure_files(root, missing, _MIRRORS[dataset], dataset=dataset, download=download)
        except DatasetNotFoundError as e:
            names = ", ".join(n + "[.gz]" for n in _FILES)
            raise DatasetNotFoundError(f"{e} Accepted names: {names}.") from None
        paths = [p or root / (n + ".gz") for n, p in zip(_FILES, paths, strict=True)]
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{dataset} {split}: images {x.shape} and labels {y.shape} do not match "
                             "(want (N, H, W) and (N,))")
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def load_mnist(root: str | os.PathLike, *, download: bool = True) -> Arrays:
    """Load MNIST from the four IDX files in ``root``.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each gzip-compressed (``.gz``) or raw. Missing files are downloaded into
    ``root`` when ``download`` is true and a network is reachable; otherwise ``DatasetNotFoundError``
    says which files to put where.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images uint8 ``(60000, 28, 28)`` and ``(10000, 28, 28)``
        (0 = background, 255 = ink), labels int64 ``(60000,)`` and ``(10000,)`` in 0..9. Scale the images
        yourself, e.g. ``x.reshape(len(x), -1).astype("float32") / 255``.
    """
    return _load_idx_set(root, "MNIST", download)


def load_fashion_mnist(root: str | os.PathLike, *, download: bool = True) -> Arrays:
    """Load Fashion-MNIST from ``root``: same file names, format and return value as ``load_mnist``."""
    return _load_idx_set(root, "Fashion-MNIST", download)
