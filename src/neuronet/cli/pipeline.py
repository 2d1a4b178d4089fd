"""From a config's ``dataset`` and ``preprocessing`` sections to arrays ready for ``fit``.

The fitted preprocessing (scale, standardisation statistics, flattening) is stored in the model
file, so ``neuronet evaluate`` and ``neuronet predict`` apply exactly what training applied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import data

IMAGE_SOURCES = ("digits", "mnist", "fashion_mnist", "cifar10")
DEFAULT_FOLDERS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}


def data_root() -> Path:
    """``$NEURONET_DATA``, else ``../shared/data`` next to the source checkout, else ``./data``."""
    if os.environ.get("NEURONET_DATA"):
        return Path(os.environ["NEURONET_DATA"])
    shared = Path(__file__).resolve().parents[4] / "shared" / "data"
    return shared if shared.exists() else Path("data")


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    vocab: str | None = None  # text: the characters, in token-id order


def load_dataset(ds: dict, seed: int) -> Splits:
    """The train/test arrays of a validated ``dataset`` section (images NCHW, labels int64)."""
    source, path, test = ds["source"], ds["path"], ds["splits"]["test"]
    if source == "digits":
        x, y = data.load_digits()
        splits = Splits(*_split(x, y, test, seed))
    elif source in ("mnist", "fashion_mnist"):
        root = Path(path) if path else data_root() / DEFAULT_FOLDERS[source]
        loader = data.load_mnist if source == "mnist" else data.load_fashion_mnist
        x_train, y_train, x_test, y_test = loader(root, download=ds.get("download", True))
        splits = Splits(x_train[:, None], y_train, x_test[:, None], y_test)  # (N, 1, 28, 28)
    elif source == "cifar10":  # the standard batches in a folder, or one binary batch file split here
        root = Path(path) if path else data_root() / DEFAULT_FOLDERS[source]
        if root.suffix == ".bin":
            splits = Splits(*_split(*data.read_cifar10_bin(root), test, seed))
        else:
            splits = Splits(*data.load_cifar10(root, download=ds.get("download", True)))
    elif source == "csv":
        x, y = data.load_csv(path, label_column=ds["label_column"])
        splits = Splits(*_split(x, y, test, seed))
    else:  # text: non-overlapping blocks, y = x shifted by one character
        chars = data.CharDataset.from_file(path, ds["block_size"])
        t = ds["block_size"]
        n = (len(chars.data) - 1) // t
        x = chars.data[: n * t].reshape(n, t)
        y = chars.data[1 : n * t + 1].reshape(n, t)
        cut = n - max(1, int(n * test)) if test else n
        splits = Splits(x[:cut], y[:cut], x[cut:], y[cut:], vocab="".join(chars.chars))
    if ds["limit"]:
        splits.x_train, splits.y_train = splits.x_train[: ds["limit"]], splits.y_train[: ds["limit"]]
    return splits


def _split(x, y, test: float, seed: int):
    if not test:
        return x, y, x[:0], y[:0]
    x_train, x_test, y_train, y_test = data.train_test_split(x, y, test_size=test, seed=seed)
    return x_train, y_train, x_test, y_test


class Preprocessor:
    """Scale or standardise features and optionally flatten them; fitted on the training set.

    ``normalization: auto`` scales integer (uint8) inputs by ``scale`` and leaves floats alone.
    """

    def __init__(
        self, normalization: str = "auto", scale: float = 255.0, flatten: bool = False, mean=None, std=None
    ):
        self.normalization, self.scale, self.flatten = normalization, float(scale), bool(flatten)
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)

    @classmethod
    def from_config(cls, pre: dict) -> Preprocessor:
        return cls(pre["normalization"], pre["scale"], pre["flatten"])

    def fit(self, x: np.ndarray, source: str) -> Preprocessor:
        if self.normalization == "auto":
            self.normalization = (
                "scale" if np.issubdtype(x.dtype, np.integer) and source in IMAGE_SOURCES else "none"
            )
        if self.normalization == "standardize":
            xf = self._shape(x).astype(np.float32)
            self.mean, self.std = xf.mean(axis=0), xf.std(axis=0) + 1e-6
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self._shape(np.asarray(x))
        if self.normalization == "scale":
            return x.astype(np.float32) / np.float32(self.scale)
        if self.normalization == "standardize":
            return (x.astype(np.float32) - self.mean) / self.std
        return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x

    def _shape(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) if self.flatten else x

    def to_json(self) -> dict:
        out = {"normalization": self.normalization, "scale": self.scale, "flatten": self.flatten}
        if self.mean is not None:
            out.update(mean=self.mean.tolist(), std=self.std.tolist())
        return out

    @classmethod
    def from_json(cls, d: dict) -> Preprocessor:
        if not isinstance(d, dict) or d.get("normalization") not in ("none", "scale", "standardize"):
            raise ValueError(f"preprocessing stored in the model file is invalid: {d!r:.120}")
        return cls(
            d["normalization"], d.get("scale", 255.0), d.get("flatten", False), d.get("mean"), d.get("std")
        )
