"""Metrics computed on host copies of a batch's predictions: each returns (sum over samples, count)."""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    """Correct predictions: argmax over the last axis for several classes, > 0.5 for one output.

    ``target`` may be class indices (...), one-hot/probabilities (..., C) or 0/1 labels.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim == 1 or pred.shape[-1] == 1:  # one output per sample: a probability
        guess, truth = pred.reshape(-1) > 0.5, target.reshape(-1) > 0.5
    else:
        guess = pred.argmax(axis=-1)
        truth = target.argmax(axis=-1) if target.shape == pred.shape else target
    if guess.size != truth.size:
        raise ValueError(f"accuracy: predictions {pred.shape} do not match targets {target.shape}")
    correct = guess == truth.reshape(guess.shape)
    return float(correct.sum()), int(correct.size)


METRICS = {"accuracy": accuracy, "acc": accuracy}


def resolve(names) -> dict:
    """Metric names -> functions, raising on an unknown name with the known ones."""
    out = {}
    for name in names or []:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
        out["accuracy" if name == "acc" else name] = METRICS[name]
    return out
