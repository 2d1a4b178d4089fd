"""Normalisation of each position over the feature axis: LayerNorm and RMSNorm (nn.LayerNorm, nn.RMSNorm)."""

from __future__ import annotations

import math

from ..core import args
from ..core import initializers as init
from ..core.layer import Layer, ShapeError


class LayerNorm(Layer):
    """Normalise each position's last axis to zero mean and unit variance, then scale and shift.

    y = (x - mean) / sqrt(var + eps) * weight + bias      (mean, biased var over the last axis)
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * weight,  xhat = (x - mean) * rstd

    PyTorch counterpart: ``nn.LayerNorm(d, eps)``.

    Args:
        d (int): size of the last axis.
        eps (float, optional): added to the variance. Default: ``1e-5``.
    Shape:
        x: (N, *, d) -> y: (N, *, d)
    Parameters:
        weight (d) = 1, bias (d) = 0.
    Saved for backward:
        x (by reference), mean and rstd per position (workspace).
    """

    center = True  # subtract the mean (RMSNorm does not)

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.d = args.size(type(self).__name__, "d", d)
        self.eps = args.real(type(self).__name__, "eps", eps, 0.0, lo_open=True)

    def setup(self, input_shape):
        if not input_shape or input_shape[-1] != self.d:
            raise ShapeError(f"{self!r}: expected input of shape (N, ..., {self.d}), "
                             f"got (N, {', '.join(map(str, input_shape))})")
        self.add_param("weight", (self.d,), init.ones)
        if self.center:
            self.add_param("bias", (self.d,), init.zeros)
        return input_shape

    def check_input(self, x):
        if x.ndim < 2 or x.shape[-1] != self.d:
            raise ShapeError(f"{self!r}: expected input of shape (N, ..., {self.d}), got {tuple(x.shape)}")

    def forward(self, x, training: bool = True):
        self._x = x
        m = math.prod(x.shape[:-1])
        self._mean, self._rstd = self.workspace("mean", (m,)), self.workspace("rstd", (m,))
        y = self.workspace("y", tuple(x.shape))
        return self.ops.norm_rows(x, self.params["weight"], self.params.get("bias"), self.eps, self.center, y,
                                  self._mean, self._rstd)

    def backward(self, dy):
        dx = self.workspace("dx", tuple(dy.shape))
        return self.ops.norm_rows_backward(dy, self._x, self.params["weight"], self._mean, self._rstd,
                                           self.center, dx, self.grads["weight"], self.grads.get("bias"))

    def extra_repr(self):
        return f"{self.d}, eps={self.eps}"

    def get_config(self):
        return {"d": self.d, "eps": self.eps}


class RMSNorm(LayerNorm):
    """Scale each position's last axis by its reciprocal root mean square.

    y = x / sqrt(mean(x^2) + eps) * weight
    dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * weight,  xhat = x * rstd

    PyTorch counterpart: ``nn.RMSNorm(d, eps)``.

    Args:
        d (int): size of the last axis.
        eps (float, optional): added to the mean square. Default: ``1e-6``.
    Shape:
        x: (N, *, d) -> y: (N, *, d)
    Parameters:
        weight (d) = 1 (no bias).
    Saved for backward:
        x (by reference) and rstd per position (workspace).
    """

    center = False

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__(d, eps)
