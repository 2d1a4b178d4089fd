"""MNIST and Fashion-MNIST from their IDX files (gzip-compressed or not)."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataFormatError
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


MAX_IDX_BYTES = 1 << 32  # the largest data section read_idx accepts by default (MNIST's is 47 MB)
_CHUNK = 1 << 22


def read_idx(path: str | os.PathLike, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw): big-endian magic ``0x0000TTDD``, DD uint32 dims, then data.

    The header is checked first; the data is then read (decompressed) in chunks and reading stops
    one byte past the size the header implies, so neither a lying header nor a gzip bomb makes it
    allocate more than the file really holds, nor more than ``max_bytes``.

    Raises ``DataFormatError`` naming the file when the header, the compression or the data length is
    wrong; ``OSError`` when the file is missing or unreadable.
    """
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = _read_exactly(f, 4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
                raise DataFormatError(f"{path}: not an IDX file (magic bytes {head[:4].hex()})")
            ndim, dtype = head[3], np.dtype(_IDX_DTYPES[head[2]])
            dims = _read_exactly(f, 4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataFormatError(f"{path}: IDX header truncated ({4 + len(dims)} bytes for {ndim} "
                                      "dimensions)")
            shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
            expected = math.prod(shape) * dtype.itemsize
            if expected > max_bytes:
                raise DataFormatError(f"{path}: IDX header declares shape {shape} ({expected} bytes), over "
                                      f"the limit of {max_bytes} bytes (read_idx(..., max_bytes=...))")
            raw = _read_exactly(f, expected + 1)  # one more byte: trailing data is an error too
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataFormatError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) != expected:
        got = f"{len(raw)} bytes" if len(raw) <= expected else "more"
        raise DataFormatError(f"{path}: IDX header declares shape {shape} ({expected} data bytes) "
                              f"but the file holds {got}")
    return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _read_exactly(f, n: int) -> bytes:
    """Up to ``n`` bytes, read in chunks so a short stream allocates only what it holds."""
    parts, size = [], 0
    while size < n:
        chunk = f.read(min(_CHUNK, n - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts) if len(parts) != 1 else parts[0]


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
            raise DataFormatError(f"{dataset} {split}: images {x.shape} and labels {y.shape} do not match "
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
