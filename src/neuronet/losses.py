"""Losses: ``loss.forward(pred, target) -> float``, then ``loss.backward() -> dL/dpred``.

Each reduces like PyTorch's ``reduction="mean"`` and its gradient matches PyTorch's. Classes are on
the last axis: logits (..., C) with integer targets (...) or class probabilities (..., C), the mean
taken over every leading position. Buffers live in the loss's workspace, so a step allocates nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import ops_for_array
from .core.layer import ShapeError, Workspace

# Every Loss subclass by class name, for configs and files.
LOSSES: dict[str, type[Loss]] = {}


class Loss(Workspace):
    """Base class: subclasses implement ``forward`` (returning a Python float) and ``backward``."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LOSSES[cls.__name__] = cls

    def __call__(self, pred, target=None) -> float:
        return self.forward(pred, target)

    def _bind(self, pred) -> None:
        """Compute on the backend and dtype of the prediction."""
        self.ops = ops_for_array(pred)
        self.dtype = np.dtype(self.ops.dtype_name(pred))

    def _target(self, pred, target, name: str):
        """``target`` on pred's backend, as pred's float dtype, with pred's shape."""
        t = self.ops.asarray(target, self.dtype)
        if tuple(t.shape) != tuple(pred.shape):
            raise ShapeError(f"{name}: target shape {tuple(t.shape)} does not match prediction shape "
                             f"{tuple(pred.shape)}")
        return t

    def forward(self, pred, target) -> float:
        raise NotImplementedError

    def backward(self) -> Any:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MSELoss(Loss):
    """mean((pred - target)^2) over all elements.  Saved for backward: pred - target (workspace)."""

    def forward(self, pred, target):
        self._bind(pred)
        t = self._target(pred, target, "MSELoss")
        diff = self.workspace("diff", tuple(pred.shape))
        self.ops.xp.subtract(pred, t, out=diff)
        self._diff = diff
        grad = self.workspace("grad", tuple(pred.shape))
        self.ops.xp.multiply(diff, diff, out=grad)  # grad doubles as scratch until backward
        return self.ops.item(self.ops.xp.sum(grad)) / max(math.prod(diff.shape), 1)

    def backward(self):
        grad = self.workspace("grad", tuple(self._diff.shape))
        n = math.prod(self._diff.shape)
        self.ops.xp.multiply(self._diff, 2.0 / max(n, 1), out=grad)
        return grad


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy on logits, log-softmax and gradient fused.

    loss = mean over positions of -sum_c q_c log softmax(z)_c, with q the one-hot target (or the
    given probabilities) smoothed as q = (1 - eps) q + eps / C.  dL/dz = (softmax(z) sum(q) - q) / M.

    Args:
        label_smoothing (float, optional): eps in [0, 1]. Default: ``0.0``.
    Shape:
        logits (..., C); target (...) integer classes in [0, C), or (..., C) probabilities.
    Saved for backward:
        log-probabilities (workspace) and the target.
    """

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, pred, target):
        self._bind(pred)
        ops, xp = self.ops, self.ops.xp
        c = pred.shape[-1]
        z = pred.reshape(-1, c)
        m = z.shape[0]
        logp = self.workspace("logp", (m, c))
        ops.activation("log_softmax", z, logp)
        self._logp, self._shape = logp, tuple(pred.shape)
        target = ops.asarray(target)
        eps = self.label_smoothing
        if ops.is_floating(target) and tuple(target.shape) == tuple(pred.shape):
            q = ops.asarray(target, self.dtype).reshape(m, c)
            self._probs = q
            tmp = self.workspace("grad", (m, c))
            xp.multiply(logp, q, out=tmp)
            total = ops.item(xp.sum(tmp)) * (1.0 - eps)
            if eps:
                total += eps / c * ops.item(xp.sum(logp))
            return -total / m
        if tuple(target.shape) != tuple(pred.shape[:-1]):
            raise ShapeError(f"CrossEntropyLoss: integer targets must have shape {tuple(pred.shape[:-1])} "
                             f"(logits {tuple(pred.shape)}), got {tuple(target.shape)}")
        if ops.is_floating(target):
            raise TypeError(f"CrossEntropyLoss: class targets must be integers, got {ops.dtype_name(target)}")
        t = target.reshape(-1)
        lo, hi = ops.item(xp.amin(t)), ops.item(xp.amax(t))
        if lo < 0 or hi >= c:
            bad = lo if lo < 0 else hi
            raise ValueError(f"CrossEntropyLoss: class label {int(bad)} out of range [0, {c}) for {c} classes")
        self._probs, self._index = None, t
        rows = self._rows(m)
        picked = ops.item(xp.sum(logp[rows, t]))
        total = (1.0 - eps) * picked + (eps / c * ops.item(xp.sum(logp)) if eps else 0.0)
        return -total / m

    def _rows(self, m: int):
        rows = self.__dict__.get("_arange")
        if rows is None or rows.shape[0] < m or not self.ops.is_array(rows):
            rows = self.ops.arange(max(m, 1))
            self._arange = rows
        return rows[:m]

    def backward(self):
        ops, xp = self.ops, self.ops.xp
        m, c = self._logp.shape
        eps = self.label_smoothing
        grad = self.workspace("grad", (m, c))
        xp.exp(self._logp, out=grad)
        if self._probs is not None:
            # softmax * sum_c(q_smoothed) - q_smoothed, row by row (rows need not sum to 1)
            grad *= xp.sum(self._probs, axis=-1, keepdims=True) * (1.0 - eps) + eps
            grad -= self._probs * (1.0 - eps) if eps else self._probs
            if eps:
                grad -= eps / c
        else:
            grad[self._rows(m), self._index] -= 1.0 - eps
            if eps:
                grad -= eps / c
        grad *= 1.0 / m
        return grad.reshape(self._shape)

    def get_config(self):
        return {"label_smoothing": self.label_smoothing}
