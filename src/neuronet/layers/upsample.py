"""Upsample: resize NCHW images by a scale factor, nearest or bilinear (PyTorch: nn.Upsample)."""

from __future__ import annotations

import math

import numpy as np

from ..core.layer import Layer, ShapeError
from ..errors import ConfigError

MODES = ("nearest", "bilinear")


def interpolation_matrix(size: int, out: int, scale: float, mode: str) -> np.ndarray:
    """A (out, size) with resized = A @ line along one axis, by PyTorch's rule for a given scale_factor.

    nearest: output i reads input min(floor(i / scale), size - 1).
    bilinear (align_corners=False): output i reads the source point max((i + 0.5) / scale - 0.5, 0),
    weighting its two neighbours by distance (the upper one clamped to the last input).
    """
    a = np.zeros((out, size))
    dst = np.arange(out)
    if mode == "nearest":
        a[dst, np.minimum(np.floor(dst / scale).astype(np.int64), size - 1)] = 1.0
        return a
    src = np.maximum((dst + 0.5) / scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    frac = src - lo
    np.add.at(a, (dst, lo), 1.0 - frac)
    np.add.at(a, (dst, hi), frac)
    return a


class Upsample(Layer):
    """Nearest or bilinear upsampling of (N, C, H, W) images by ``scale_factor``.

    Both modes are linear and separable: y = A_h x A_w^T, with A_h (OH, H) and A_w (OW, W) the
    interpolation matrices of ``interpolation_matrix``. Forward is two small matrix products
    (t = x @ A_w^T, then y = A_h @ t) and backward their transposes (dt = A_h^T @ dy, dx = dt @ A_w);
    the cost is O(N*C*H*OW*(W + OH)) instead of O(N*C*OH*OW), fine at the image sizes of the models here.

    PyTorch: ``nn.Upsample(scale_factor, mode)`` with ``align_corners=False`` (mode "bilinear").

    Args:
        scale_factor (float | tuple[float, float], optional): per-axis factor (> 0). Default: 2.
        mode (str, optional): "nearest" or "bilinear". Default: "nearest".
    Shape:
        x: (N, C, H, W) -> y: (N, C, floor(H * sh), floor(W * sw)).
    Saved for backward:
        nothing (the map does not depend on x).
    """

    def __init__(self, scale_factor=2, mode: str = "nearest"):
        super().__init__()
        number = (int, float)
        scale = (scale_factor, scale_factor) if isinstance(scale_factor, number) else tuple(scale_factor)
        if len(scale) != 2 or not all(isinstance(s, number) and math.isfinite(s) and s > 0 for s in scale):
            raise ConfigError(f"Upsample: scale_factor must be a positive number or a pair of them, "
                              f"got {scale_factor!r}")
        if mode not in MODES:
            raise ConfigError(f"Upsample: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.scale_factor, self.mode = scale, mode
        self._matrices_on = None  # (ops, dtype, A_h, A_w) on the backend last used

    @property
    def input_spec(self):
        return self.input_shape if self.built else ("C", "H", "W")

    def setup(self, input_shape):
        c, h, w = input_shape
        out = tuple(math.floor(size * s) for size, s in zip((h, w), self.scale_factor, strict=True))
        if min(out) < 1:
            raise ShapeError(f"{self!r}: input (N, {c}, {h}, {w}) scales to an empty output {out}")
        self._host = tuple(interpolation_matrix(size, o, s, self.mode) for size, o, s in
                           zip((h, w), out, self.scale_factor, strict=True))
        self._matrices_on = None
        return (c, *out)

    def _matrices(self):
        """A_h (OH, H) and A_w (OW, W) on this layer's backend and dtype (converted once per backend)."""
        cached = self._matrices_on
        if cached is None or cached[0] is not self.ops or cached[1] != self.dtype:
            mats = tuple(self.ops.asarray(a.astype(self.dtype)) for a in self._host)
            cached = self._matrices_on = (self.ops, self.dtype, *mats)
        return cached[2], cached[3]

    def forward(self, x, training: bool = True):
        (n, c, h, _), (_, oh, ow) = x.shape, self.output_shape
        a_h, a_w = self._matrices()
        t = self.workspace("t", (n, c, h, ow))
        self.ops.matmul(x, a_w.T, out=t)
        y = self.workspace("y", (n, c, oh, ow))
        self.ops.matmul(a_h, t, out=y)
        return y

    def backward(self, dy):
        (n, c, _, ow), (_, h, w) = dy.shape, self.input_shape
        a_h, a_w = self._matrices()
        dt = self.workspace("dt", (n, c, h, ow))
        self.ops.matmul(a_h.T, dy, out=dt)
        dx = self.input_grad_buffer((n, c, h, w), dy)
        self.ops.matmul(dt, a_w, out=dx)
        return dx

    def extra_repr(self):
        sh, sw = self.scale_factor
        return f"scale_factor={sh if sh == sw else self.scale_factor}, mode={self.mode!r}"

    def get_config(self):
        sh, sw = self.scale_factor
        return {"scale_factor": sh if sh == sw else [sh, sw], "mode": self.mode}
