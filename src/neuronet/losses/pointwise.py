"""Elementwise losses: the mean over every element of f(pred, target) (regression, binary, KL)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Loss


class _PointwiseLoss(Loss):
    """sum over elements of f(pred, target), divided by ``_count`` (all elements: reduction="mean").

    Subclasses implement ``_pointwise(x, t) -> (v, d)``: ``v`` (a workspace buffer shaped as x) times
    ``value_scale`` is f elementwise, ``d`` (a workspace buffer) times ``deriv_scale`` is df/dx; the
    workspace "grad" is free scratch inside ``_pointwise``.
    """

    value_scale = 1.0
    deriv_scale = 1.0

    def _forward(self, x, target):
        t = self._float_target(x, target)
        self._values, self._deriv = self._pointwise(x, t)
        n = max(self._count(x), 1)
        self._scale = self.deriv_scale / n
        return self.value_scale * self._sum(self._values) / n

    def per_sample(self, n: int):
        return self.value_scale * self._sample_sums(self._values, n) / max(self._count(self._values[:1]), 1)

    def _count(self, x) -> int:
        return math.prod(x.shape)

    def _pointwise(self, x, t) -> tuple[Any, Any]:
        raise NotImplementedError

    def _backward(self):
        grad = self.workspace("grad", tuple(self._deriv.shape))
        self.ops.xp.multiply(self._deriv, self._scale, out=grad)
        return grad


class MSELoss(_PointwiseLoss):
    """Mean squared error (PyTorch: nn.MSELoss).

    loss = mean((x - t)^2);  dL/dx = 2 (x - t) / n

    Shape:
        pred (*), target (*) the same shape.
    Saved for backward:
        x - t (workspace).
    """

    deriv_scale = 2.0

    def _pointwise(self, x, t):
        xp = self.ops.xp
        d = self.workspace("deriv", tuple(x.shape))
        xp.subtract(x, t, out=d)
        sq = self.workspace("grad", tuple(x.shape))
        xp.multiply(d, d, out=sq)
        return sq, d


class L1Loss(_PointwiseLoss):
    """Mean absolute error (PyTorch: nn.L1Loss).

    loss = mean(|x - t|);  dL/dx = sign(x - t) / n   (0 where x = t)

    Shape:
        pred (*), target (*) the same shape.
    Saved for backward:
        sign(x - t) (workspace).
    """

    def _pointwise(self, x, t):
        xp = self.ops.xp
        d = self.workspace("grad", tuple(x.shape))
        xp.subtract(x, t, out=d)
        s = self.workspace("deriv", tuple(x.shape))
        xp.sign(d, out=s)
        xp.abs(d, out=d)
        return d, s


class HuberLoss(_PointwiseLoss):
    """Huber loss (PyTorch: nn.HuberLoss).

    f = 0.5 d^2 where |d| <= delta, else delta (|d| - 0.5 delta), d = x - t;
    dL/dx = clip(d, -delta, delta) / n

    Args:
        delta (float): where the quadratic turns linear (> 0). Default: ``1.0``.
    Shape:
        pred (*), target (*) the same shape.
    Saved for backward:
        clip(d, -delta, delta) (workspace).
    """

    value_scale = 0.5

    def __init__(self, delta: float = 1.0):
        if not delta > 0:
            raise ValueError(f"HuberLoss: delta must be > 0, got {delta!r}")
        self.delta = float(delta)

    def _pointwise(self, x, t):
        xp = self.ops.xp
        d = self.workspace("grad", tuple(x.shape))
        xp.subtract(x, t, out=d)
        c = self.workspace("deriv", tuple(x.shape))
        xp.clip(d, -self.delta, self.delta, out=c)
        d *= 2.0  # 2 f = c (2 d - c)
        d -= c
        d *= c
        return d, c

    def get_config(self):
        return {"delta": self.delta}


class BCELoss(_PointwiseLoss):
    """Binary cross-entropy on probabilities (PyTorch: nn.BCELoss).

    f = -(t log x + (1 - t) log(1 - x)), each log clamped at -100 as PyTorch does;
    dL/dx = (x - t) / max(x (1 - x), 1e-12) / n

    Shape:
        pred (*) with values in [0, 1] (others raise a ValueError; on the sync-free path, read by nothing
        on the host, they make the loss NaN, which ``train_step`` refuses), target (*) the same shape.
    Saved for backward:
        the derivative (workspace).
    """

    value_scale = -1.0

    def _pointwise(self, x, t):
        ops, xp, shape = self.ops, self.ops.xp, tuple(x.shape)
        # (sync-free: no range to read back; a value outside [0, 1] makes the loss NaN, refused by the step)
        if math.prod(shape) and not self._deferred:
            lo, hi = ops.item(xp.amin(x)), ops.item(xp.amax(x))
            if not (lo >= 0.0 and hi <= 1.0):
                raise ValueError(f"BCELoss: input must hold probabilities in [0, 1], got values in "
                                 f"[{lo}, {hi}] (for logits use BCEWithLogitsLoss)")
        log_x, log_1mx = self.workspace("grad", shape), self.workspace("tmp", shape)
        d = self.workspace("deriv", shape)
        xp.multiply(x, -1.0, out=log_1mx)
        log_1mx += 1.0  # 1 - x
        xp.multiply(x, log_1mx, out=log_x)
        xp.clip(log_x, 1e-12, 1.0, out=log_x)
        xp.subtract(x, t, out=d)
        d /= log_x  # (x - t) / max(x (1 - x), 1e-12)
        xp.log(x, out=log_x)
        xp.log(log_1mx, out=log_1mx)
        xp.clip(log_x, -100.0, 0.0, out=log_x)
        xp.clip(log_1mx, -100.0, 0.0, out=log_1mx)
        log_x -= log_1mx  # t log x + (1 - t) log(1 - x) = log(1 - x) + t (log x - log(1 - x))
        log_x *= t
        log_x += log_1mx
        return log_x, d


class BCEWithLogitsLoss(_PointwiseLoss):
    """Binary cross-entropy on logits, sigmoid fused (PyTorch: nn.BCEWithLogitsLoss).

    f = max(x, 0) - x t + log(1 + exp(-|x|));  dL/dx = (sigmoid(x) - t) / n

    Shape:
        pred (*) logits, target (*) the same shape.
    Saved for backward:
        sigmoid(x) - t (workspace).
    """

    def _pointwise(self, x, t):
        ops, xp, shape = self.ops, self.ops.xp, tuple(x.shape)
        f, d = self.workspace("grad", shape), self.workspace("deriv", shape)
        xp.abs(x, out=f)
        f *= -1.0
        xp.exp(f, out=f)
        xp.log1p(f, out=f)
        xp.clip(x, 0.0, None, out=d)
        f += d
        xp.multiply(x, t, out=d)
        f -= d
        ops.activation("sigmoid", x, d)
        d -= t
        return f, d


class KLDivLoss(_PointwiseLoss):
    """KL divergence of log-probabilities from probabilities (PyTorch: nn.KLDivLoss(reduction="batchmean")).

    loss = sum(t (log t - x)) / N  (0 where t = 0), N = the first dimension;  dL/dx = -t / N

    Shape:
        pred (N, *) log-probabilities, target (N, *) probabilities.
    Saved for backward:
        -t (workspace).
    """

    def _count(self, x):
        return x.shape[0] if x.ndim else 1

    def _pointwise(self, x, t):
        xp, shape = self.ops.xp, tuple(x.shape)
        f, d = self.workspace("grad", shape), self.workspace("deriv", shape)
        xp.clip(t, float(np.finfo(self.dtype).tiny), None, out=f)  # t log t -> 0 where t = 0
        xp.log(f, out=f)
        f -= x
        f *= t
        xp.multiply(t, -1.0, out=d)
        return f, d
