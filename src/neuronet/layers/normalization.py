"""Normalisation over the feature axis (LayerNorm, RMSNorm) or channel groups (GroupNorm), as PyTorch's."""

from __future__ import annotations

import math

from ..core import args
from ..core import initializers as init
from ..core.layer import Layer
from ..errors import ConfigError


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
        self.add_param("weight", (self.d,), init.ones)
        if self.center:
            self.add_param("bias", (self.d,), init.zeros)
        return input_shape

    @property
    def input_spec(self):
        return (..., self.d)

    def forward(self, x, training: bool = True):
        self._x = x
        m = math.prod(x.shape[:-1])
        self._mean, self._rstd = self.workspace("mean", (m,)), self.workspace("rstd", (m,))
        y = self.kernel_output("y", tuple(x.shape))
        return self.ops.norm_rows(x, self.params["weight"], self.params.get("bias"), self.eps, self.center, y,
                                  self._mean, self._rstd)

    def backward(self, dy):
        dx = self.kernel_input_grad(tuple(dy.shape), dy)
        dw, db = _affine_grads(self)
        return self.ops.norm_rows_backward(dy, self._x, self.params["weight"], self._mean, self._rstd,
                                           self.center, dx, dw, db)

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


class GroupNorm(Layer):
    """Split each sample's channels into groups; normalise each group over its channels and positions.

    y = (x - mean_g) / sqrt(var_g + eps) * weight[c] + bias[c]   (mean, biased var over group g's
    C/G channels and all positions of one sample)
    dx = rstd (gy - mean_g(gy) - xhat mean_g(gy xhat)),  gy = dy * weight[c]

    PyTorch counterpart: ``nn.GroupNorm(num_groups, num_channels, eps)``. One group is LayerNorm over
    (C, *); C groups is InstanceNorm with a per-channel affine.

    Args:
        num_groups (int): G, which must divide ``num_channels``.
        num_channels (int): C, the size of axis 1.
        eps (float, optional): added to the variance. Default: ``1e-5``.
    Shape:
        x: (N, C, *) -> y: (N, C, *)
    Parameters:
        weight (C) = 1, bias (C) = 0.
    Saved for backward:
        x (by reference), mean and rstd per (sample, group) (workspace).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.num_channels, self.eps = int(num_groups), int(num_channels), float(eps)
        if self.num_groups < 1 or self.num_channels % self.num_groups:
            raise ConfigError(f"{self!r}: num_channels ({self.num_channels}) must be divisible by "
                              f"num_groups ({self.num_groups}), and num_groups >= 1")

    def setup(self, input_shape):
        self.add_param("weight", (self.num_channels,), init.ones)
        self.add_param("bias", (self.num_channels,), init.zeros)
        return input_shape

    @property
    def input_spec(self):
        return (self.num_channels, ...)

    def forward(self, x, training: bool = True):
        self.check_input(x)
        n = x.shape[0]
        self._x = x.reshape(n, self.num_channels, -1)  # (N, C, M): every position after the channels
        stats = (n * self.num_groups,)
        self._mean, self._rstd = self.workspace("mean", stats), self.workspace("rstd", stats)
        y = self.kernel_output("y", self._x.shape)  # (NEW on the torch backend: PyTorch's result kept)
        y = self.ops.group_norm(self._x, self.params["weight"], self.params["bias"], self.num_groups,
                                self.eps, y, self._mean, self._rstd)
        return y.reshape(x.shape)

    def backward(self, dy):
        shape = self._x.shape
        dx = self.ops.group_norm_backward(dy.reshape(shape), self._x, self.params["weight"], self._mean,
                                          self._rstd, self.num_groups, self.kernel_input_grad(shape, dy),
                                          *_affine_grads(self))
        return dx.reshape(dy.shape)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"

    def get_config(self):
        return {"num_groups": self.num_groups, "num_channels": self.num_channels, "eps": self.eps}


def _affine_grads(layer: Layer) -> tuple:
    """Where a norm's fused backward kernel accumulates dweight and dbias (None without a bias): the
    gradients, or, for a frozen layer, scratch that nobody reads (the sums come in the same pass as dx)."""
    dw, db = layer.grads["weight"], layer.grads.get("bias")
    if layer.trainable:
        return dw, db
    return layer.workspace("dw_frozen", tuple(dw.shape)), \
        None if db is None else layer.workspace("db_frozen", tuple(db.shape))
