"""Metrics by name, accumulated over an epoch on host copies of each batch's predictions.

``compile(metrics=[...])`` takes these names:

    accuracy, acc               correct / samples (argmax, or > 0.5 for one output)
    top_k_accuracy, top5, topK  target among the K highest scores (K = 5 for top_k_accuracy)
    precision, recall, f1       macro averages over the classes seen (scikit-learn's average="macro");
                                for one output (a probability), those of the positive class (> 0.5)
    mae, mse                    mean absolute / squared error over every element

Each name maps to a factory of a fresh accumulator: ``update(pred, target)`` per batch, ``result()``
for the epoch so far. Precision, recall and F1 are not means of per-batch values: they add up the
per-class counts of true and false positives and false negatives.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np


def accuracy(pred: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    """Correct predictions: argmax over the last axis for several classes, > 0.5 for one output.

    ``target`` may be class indices (...), one-hot/probabilities (..., C) or 0/1 labels.
    """
    guess, truth = _labels(pred, target, "accuracy")
    correct = guess == truth
    return float(correct.sum()), int(correct.size)


def top_k_accuracy(pred: np.ndarray, target: np.ndarray, k: int = 5) -> tuple[float, int]:
    """Samples whose target class is among the ``k`` highest scores of (..., C) ``pred``."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim < 2 or pred.shape[-1] < 2:
        raise ValueError(f"top_{k}_accuracy: needs scores for several classes (..., C), got {pred.shape}")
    truth = (target.argmax(axis=-1) if target.shape == pred.shape else target).reshape(-1)
    scores = pred.reshape(-1, pred.shape[-1])
    if truth.size != len(scores):
        raise ValueError(f"top_{k}_accuracy: predictions {pred.shape} do not match targets {target.shape}")
    rows = np.arange(len(scores))
    # ranked within the top k when fewer than k classes score strictly higher (ties count for the target)
    higher = (scores > scores[rows, truth.astype(np.int64)][:, None]).sum(axis=1)
    return float((higher < k).sum()), len(scores)


def absolute_error(pred: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    diff = _difference(pred, target, "mae")
    return float(np.abs(diff).sum()), diff.size


def squared_error(pred: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    diff = _difference(pred, target, "mse")
    return float(np.square(diff).sum()), diff.size


class Metric:
    """An accumulator over the batches of an epoch.

    ``state()`` is its accumulated numbers as one float vector that ADDS UP over data split in parts
    (a distributed job sums the ranks' states; a resumed epoch restores it with ``load_state``).
    """

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> float:
        raise NotImplementedError

    def state(self) -> np.ndarray:
        raise NotImplementedError

    def load_state(self, values) -> None:
        raise NotImplementedError


class MeanMetric(Metric):
    """The running mean of a ``fn(pred, target) -> (sum over samples, count)``."""

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], tuple[float, int]]):
        self.fn, self.total, self.count = fn, 0.0, 0

    def update(self, pred, target) -> None:
        s, c = self.fn(pred, target)
        self.total += s
        self.count += c

    def result(self) -> float:
        return self.total / max(self.count, 1)

    def state(self) -> np.ndarray:
        return np.array([self.total, self.count], np.float64)

    def load_state(self, values) -> None:
        self.total, self.count = float(values[0]), int(values[1])


class ClassificationMetric(Metric):
    """Macro-averaged precision, recall or F1 from per-class counts (positive class only for one output).

    A class enters the average once it has been predicted or been a target (scikit-learn's labels);
    a ratio with a zero denominator counts as 0 (scikit-learn's ``zero_division=0``).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.counts = np.zeros((3, 0), np.int64)  # true positives, false positives, false negatives
        self.binary: bool | None = None

    def update(self, pred, target) -> None:
        pred = np.asarray(pred)
        guess, truth = _labels(pred, target, self.kind)
        self.binary = pred.ndim == 1 or pred.shape[-1] == 1
        guess, truth = guess.astype(np.int64).reshape(-1), truth.astype(np.int64).reshape(-1)
        c = max(self.counts.shape[1], int(guess.max(initial=0)) + 1, int(truth.max(initial=0)) + 1)
        hit = guess == truth
        batch = np.stack([np.bincount(guess[hit], minlength=c), np.bincount(guess[~hit], minlength=c),
                          np.bincount(truth[~hit], minlength=c)])
        batch[:, :self.counts.shape[1]] += self.counts
        self.counts = batch

    def state(self) -> np.ndarray:
        """The counts class by class (tp, fp, fn of class 0, then class 1, ...): zero-padding adds classes."""
        return self.counts.T.astype(np.float64).ravel()

    def load_state(self, values) -> None:
        self.counts = np.asarray(values, np.float64).reshape(-1, 3).T.astype(np.int64)

    def result(self) -> float:
        tp, fp, fn = self.counts.astype(np.float64)
        if self.binary:
            tp, fp, fn = tp[1:], fp[1:], fn[1:]
        else:
            seen = (tp + fp + fn) > 0
            tp, fp, fn = tp[seen], fp[seen], fn[seen]
        if tp.size == 0:
            return 0.0
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        value = {"precision": precision, "recall": recall,
                 "f1": _ratio(2 * precision * recall, precision + recall)}[self.kind]
        return float(value.mean())


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _labels(pred, target, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) class labels of the same shape: argmax over classes, or > 0.5 for one output."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim == 1 or pred.shape[-1] == 1:  # one output per sample: a probability
        guess, truth = pred.reshape(-1) > 0.5, target.reshape(-1) > 0.5
    else:
        guess = pred.argmax(axis=-1)
        truth = target.argmax(axis=-1) if target.shape == pred.shape else target
    if guess.size != truth.size:
        raise ValueError(f"{name}: predictions {pred.shape} do not match targets {target.shape}")
    return guess, truth.reshape(guess.shape)


def _difference(pred, target, name: str) -> np.ndarray:
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.size != target.size:
        raise ValueError(f"{name}: predictions {pred.shape} do not match targets {target.shape}")
    return pred - target.reshape(pred.shape)


METRICS: dict[str, Callable[[], Metric]] = {
    "accuracy": functools.partial(MeanMetric, accuracy),
    "top_k_accuracy": functools.partial(MeanMetric, top_k_accuracy),
    "precision": functools.partial(ClassificationMetric, "precision"),
    "recall": functools.partial(ClassificationMetric, "recall"),
    "f1": functools.partial(ClassificationMetric, "f1"),
    "mae": functools.partial(MeanMetric, absolute_error),
    "mse": functools.partial(MeanMetric, squared_error),
}
ALIASES = {"acc": "accuracy", "mean_absolute_error": "mae", "mean_squared_error": "mse", "f1_score": "f1"}
_TOP_K = re.compile(r"top_?(\d+)(_accuracy)?")


def resolve(names) -> dict[str, Callable[[], Metric]]:
    """Metric names -> accumulator factories, raising on an unknown name with the known ones."""
    out = {}
    for name in names or []:
        key = ALIASES.get(name, name)
        top = _TOP_K.fullmatch(str(key))
        if top and int(top.group(1)) >= 1:
            k = int(top.group(1))
            out[key] = functools.partial(MeanMetric, functools.partial(top_k_accuracy, k=k))
        elif key in METRICS:
            out[key] = METRICS[key]
        else:
            known = sorted({*METRICS, *ALIASES, "top5", "topK"})
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(known)}")
    return out
