"""Pooling: MaxPool1D/2D, AvgPool1D/2D, GlobalAvgPool2D (PyTorch: nn.MaxPool1d/2d, AvgPool1d/2d, ...).

The 1-D poolings run the 2-D code on (N, C, 1, L) with a (1, k) window.
"""

from __future__ import annotations

import numpy as np

from ..core.grad_mode import backward_after_no_grad, is_grad_enabled
from ..core.layer import Layer, ShapeError
from ..errors import ConfigError
from .conv import _plain, pair, short


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output length: floor (or ceil) of (size + 2*padding - kernel) / stride, plus 1;
    with ``ceil_mode`` a last window that would start in the right padding is dropped."""
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


class _Pool(Layer):
    """The arguments and shape rule of the windowed poolings, as 2-D windows over (N, C, H, W)."""

    ndim = 2

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        super().__init__()
        name, nd = type(self).__name__, self.ndim
        self.kernel_size = pair(kernel_size, "kernel_size", name, nd)
        self.stride = pair(self.kernel_size if stride is None else stride, "stride", name, nd)
        self.padding = pair(padding, "padding", name, nd)
        self.ceil_mode = bool(ceil_mode)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0 or \
                any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ConfigError(f"{self!r}: need kernel_size >= 1, stride >= 1 and 0 <= padding <= "
                              f"kernel_size / 2, got {self.kernel_size}, {self.stride}, {self.padding}")

    def _as_2d(self, values: tuple, fill: int) -> tuple:
        return (fill, *values) if self.ndim == 1 else tuple(values)

    @property
    def input_spec(self):
        return self.input_shape if self.built else ("C", *("L" if self.ndim == 1 else "HW"))

    def setup(self, input_shape):
        out = tuple(pool_output_size(s, k, st, p, self.ceil_mode) for s, k, st, p in
                    zip(input_shape[1:], self.kernel_size, self.stride, self.padding, strict=True))
        if min(out) < 1:
            raise ShapeError(f"{self!r}: input (N, {_dims(input_shape)}) is smaller than the "
                             f"window {self.kernel_size} with padding {self.padding}")
        self._kernel = self._as_2d(self.kernel_size, 1)   # the 2-D view
        self._stride = self._as_2d(self.stride, 1)
        self._padding = self._as_2d(self.padding, 0)
        self._in = self._as_2d(input_shape[1:], 1)        # (H, W)
        self._out = self._as_2d(out, 1)                   # (OH, OW)
        return (input_shape[0], *out)

    def extra_repr(self):
        text = f"kernel_size={short(self.kernel_size)}"
        text += f", stride={short(self.stride)}" if self.stride != self.kernel_size else ""
        text += f", padding={short(self.padding)}" if set(self.padding) != {0} else ""
        return text + (", ceil_mode=True" if self.ceil_mode else "")

    def get_config(self):
        nd = self.ndim
        return {"kernel_size": _plain(self.kernel_size, nd), "stride": _plain(self.stride, nd),
                "padding": _plain(self.padding, nd), "ceil_mode": self.ceil_mode}


def _dims(shape: tuple) -> str:
    return ", ".join(map(str, shape))


class _MaxPool(_Pool):
    """The maximum of each window; the gradient flows to the position of that maximum (see MaxPool2D)."""

    def forward(self, x, training: bool = True):
        n, c = x.shape[:2]
        y = self.workspace("y", (n, c, *self._out))
        # The argmax positions only for a backward: none under no_grad (predict: 19 MB of int64 a
        # batch of 256 in the MNIST CNN, and their writes).
        keep = is_grad_enabled()
        self._index = self.workspace("index", (n, c, *self._out), dtype="int64") if keep else None
        x = x.reshape(n, c, *self._in)
        self.ops.max_pool2d(x, self._kernel, self._stride, self._padding, y, self._index)
        return y.reshape(n, *self.output_shape)

    def backward(self, dy):
        if self._index is None:
            raise backward_after_no_grad(self, "argmax positions")
        n, c = dy.shape[:2]
        dx = self.input_grad_buffer((n, c, *self._in), dy)
        self.ops.max_pool2d_backward(dy.reshape(n, c, *self._out), self._index, dx)
        return dx.reshape(n, *self.input_shape)


class MaxPool2D(_MaxPool):
    """The maximum of each window; the gradient flows to the position of that maximum.

    y[n, c, oh, ow] = max_{i,j} x_pad[n, c, oh*sh + i, ow*sw + j]   (padding counts as -inf)

    PyTorch: ``nn.MaxPool2d(kernel_size, stride=None, padding=0, ceil_mode=False)`` (ties: the first
    maximum; NaN propagates).

    Args:
        kernel_size (int | tuple[int, int]): window (kh, kw).
        stride (int | tuple[int, int], optional): Default: ``kernel_size``.
        padding (int | tuple[int, int], optional): at most half the window. Default: 0.
        ceil_mode (bool, optional): also pool the last, partial windows (ceil instead of floor in the
            size rule; a window may not start in the right padding). Default: ``False``.
    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW), OH = floor((H + 2*ph - kh) / sh) + 1 (ceil with ceil_mode).
    Saved for backward:
        the int64 index of each window's maximum in its input plane (workspace), as PyTorch's indices;
        nothing under ``nn.no_grad()`` (``predict``, ``evaluate``).
    """


class MaxPool1D(_MaxPool):
    """The maximum of each window of a (N, C, L) sequence (a MaxPool2D over (N, C, 1, L)).

    y[n, c, t] = max_i x_pad[n, c, t*stride + i]

    PyTorch: ``nn.MaxPool1d(kernel_size, stride=None, padding=0, ceil_mode=False)``.

    Arguments, as MaxPool2D's:
        kernel_size (int), stride (int, optional; ``kernel_size``), padding (int, optional; 0, at most
        kernel_size / 2), ceil_mode (bool, optional; ``False``) — as MaxPool2D.
    Shape:
        x: (N, C, L) -> y: (N, C, OL), OL = floor((L + 2*padding - kernel_size) / stride) + 1.
    Saved for backward:
        the int64 index of each window's maximum (workspace); nothing under ``nn.no_grad()``.
    """

    ndim = 1


class _AvgPool(_Pool):
    """The mean of each window (see AvgPool2D): ops.avg_pool2d's window sums times each window's
    1/divisor."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        self.count_include_pad = bool(count_include_pad)  # (first: the argument errors print it)
        super().__init__(kernel_size, stride, padding, ceil_mode)

    def setup(self, input_shape):
        output_shape = super().setup(input_shape)
        # PyTorch's divisor of each window: its size clipped to the padded input (count_include_pad) or
        # to the input itself; one number unless ceil_mode or excluded padding make the edges differ.
        sizes = [self._window_sizes(*args) for args in zip(self._in, self._out, self._kernel, self._stride,
                                                            self._padding, strict=True)]
        inverse = 1.0 / np.outer(*sizes)
        self._inverse = inverse[0, 0] if np.all(inverse == inverse[0, 0]) else inverse.astype(self.dtype)
        return output_shape

    def _window_sizes(self, size: int, out: int, kernel: int, stride: int, padding: int) -> np.ndarray:
        start = np.arange(out) * stride - padding
        end = np.minimum(start + kernel, size + padding)
        if not self.count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        return (end - start).astype(np.float64)

    def _inverse_table(self):
        """1/divisor of each window, (OH, OW), on the layer's backend."""
        table = self.workspace("inverse", self._out)
        if isinstance(self._inverse, np.ndarray):
            self.ops.copy_(table, self.ops.asarray(self._inverse))
        else:
            self.ops.fill_(table, float(self._inverse))
        return table

    def forward(self, x, training: bool = True):
        n, c = x.shape[:2]
        y = self.workspace("y", (n, c, *self._out))
        self.ops.avg_pool2d(x.reshape(n, c, *self._in), self._kernel, self._stride, self._padding,
                            self._inverse_table(), y)
        return y.reshape(n, *self.output_shape)

    def backward(self, dy):
        n, c = dy.shape[:2]
        dx = self.input_grad_buffer((n, c, *self._in), dy)
        self.ops.avg_pool2d_backward(dy.reshape(n, c, *self._out), self._kernel, self._stride, self._padding,
                                     self._inverse_table(), dx)
        return dx.reshape(n, *self.input_shape)

    def extra_repr(self):
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}


class AvgPool2D(_AvgPool):
    """The mean of each window, the zero padding counted in by default (``count_include_pad=True``).

    y[n, c, oh, ow] = 1/divisor * sum_{i,j} x_pad[n, c, oh*sh + i, ow*sw + j]

    divisor = kh*kw, except where a window is cut: by the end of the padded input in ``ceil_mode``
    (it counts what is left), or, with ``count_include_pad=False``, by the padding (it counts only
    input elements) — PyTorch's rule.

    PyTorch: ``nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)``.

    Arguments:
        kernel_size (int | tuple[int, int]): the window.
        stride (int | tuple[int, int], optional): default ``kernel_size``.
        padding (int | tuple[int, int], optional): zeros on each side, default 0.
        ceil_mode (bool, optional): round the output size up, default ``False``.
        count_include_pad (bool, optional): divide by the whole window, padding included (default
            ``True``).
    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW), as MaxPool2D.
    Saved for backward:
        nothing (the gradient of a mean does not depend on x).
    """


class AvgPool1D(_AvgPool):
    """The mean of each window of a (N, C, L) sequence (an AvgPool2D over (N, C, 1, L)).

    PyTorch: ``nn.AvgPool1d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)``.

    Arguments, as AvgPool2D's:
        kernel_size (int), stride (int, optional), padding (int, optional), ceil_mode (bool, optional),
        count_include_pad (bool, optional) — as AvgPool2D.
    Shape:
        x: (N, C, L) -> y: (N, C, OL), as MaxPool1D.
    Saved for backward:
        nothing.
    """

    ndim = 1


class GlobalAvgPool2D(Layer):
    """The mean over each whole channel plane, flattened.

    y[n, c] = 1/(H*W) * sum_{h,w} x[n, c, h, w]

    PyTorch: ``nn.AdaptiveAvgPool2d(1)`` followed by ``nn.Flatten()``.

    Shape:
        x: (N, C, H, W) -> y: (N, C).
    Saved for backward:
        nothing.
    """

    @property
    def input_spec(self):
        return self.input_shape if self.built else ("C", "H", "W")

    def setup(self, input_shape):
        return (input_shape[0],)

    def forward(self, x, training: bool = True):
        n, c = x.shape[0], x.shape[1]
        y = self.workspace("y", (n, c))
        self.ops.xp.mean(x.reshape(n, c, -1), axis=2, out=y)
        return y

    def backward(self, dy):
        n, (c, h, w) = dy.shape[0], self.input_shape
        scaled = self.workspace("dy_scaled", (n, c, 1))  # dy / (H*W) first: one pass over dx, not two
        self.ops.xp.multiply(dy.reshape(n, c, 1), 1.0 / (h * w), out=scaled)
        dx = self.input_grad_buffer((n, c, h * w), dy)
        self.ops.copy_(dx, scaled)
        return dx.reshape(n, c, h, w)
