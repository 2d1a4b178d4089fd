"""Array utilities for preparing data: splitting, one-hot, scaling, image augmentation, batching."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def train_test_split(*arrays: np.ndarray, test_size: float = 0.2, shuffle: bool = True,
                     seed: int | None = 0) -> list[np.ndarray]:
    """Split each array along its first axis: returns ``[a_train, a_test, b_train, b_test, ...]``."""
    if not arrays:
        raise ValueError("train_test_split: give at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"train_test_split: arrays have different lengths {[len(a) for a in arrays]}")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"train_test_split: test_size must be in (0, 1), got {test_size}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    cut = n - max(1, int(round(n * test_size)))
    out = []
    for a in arrays:
        out += [a[order[:cut]], a[order[cut:]]]
    return out


def one_hot(labels: np.ndarray, num_classes: int | None = None, dtype: str = "float32") -> np.ndarray:
    """Integer labels (...) -> one-hot (..., num_classes)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError("one_hot: labels must be non-negative integers")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.size and labels.max() >= k:
        raise ValueError(f"one_hot: label {labels.max()} does not fit num_classes={k}")
    return np.eye(k, dtype=dtype)[labels]


def normalize(x: np.ndarray, scale: float = 255.0, dtype: str = "float32") -> np.ndarray:
    """x / scale as ``dtype`` (e.g. uint8 pixels -> [0, 1])."""
    return (np.asarray(x, dtype=dtype) / np.asarray(scale, dtype=dtype)).astype(dtype, copy=False)


def standardize(x: np.ndarray, mean=None, std=None, axis=0, eps: float = 1e-8):
    """(x - mean) / std, with mean/std computed over ``axis`` when not given; returns (x, mean, std).

    Compute the statistics on the training set and pass them when standardising the test set.
    """
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(axis=axis, keepdims=True) if mean is None else np.asarray(mean, dtype=np.float32)
    std = x.std(axis=axis, keepdims=True) if std is None else np.asarray(std, dtype=np.float32)
    return (x - mean) / (std + eps), mean, std


def augment_images(x: np.ndarray, *, shift: int = 0, rotate: float = 0.0, flip: bool = False,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Random shifts, rotations and horizontal flips of an NCHW batch (a new array; x is untouched).

    Args:
        x: images (N, C, H, W).
        shift (int): each image moves by up to ``shift`` pixels on each axis (zero-filled).
        rotate (float): each image turns by a uniform angle in [-rotate, rotate] degrees about its centre
            (nearest-neighbour sampling, zero fill).
        flip (bool): mirror each image left-right with probability 1/2.
        rng (np.random.Generator, optional): default: neuronet's global generator.
    """
    from ..core import random as nnrandom

    if x.ndim != 4:
        raise ValueError(f"augment_images: expected an NCHW batch (N, C, H, W), got shape {x.shape}")
    rng = nnrandom.generator() if rng is None else rng
    n = len(x)
    out = np.array(x, copy=True)
    if flip:
        mirrored = rng.random(n) < 0.5
        out[mirrored] = out[mirrored, :, :, ::-1]
    if rotate or shift:
        angle = np.deg2rad(rng.uniform(-rotate, rotate, n)) if rotate else np.zeros(n)
        dy, dx = rng.integers(-shift, shift + 1, (2, n)) if shift else np.zeros((2, n), dtype=np.int64)
        for start in range(0, n, 1024):  # chunks keep the (chunk, H, W) index arrays small
            part = slice(start, start + 1024)
            out[part] = _warp(out[part], angle[part], dy[part], dx[part])
    return out


def _warp(x: np.ndarray, angle: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Rotate each image by ``angle`` about its centre and shift it by (dy, dx), nearest pixel, zero fill."""
    n, _, h, w = x.shape
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ry, rx = yy - cy - dy[:, None, None], xx - cx - dx[:, None, None]  # (n, H, W), output pixel offsets
    yi = np.rint(cos * ry + sin * rx + cy).astype(np.int64)  # the source pixel each output pixel reads
    xi = np.rint(-sin * ry + cos * rx + cx).astype(np.int64)
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    gathered = x[np.arange(n)[:, None, None], :, yi.clip(0, h - 1), xi.clip(0, w - 1)]  # (n, H, W, C)
    return np.where(inside[:, None], gathered.transpose(0, 3, 1, 2), 0)


def batches(*arrays: np.ndarray, batch_size: int = 32, shuffle: bool = True, drop_last: bool = False,
            rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield aligned mini-batches ``(a[idx], b[idx], ...)`` covering the arrays once (one epoch)."""
    from ..core import random as nnrandom

    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"batches: arrays have different lengths {[len(a) for a in arrays]}")
    if batch_size < 1:
        raise ValueError(f"batches: batch_size must be >= 1, got {batch_size}")
    order = (nnrandom.generator() if rng is None else rng).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield tuple(a[idx] for a in arrays)
