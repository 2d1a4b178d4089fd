"""Small offline datasets and generic file formats: scikit-learn's digits, CSV tables, character text."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
from pathlib import Path

import numpy as np

from ..errors import DataFormatError


def load_digits(*, flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits (1,797 samples, shipped with scikit-learn: no download).

    Returns:
        ``(x, y)``: float32 images scaled to [0, 1], shaped ``(1797, 1, 8, 8)`` (NCHW) or ``(1797, 64)``
        with ``flat=True``; int64 labels 0..9.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ImportError("load_digits needs scikit-learn (it ships the data): pip install 'neuronet[data]'")
    # scikit-learn's own file, read directly: importing sklearn.datasets takes seconds
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    x = (table[:, :64] / 16.0).astype(np.float32)
    return (x if flat else x.reshape(-1, 1, 8, 8)), table[:, 64].astype(np.int64)


def load_csv(path: str | os.PathLike, label_column: int | str | None = -1, *, header: bool | None = None,
             delimiter: str = ",", dtype: str = "float32") -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric CSV table as features and labels.

    Args:
        path: the file.
        label_column (int or str, optional): index (negative counts from the end) or header name of the
            label column; ``None`` for no labels. Default: the last column.
        header (bool, optional): whether the first row holds names. Default: guessed (a first row that is
            not all numbers is a header).
        delimiter (str, optional): field separator. Default: ``","``.
        dtype (str, optional): dtype of the features. Default: ``"float32"``.
    Returns:
        ``(x, y)``: x ``(rows, columns - 1)``; y int64 when every label is a whole number (classes), else
        float; y is ``None`` when ``label_column`` is None. Non-numeric labels are mapped to class indices
        in sorted order.
    Raises:
        DataFormatError: naming the row and column of a non-numeric or non-finite (nan, inf) feature or
            number label, a row of the wrong length, malformed CSV or text that is not UTF-8.
        OSError: the file is missing or unreadable.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataFormatError(f"load_csv: {path} is not a readable CSV file ({e!s:.200})") from None
    if not rows:
        raise DataFormatError(f"load_csv: {path} is empty")
    if header is None:
        header = not all(_is_number(v) for v in rows[0])
    names = [n.strip() for n in rows[0]] if header else [str(i) for i in range(len(rows[0]))]
    body = rows[1:] if header else rows
    width = len(names)
    for i, row in enumerate(body):
        if len(row) != width:
            raise DataFormatError(f"load_csv: {path} row {i + 1 + header} has {len(row)} fields, "
                                  f"expected {width}")
    if label_column is None:
        return _numeric(body, list(range(width)), names, path, dtype), None
    if isinstance(label_column, str):
        if label_column not in names:
            raise DataFormatError(f"load_csv: no column {label_column!r} in {path}; columns: "
                                  f"{', '.join(names)[:500]}")
        label = names.index(label_column)
    else:
        if not -width <= label_column < width:
            raise DataFormatError(f"load_csv: label_column {label_column} is out of range for {width} "
                                  "columns")
        label = label_column % width
    x = _numeric(body, [c for c in range(width) if c != label], names, path, dtype)
    raw = [row[label].strip() for row in body]
    if all(_is_number(v) for v in raw):
        y = np.array([float(v) for v in raw])
        if not np.isfinite(y).all():
            bad = int(np.argmin(np.isfinite(y)))
            raise DataFormatError(f"load_csv: {path} row {bad + 1 + header}, column {names[label]!r}: label "
                                  f"{raw[bad]!r} is not a finite number")
        whole = np.all(y == np.round(y)) and np.all(np.abs(y) < 2**53)
        y = y.astype(np.int64) if whole else y.astype(dtype)
    else:
        classes = sorted(set(raw))
        y = np.array([classes.index(v) for v in raw], dtype=np.int64)
    return x, y


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _numeric(rows: list[list[str]], columns: list[int], names: list[str], path, dtype: str) -> np.ndarray:
    out = np.empty((len(rows), len(columns)), dtype=dtype)
    for i, row in enumerate(rows):
        for j, c in enumerate(columns):
            try:
                value = float(row[c])
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                where = f"load_csv: {path} row {i + 1}, column {names[c][:80]!r}"
                what = "a number" if value is None else "a finite number"
                raise DataFormatError(f"{where}: {row[c][:80]!r} is not {what}") from None
            with np.errstate(over="ignore"):  # reported below, naming the cell
                out[i, j] = value
    if not np.isfinite(out).all():  # finite in float64, out of range of a narrower dtype
        i, j = map(int, np.argwhere(~np.isfinite(out))[0])
        raise DataFormatError(f"load_csv: {path} row {i + 1}, column {names[columns[j]][:80]!r}: "
                              f"{rows[i][columns[j]][:80]!r} does not fit {dtype}")
    return out


class CharDataset:
    """Character-level text for language models: a vocabulary, encode/decode and random (x, y) blocks.

    ``y`` is ``x`` shifted by one character (the next-character targets).

    Args:
        text (str): the corpus.
        block_size (int): characters per training example.
        vocab (str, optional): the characters to use, in index order. Default: the sorted distinct characters.
    """

    def __init__(self, text: str, block_size: int, vocab: str | None = None):
        if len(text) <= block_size:
            raise ValueError(f"CharDataset: the text ({len(text)} characters) must be longer than block_size "
                             f"({block_size})")
        self.chars = sorted(set(text)) if vocab is None else list(vocab)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.block_size = int(block_size)
        self.data = self.encode(text)

    @classmethod
    def from_file(cls, path: str | os.PathLike, block_size: int, encoding: str = "utf-8") -> CharDataset:
        return cls(Path(path).read_text(encoding=encoding), block_size)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Characters -> int64 indices; raises naming the first character outside the vocabulary."""
        try:
            return np.array([self.stoi[c] for c in text], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"CharDataset.encode: character {e.args[0]!r} is not in the vocabulary"
                             ) from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def __len__(self) -> int:
        return len(self.data) - self.block_size

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.data[i:i + self.block_size], self.data[i + 1:i + 1 + self.block_size]

    def split(self, fraction: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """The encoded text cut in two at ``fraction`` (nanoGPT's 90/10 train/validation split)."""
        cut = int(len(self.data) * fraction)
        return self.data[:cut], self.data[cut:]

    def batch(self, batch_size: int, rng: np.random.Generator | None = None, data: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` random blocks: x and y int64 ``(batch_size, block_size)``, y = x shifted by one."""
        from ..core import random as nnrandom

        data = self.data if data is None else data
        rng = nnrandom.generator() if rng is None else rng
        starts = rng.integers(0, len(data) - self.block_size, batch_size)
        offsets = starts[:, None] + np.arange(self.block_size)
        return data[offsets], data[offsets + 1]
