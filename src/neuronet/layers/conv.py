"""Conv1D and Conv2D: y = act(weight * x + bias) as one GEMM over im2col columns (PyTorch: nn.Conv1d/2d)."""

from __future__ import annotations

import math

from ..backend import OUTPUT_DERIVATIVE, check_activation
from ..core import args
from ..core import initializers as init
from ..core.layer import Layer, ShapeError


def pair(value, name: str, owner: str, ndim: int) -> tuple[int, ...]:
    """An int or a tuple of ``ndim`` ints, as a tuple (the kernel_size/stride/padding arguments)."""
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{owner}: {name} must be an int or a tuple of {ndim} ints, got {value!r}")
    return tuple(int(v) for v in values)


def short(values: tuple):
    """(3, 3) -> 3 for printing; (3, 5) stays."""
    return values[0] if len(set(values)) == 1 else values


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """floor((size + 2*padding - kernel) / stride) + 1, PyTorch's output length (ceil_mode=False)."""
    return (size + 2 * padding - kernel) // stride + 1


class _Conv(Layer):
    """The N-d convolution, computed as 2-D: a Conv1D is a Conv2D with a (1, k) kernel over (N, C, 1, L).

    Forward: cols = im2col(zero-padded x) (C*kh*kw, N*P); z = weight (O, C*kh*kw) @ cols + bias; y = act(z),
    transposed from (O, N, P) to (N, O, P). Backward is the transpose of each step:
    dz = act'(dy^T); dweight += dz @ cols^T; dbias += sum dz; dx = col2im(weight^T @ dz).
    """

    ndim = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 activation: str | None = None, bias: bool = True):
        super().__init__()
        self.in_channels = args.size(type(self).__name__, "in_channels", in_channels)
        self.out_channels = args.size(type(self).__name__, "out_channels", out_channels)
        name = f"{type(self).__name__}({in_channels}, {out_channels})"
        self.kernel_size = pair(kernel_size, "kernel_size", name, self.ndim)
        self.stride = pair(stride, "stride", name, self.ndim)
        self.padding = pair(padding, "padding", name, self.ndim)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1 and padding >= 0, got "
                             f"{self.kernel_size}, {self.stride}, {self.padding}")
        self.activation = check_activation(activation, name)
        self.use_bias = bool(bias)

    # The 2-D view of the N-d arguments: a 1-D layer runs with a height-1 kernel.
    def _as_2d(self, values: tuple, fill: int) -> tuple[int, int]:
        return (fill, *values) if self.ndim == 1 else values

    def _spatial(self) -> str:
        return "L" if self.ndim == 1 else "H, W"

    def setup(self, input_shape):
        if len(input_shape) != self.ndim + 1 or input_shape[0] != self.in_channels:
            raise ShapeError(f"{self!r}: expected input of shape (N, {self.in_channels}, "
                             f"{self._spatial()}), got (N, {', '.join(map(str, input_shape))})")
        out = tuple(output_size(s, k, st, p) for s, k, st, p in
                    zip(input_shape[1:], self.kernel_size, self.stride, self.padding, strict=True))
        if min(out) < 1:
            raise ShapeError(f"{self!r}: input (N, {', '.join(map(str, input_shape))}) is smaller than the "
                             f"kernel {self.kernel_size} with padding {self.padding}")
        fan_in = self.in_channels * math.prod(self.kernel_size)
        bound = init.fan_in_uniform(fan_in)
        self.add_param("weight", (self.out_channels, self.in_channels, *self.kernel_size), bound)
        if self.use_bias:
            self.add_param("bias", (self.out_channels,), bound)
        self._kernel2d = self._as_2d(self.kernel_size, 1)
        self._stride2d = self._as_2d(self.stride, 1)
        self._padding2d = self._as_2d(self.padding, 0)
        self._in2d = self._as_2d(input_shape[1:], 1)    # (H, W)
        self._out2d = self._as_2d(out, 1)               # (OH, OW)
        return (self.out_channels, *out)

    def forward(self, x, training: bool = True):
        ops, n = self.ops, x.shape[0]
        c, o, (kh, kw), (oh, ow) = self.in_channels, self.out_channels, self._kernel2d, self._out2d
        k, p = c * kh * kw, oh * ow
        cols = self.workspace("cols", (c, kh, kw, n, oh, ow))
        ops.im2col(self._pad(x.reshape(n, c, *self._in2d)), self._kernel2d, self._stride2d, cols)
        self._cols = cols.reshape(k, n * p)
        z = self.workspace("z", (o, n * p))
        ops.matmul(self.params["weight"].reshape(o, k), self._cols, out=z)
        if self.use_bias:
            z += self.params["bias"].reshape(o, 1)
        a = z
        if self.activation != "linear":  # into its own buffer: in place, the Numba pass is slower
            a = self.workspace("a", (o, n * p))
            ops.activation(self.activation, z, a)
        self._z, self._a = z, a
        y = self.workspace("y", (n, o, p))
        ops.copy_(y, ops.swapaxes(a.reshape(o, n, p), 0, 1))  # (O, N, P) -> (N, O, P)
        return y.reshape(n, *self.output_shape)

    def _pad(self, x):
        """x (N, C, H, W) with zeros around it (in workspace), or x itself without padding."""
        (ph, pw), (h, w) = self._padding2d, self._in2d
        if ph == pw == 0:
            return x
        padded = self.workspace("padded", (x.shape[0], x.shape[1], h + 2 * ph, w + 2 * pw))
        self.ops.fill_(padded, 0.0)
        self.ops.copy_(padded[:, :, ph:ph + h, pw:pw + w], x)
        return padded

    def backward(self, dy):
        ops, n = self.ops, dy.shape[0]
        c, o, (kh, kw), (oh, ow) = self.in_channels, self.out_channels, self._kernel2d, self._out2d
        k, p = c * kh * kw, oh * ow
        dy_t = self.workspace("dy_t", (o, n, p))
        ops.copy_(dy_t, ops.swapaxes(dy.reshape(n, o, p), 0, 1))  # (N, O, P) -> (O, N, P)
        dz = dy_t = dy_t.reshape(o, n * p)
        if self.activation != "linear":  # (not in place: the aliased Numba loop does not vectorise)
            dz = self.workspace("dz", (o, n * p))
            z = None if self.activation in OUTPUT_DERIVATIVE else self._z
            ops.activation_backward(self.activation, dy_t, z, self._a, dz)
        ops.matmul_acc(dz, self._cols.T, self.grads["weight"].reshape(o, k), self.workspace("dw", (o, k)))
        if self.use_bias:
            db = self.workspace("db", (o,))
            ops.xp.sum(dz, axis=1, out=db)
            self.grads["bias"] += db
        if not self.needs_input_grad:
            return None
        dcols = self.workspace("dcols", (k, n * p))
        ops.matmul(self.params["weight"].reshape(o, k).T, dz, out=dcols)
        dx = self.workspace("dx", (n, c, *self._in2d))
        ops.col2im(dcols.reshape(c, kh, kw, n, oh, ow), self._kernel2d, self._stride2d, self._padding2d, dx)
        return dx.reshape(n, *self.input_shape)

    def check_input(self, x):
        if tuple(x.shape[1:]) != self.input_shape:
            dims = ", ".join(map(str, self.input_shape))
            raise ShapeError(f"{self!r}: expected input of shape (N, {dims}) "
                             f"(in_channels={self.in_channels}), got {tuple(x.shape)}")

    def extra_repr(self):
        ks, st, pd = (short(v) for v in (self.kernel_size, self.stride, self.padding))
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={ks}"
        text += f", stride={st}" if set(self.stride) != {1} else ""
        text += f", padding={pd}" if set(self.padding) != {0} else ""
        text += f", activation={self.activation!r}" if self.activation != "linear" else ""
        return text + ("" if self.use_bias else ", bias=False")

    def get_config(self):
        one = self.ndim == 1
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size[0] if one else list(self.kernel_size),
                "stride": self.stride[0] if one else list(self.stride),
                "padding": self.padding[0] if one else list(self.padding),
                "activation": self.activation, "bias": self.use_bias}


class Conv2D(_Conv):
    """2-D convolution (cross-correlation) over NCHW images, bias and activation fused.

    y[n, o] = act(bias[o] + sum_{c,i,j} weight[o, c, i, j] * x_pad[n, c, s*h + i, s*w + j])

    PyTorch: ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)`` (+ activation).

    Args:
        in_channels (int): C, channels of the input.
        out_channels (int): O, channels of the output.
        kernel_size (int | tuple[int, int]): (kh, kw).
        stride (int | tuple[int, int], optional): Default: 1.
        padding (int | tuple[int, int], optional): zeros added on each side. Default: 0.
        activation (str, optional): one of ``backend.ACTIVATIONS``, fused into forward and backward.
        bias (bool, optional): Default: ``True``.
    Shape:
        x: (N, C, H, W) -> y: (N, O, OH, OW), OH = floor((H + 2*ph - kh) / sh) + 1 (OW alike).
    Parameters:
        weight (O, C, kh, kw), bias (O) — PyTorch's layout and default init U(+-1/sqrt(C*kh*kw)).
    Saved for backward:
        the im2col columns (C*kh*kw, N*OH*OW) and the activation's output (or input) in workspace.
    """

    ndim = 2


class Conv1D(_Conv):
    """1-D convolution over (N, C, L) sequences, bias and activation fused.

    y[n, o, t] = act(bias[o] + sum_{c,i} weight[o, c, i] * x_pad[n, c, s*t + i])

    PyTorch: ``nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding)`` (+ activation).

    Args:
        in_channels (int), out_channels (int), kernel_size (int), stride (int, optional; 1),
        padding (int, optional; 0), activation (str, optional), bias (bool, optional; ``True``).
    Shape:
        x: (N, C, L) -> y: (N, O, OL), OL = floor((L + 2*padding - kernel_size) / stride) + 1.
    Parameters:
        weight (O, C, k), bias (O) — PyTorch's layout and default init.
    Saved for backward:
        as Conv2D (it runs as a Conv2D with a (1, k) kernel).
    """

    ndim = 1
