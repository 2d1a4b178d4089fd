"""Pooling over NCHW images: MaxPool2D, AvgPool2D, GlobalAvgPool2D (PyTorch: nn.MaxPool2d, AvgPool2d, ...)."""

from __future__ import annotations

from ..core.layer import Layer, ShapeError
from .conv import output_size, pair, short


class _Pool2D(Layer):
    """The arguments and shape rule of the windowed poolings (``ceil_mode=False``, PyTorch's default)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name, 2)
        self.stride = pair(self.kernel_size if stride is None else stride, "stride", name, 2)
        self.padding = pair(padding, "padding", name, 2)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0 or \
                any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(f"{self!r}: need kernel_size >= 1, stride >= 1 and 0 <= padding <= "
                             f"kernel_size / 2, got {self.kernel_size}, {self.stride}, {self.padding}")

    def setup(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"{self!r}: expected input of shape (N, C, H, W), got (N, {_dims(input_shape)})")
        out = tuple(output_size(s, k, st, p) for s, k, st, p in
                    zip(input_shape[1:], self.kernel_size, self.stride, self.padding, strict=True))
        if min(out) < 1:
            raise ShapeError(f"{self!r}: input (N, {', '.join(map(str, input_shape))}) is smaller than the "
                             f"window {self.kernel_size} with padding {self.padding}")
        return (input_shape[0], *out)

    def extra_repr(self):
        text = f"kernel_size={short(self.kernel_size)}"
        text += f", stride={short(self.stride)}" if self.stride != self.kernel_size else ""
        return text + (f", padding={short(self.padding)}" if set(self.padding) != {0} else "")

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}


def _dims(shape: tuple) -> str:
    return ", ".join(map(str, shape))


class MaxPool2D(_Pool2D):
    """The maximum of each window; the gradient flows to the position of that maximum.

    y[n, c, oh, ow] = max_{i,j} x_pad[n, c, oh*sh + i, ow*sw + j]   (padding counts as -inf)

    PyTorch: ``nn.MaxPool2d(kernel_size, stride=None, padding=0)`` (ties: the first maximum; NaN propagates).

    Args:
        kernel_size (int | tuple[int, int]): window (kh, kw).
        stride (int | tuple[int, int], optional): Default: ``kernel_size``.
        padding (int | tuple[int, int], optional): at most half the window. Default: 0.
    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW), OH = floor((H + 2*ph - kh) / sh) + 1.
    Saved for backward:
        the int64 index of each window's maximum in its input plane (workspace), as PyTorch's indices.
    """

    def forward(self, x, training: bool = True):
        n = x.shape[0]
        y = self.workspace("y", (n, *self.output_shape))
        self._index = self.workspace("index", (n, *self.output_shape), dtype="int64")
        self.ops.max_pool2d(x, self.kernel_size, self.stride, self.padding, y, self._index)
        return y

    def backward(self, dy):
        dx = self.workspace("dx", (dy.shape[0], *self.input_shape))
        return self.ops.max_pool2d_backward(dy, self._index, dx)


class AvgPool2D(_Pool2D):
    """The mean of each window, the zero padding counted in (``count_include_pad=True``).

    y[n, c, oh, ow] = 1/(kh*kw) * sum_{i,j} x_pad[n, c, oh*sh + i, ow*sw + j]

    PyTorch: ``nn.AvgPool2d(kernel_size, stride=None, padding=0)``.

    Args:
        kernel_size (int | tuple[int, int]), stride (default ``kernel_size``), padding (default 0).
    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW).
    Saved for backward:
        nothing (the gradient of a mean does not depend on x).
    """

    def _windows(self, padded):
        """The kh*kw strided views of ``padded`` that window offset (i, j) reads, each (N, C, OH, OW)."""
        (kh, kw), (sh, sw), (oh, ow) = self.kernel_size, self.stride, self.output_shape[1:]
        for i in range(kh):
            for j in range(kw):
                yield padded[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]

    def _padded(self, n: int):
        (ph, pw), (c, h, w) = self.padding, self.input_shape
        buf = self.workspace("padded", (n, c, h + 2 * ph, w + 2 * pw))
        return buf, buf[:, :, ph:ph + h, pw:pw + w]

    def forward(self, x, training: bool = True):
        ops, n = self.ops, x.shape[0]
        if set(self.padding) != {0}:
            padded, inner = self._padded(n)
            ops.fill_(padded, 0.0)
            ops.copy_(inner, x)
            x = padded
        y = self.workspace("y", (n, *self.output_shape))
        for k, window in enumerate(self._windows(x)):
            if k == 0:
                ops.copy_(y, window)
            else:
                y += window
        y *= 1.0 / (self.kernel_size[0] * self.kernel_size[1])
        return y

    def backward(self, dy):
        ops, n = self.ops, dy.shape[0]
        padded, inner = self._padded(n)
        ops.fill_(padded, 0.0)
        for window in self._windows(padded):
            window += dy
        dx = self.workspace("dx", (n, *self.input_shape))
        ops.copy_(dx, inner)
        dx *= 1.0 / (self.kernel_size[0] * self.kernel_size[1])
        return dx


class GlobalAvgPool2D(Layer):
    """The mean over each whole channel plane, flattened.

    y[n, c] = 1/(H*W) * sum_{h,w} x[n, c, h, w]

    PyTorch: ``nn.AdaptiveAvgPool2d(1)`` followed by ``nn.Flatten()``.

    Shape:
        x: (N, C, H, W) -> y: (N, C).
    Saved for backward:
        nothing.
    """

    def setup(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"{self!r}: expected input of shape (N, C, H, W), got (N, {_dims(input_shape)})")
        return (input_shape[0],)

    def forward(self, x, training: bool = True):
        n, c = x.shape[0], x.shape[1]
        y = self.workspace("y", (n, c))
        self.ops.xp.mean(x.reshape(n, c, -1), axis=2, out=y)
        return y

    def backward(self, dy):
        n, (c, h, w) = dy.shape[0], self.input_shape
        dx = self.workspace("dx", (n, c, h * w))
        self.ops.copy_(dx, dy.reshape(n, c, 1))
        dx *= 1.0 / (h * w)
        return dx.reshape(n, c, h, w)
