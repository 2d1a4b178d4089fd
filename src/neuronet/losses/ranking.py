"""Margin and ranking losses: hinge on class scores, pairs and triplets."""

from __future__ import annotations

import math

import numpy as np

from ..core.layer import ShapeError
from .base import Loss


class MultiMarginLoss(Loss):
    """Multi-class hinge loss (PyTorch: nn.MultiMarginLoss).

    h_j = max(0, margin - x_y + x_j) for j != y;  loss = mean over samples of sum_{j != y} h_j^p / C;
    dL/dx_j = p h_j^(p-1) / (C N) for j != y (the indicator [h_j > 0] when p = 1), and
    dL/dx_y = -(sum of those).

    Args:
        margin (float): Default: ``1.0``.
        p (int, keyword): 1 or 2. Default: ``1``.
    Shape:
        pred (N, C); target (N,) integer classes in [0, C).
    Saved for backward:
        dh^p/dh of the margins (workspace) and the target.
    """

    def __init__(self, margin: float = 1.0, *, p: int = 1):
        if p not in (1, 2):
            raise ValueError(f"MultiMarginLoss: p must be 1 or 2, got {p!r}")
        self.p, self.margin = int(p), float(margin)

    def _forward(self, pred, target):
        xp = self.ops.xp
        if pred.ndim != 2:
            raise ShapeError(f"MultiMarginLoss: input must be 2-D (N, C), got shape {tuple(pred.shape)}")
        n, c = pred.shape
        idx, rows = self._class_target(pred, target), self._rows(n)
        h = self.workspace("grad", (n, c))
        xp.subtract(pred, pred[rows, idx].reshape(n, 1), out=h)
        h += self.margin
        h[rows, idx] = 0.0  # the target class is not a margin
        xp.clip(h, 0.0, None, out=h)
        deriv = self._deriv = self.workspace("deriv", (n, c))
        if self.p == 1:
            xp.sign(h, out=deriv)  # 1 where the margin is violated
        else:
            xp.multiply(h, 2.0, out=deriv)
            h *= h
        self._index = idx
        return self._sum(h) / (c * max(n, 1))

    def per_sample(self, n: int):
        c = self._deriv.shape[1]
        return self._sample_sums(self.workspace("grad", (n, c)), n) / c

    def _backward(self):
        xp = self.ops.xp
        n, c = self._deriv.shape
        grad = self.workspace("grad", (n, c))
        xp.multiply(self._deriv, 1.0 / (c * max(n, 1)), out=grad)
        total = self.workspace("rowsum", (n,))
        xp.sum(grad, axis=1, out=total)
        total *= -1.0
        grad[self._rows(n), self._index] = total
        return grad

    def get_config(self):
        return {"p": self.p, "margin": self.margin}


# --------------------------------------------------------------------- losses of several inputs
class MarginRankingLoss(Loss):
    """Ranking hinge of two scores (PyTorch: nn.MarginRankingLoss).

    loss = mean(max(0, -y (x1 - x2) + margin));  dL/dx1 = -y [z >= 0] / n = -dL/dx2, z the hinge argument

    Args:
        margin (float): Default: ``0.0``.
    Shape:
        pred = (x1, x2), each (*); target y (*) with values in {-1, 1} (others raise a ValueError; on the
        sync-free path, read by nothing on the host, they make the loss non-finite, which the step refuses).
    Saved for backward:
        -y [z >= 0] (workspace).
    """

    inputs = ("input1", "input2")

    def __init__(self, margin: float = 0.0):
        self.margin = float(margin)

    def _forward(self, x1, x2, target):
        xp, shape = self.ops.xp, tuple(x1.shape)
        y = self._float_target(x1, target)
        z, d = self.workspace("z", shape), self.workspace("deriv", shape)
        xp.abs(y, out=d)
        valid = None  # sync-free: whether every |y| is 1, on the device (no read back)
        if math.prod(shape) and self._deferred:
            valid = (xp.amin(d) == 1.0) & (xp.amax(d) == 1.0)
        elif math.prod(shape) and not self.ops.item(xp.amin(d)) == self.ops.item(xp.amax(d)) == 1.0:
            raise ValueError("MarginRankingLoss: target values must be -1 or 1")
        xp.subtract(x1, x2, out=z)
        z *= y
        z *= -1.0
        z += self.margin
        xp.sign(z, out=d)
        d += 1.0
        xp.clip(d, 0.0, 1.0, out=d)  # [z >= 0]: torch's clamp_min passes the gradient at 0
        d *= y
        d *= -1.0
        xp.clip(z, 0.0, None, out=z)
        self._deriv, self._n = d, max(math.prod(shape), 1)
        value = self._sum(z) / self._n
        return value if valid is None else value / valid  # (an invalid target: inf or NaN, refused)

    def per_sample(self, n: int):
        z = self.workspace("z", tuple(self._deriv.shape))
        return self._sample_sums(z, n) / (self._n // max(n, 1))

    def _backward(self):
        xp, d = self.ops.xp, self._deriv
        g1, g2 = self.workspace("grad1", tuple(d.shape)), self.workspace("grad2", tuple(d.shape))
        xp.multiply(d, 1.0 / self._n, out=g1)
        xp.multiply(d, -1.0 / self._n, out=g2)
        return g1, g2

    def get_config(self):
        return {"margin": self.margin}


class TripletMarginLoss(Loss):
    """Triplet hinge on p-norm distances (PyTorch: nn.TripletMarginLoss, pairwise_distance's eps = 1e-6).

    loss = mean over positions of max(0, d(a, p) - d(a, n) + margin), d(x, y) = ||x - y + eps||_p over the
    last axis;  with u = x - y + eps: dd/du = sign(u) |u|^(p-1) / d^(p-1) (u / d for p = 2).

    Args:
        margin (float): Default: ``1.0``.
        p (float): the norm's degree, >= 1. Default: ``2``.
    Shape:
        pred = (anchor, positive, negative), each (..., D); target None.
    Saved for backward:
        the differences u, the distances and the active hinges (workspace).
    """

    inputs = ("anchor", "positive", "negative")
    eps = 1e-6

    def __init__(self, margin: float = 1.0, p: float = 2.0):
        if not p >= 1:
            raise ValueError(f"TripletMarginLoss: p must be >= 1, got {p!r}")
        self.margin, self.p = float(margin), float(p)

    def _forward(self, a, pos, neg, target):
        if target is not None:
            raise TypeError("TripletMarginLoss: takes no target (pass target=None); pred is "
                            "(anchor, positive, negative)")
        if a.ndim < 1:
            raise ShapeError("TripletMarginLoss: inputs must have a feature axis (..., D), got a scalar")
        xp, dim = self.ops.xp, a.shape[-1]
        m = math.prod(a.shape[:-1])
        self._shape = tuple(a.shape)
        d_pos = self._distance(a, pos, "pos")
        d_neg = self._distance(a, neg, "neg")
        z = self.workspace("z", (m,))
        xp.subtract(d_pos, d_neg, out=z)
        z += self.margin
        active = self._active = self.workspace("active", (m, 1))
        xp.sign(z.reshape(m, 1), out=active)
        active += 1.0
        xp.clip(active, 0.0, 1.0, out=active)  # [z >= 0]: torch's clamp_min passes the gradient at 0
        xp.clip(z, 0.0, None, out=z)
        self._m, self._dim = max(m, 1), dim
        return self._sum(z) / self._m

    def per_sample(self, n: int):
        return self._sample_sums(self.workspace("z", (self._m,)), n) / (self._m // max(n, 1))

    def _distance(self, x, y, name: str):
        """d = ||x - y + eps||_p per position; keeps u = x - y + eps in the workspace "u_<name>"."""
        xp, dim = self.ops.xp, x.shape[-1]
        m = math.prod(x.shape[:-1])
        u = self.workspace(f"u_{name}", (m, dim))
        xp.subtract(x.reshape(m, dim), y.reshape(m, dim), out=u)
        u += self.eps
        tmp = self.workspace("tmp", (m, dim))
        xp.abs(u, out=tmp)
        tmp **= self.p
        d = self.workspace(f"d_{name}", (m,))
        xp.sum(tmp, axis=-1, out=d)
        d **= 1.0 / self.p
        return d

    def _norm_grad(self, name: str, out):
        """out = dd/du for the distance ``name``, scaled by the active hinges / M."""
        xp, p, m, dim = self.ops.xp, self.p, self._m, self._dim
        u, d = self.workspace(f"u_{name}", (m, dim)), self.workspace(f"d_{name}", (m, 1))  # kept by forward
        tmp = self.workspace("tmp", (m, dim))
        xp.abs(u, out=out)
        out **= p - 1.0
        xp.sign(u, out=tmp)
        out *= tmp
        scale = self.workspace("scale", (m, 1))
        xp.clip(d, float(np.finfo(self.dtype).tiny), None, out=scale)
        scale **= p - 1.0
        xp.divide(self._active, scale, out=scale)
        scale *= 1.0 / self._m
        out *= scale
        return out

    def _backward(self):
        m, dim = self._m, self._dim
        g_pos = self._norm_grad("pos", self.workspace("grad_positive", (m, dim)))
        g_neg = self._norm_grad("neg", self.workspace("grad_negative", (m, dim)))
        g_a = self.workspace("grad_anchor", (m, dim))
        self.ops.xp.subtract(g_pos, g_neg, out=g_a)
        g_pos *= -1.0
        return g_a.reshape(self._shape), g_pos.reshape(self._shape), g_neg.reshape(self._shape)

    def get_config(self):
        return {"margin": self.margin, "p": self.p}
