"""Convolutions: Conv1D, Conv2D and ConvTranspose2D (PyTorch: nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d).

Every one runs on the two kernels ``ops.conv2d`` (y = x * weight) and ``ops.conv2d_backward`` (its dx
and dweight) over one ``ConvGeometry``. A convolution uses them as written; a transposed convolution is
the adjoint of a convolution in its input, so its forward is that convolution's dx and its backward
that convolution's forward (dx) and weight gradient (with the roles of x and dy exchanged).
"""

from __future__ import annotations

import math

from ..backend import OUTPUT_DERIVATIVE, check_activation
from ..backend.conv_geometry import ConvGeometry, conv_output_size
from ..core import args
from ..core import initializers as init
from ..core.grad_mode import backward_after_no_grad, is_grad_enabled
from ..core.layer import Layer, ShapeError
from ..errors import ConfigError

PADDING_MODES = ("same", "valid")


def pair(value, name: str, owner: str, ndim: int) -> tuple[int, ...]:
    """An int or a tuple of ``ndim`` ints, as a tuple (the kernel_size/stride/padding arguments)."""
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{owner}: {name} must be an int or a tuple of {ndim} ints, got {value!r}")
    return tuple(int(v) for v in values)


def short(values: tuple):
    """(3, 3) -> 3 for printing; (3, 5) stays."""
    return values[0] if len(set(values)) == 1 else values


def _plain(values: tuple, ndim: int):
    """A tuple argument as get_config stores it: an int for 1-D layers, a list otherwise."""
    return values[0] if ndim == 1 else list(values)


def _dims(shape: tuple) -> str:
    return ", ".join(map(str, shape))


class _Conv(Layer):
    """The N-d convolution, computed as 2-D: a Conv1D is a Conv2D with a (1, k) kernel over (N, C, 1, L).

    Forward: z = ops.conv2d(x, weight, bias); y = act(z). Backward: dz = act'(dy);
    (dx, dweight, dbias) = ops.conv2d_backward(dz). The NumPy backend computes conv2d as GEMMs per
    group over im2col columns (for stride 1 by cache-sized chunks of images, the columns rebuilt for the
    weight gradient); the torch backend calls PyTorch's kernels.
    """

    ndim = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 activation: str | None = None, bias: bool = True, *, dilation=1, groups: int = 1):
        super().__init__()
        owner = type(self).__name__
        self.in_channels = args.size(owner, "in_channels", in_channels)
        self.out_channels = args.size(owner, "out_channels", out_channels)
        self.groups = args.size(owner, "groups", groups, lo=-args.MAX_SIZE)  # its range: _check_groups
        name = f"{type(self).__name__}({in_channels}, {out_channels})"
        nd = self.ndim
        self.kernel_size = pair(kernel_size, "kernel_size", name, nd)
        self.stride = pair(stride, "stride", name, nd)
        self.dilation = pair(dilation, "dilation", name, nd)
        if isinstance(padding, str):
            if padding not in PADDING_MODES:
                raise ConfigError(f"{name}: padding must be 'same', 'valid' or ints, got {padding!r}")
            if padding == "same" and set(self.stride) != {1}:
                raise ConfigError(f"{name}: padding='same' needs stride 1 (as PyTorch), got stride="
                                  f"{short(self.stride)}")
            self.padding = padding
        else:
            self.padding = pair(padding, "padding", name, nd)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 or \
                min(self._pads_before()) < 0:
            raise ConfigError(f"{name}: kernel_size, stride and dilation must be >= 1 and padding >= 0, got "
                              f"{self.kernel_size}, {self.stride}, {self.dilation}, {self.padding}")
        _check_groups(name, self.groups, self.in_channels, self.out_channels)
        self.activation = check_activation(activation, name)
        self.use_bias = bool(bias)

    def _pads(self) -> tuple[tuple[int, int], ...]:
        """(before, after) per spatial axis; "same" puts the odd one after, as PyTorch."""
        if self.padding == "valid":
            return ((0, 0),) * self.ndim
        if self.padding == "same":
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            return tuple((t // 2, t - t // 2) for t in total)
        return tuple((p, p) for p in self.padding)

    def _pads_before(self) -> tuple[int, ...]:
        return tuple(lo for lo, _ in self._pads())

    # The 2-D view of the N-d arguments: a 1-D layer runs with a height-1 kernel.
    def _as_2d(self, values: tuple, fill) -> tuple:
        return (fill, *values) if self.ndim == 1 else tuple(values)

    @property
    def input_spec(self):
        """Any spatial size to build; the built shape afterwards (the geometry is fixed at build)."""
        return self.input_shape if self.built else (self.in_channels, *("L" if self.ndim == 1 else "HW"))

    def setup(self, input_shape):
        pads = self._pads()
        out = tuple(conv_output_size(s, k, st, lo, hi, d) for s, k, st, (lo, hi), d in
                    zip(input_shape[1:], self.kernel_size, self.stride, pads, self.dilation, strict=True))
        if min(out) < 1:
            raise ShapeError(f"{self!r}: input (N, {_dims(input_shape)}) is smaller than the kernel "
                             f"{self.kernel_size} (dilation {self.dilation}) with padding {self.padding}")
        fan_in = self.in_channels // self.groups * math.prod(self.kernel_size)
        bound = init.fan_in_uniform(fan_in)
        weight_shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self.add_param("weight", weight_shape, bound)
        if self.use_bias:
            self.add_param("bias", (self.out_channels,), bound)
        self.geometry = ConvGeometry(
            in_size=self._as_2d(input_shape[1:], 1), out_size=self._as_2d(out, 1),
            kernel=self._as_2d(self.kernel_size, 1), stride=self._as_2d(self.stride, 1),
            padding=self._as_2d(pads, (0, 0)), dilation=self._as_2d(self.dilation, 1), groups=self.groups)
        return (self.out_channels, *out)

    def _weight(self, params):
        """weight (or its gradient) as (O, C/groups, kh, kw)."""
        return params["weight"].reshape(self.out_channels, -1, *self.geometry.kernel)

    def forward(self, x, training: bool = True):
        ops, n, geom, o = self.ops, x.shape[0], self.geometry, self.out_channels
        self._x = x.reshape(n, self.in_channels, *geom.in_size)
        self._z = self._a = None  # (a kernel's own last result, ops.NEW: freed before it makes the next)
        z = ops.conv2d(self._x, self._weight(self.params), self.params.get("bias"), geom,
                       self.kernel_output("z", (n, o, *geom.out_size)), self.workspace)
        a = z
        # In place where backward reads only the output (ReLU, tanh, ...) or under no_grad (none follows).
        keep_z = self.activation not in OUTPUT_DERIVATIVE and is_grad_enabled()
        if self.activation != "linear":
            a = self.workspace("a", z.shape) if keep_z else z
            ops.activation(self.activation, z, a)
        self._z, self._a = z if keep_z or self.activation in OUTPUT_DERIVATIVE else None, a
        return a.reshape(n, *self.output_shape)

    def backward(self, dy):
        ops, n, geom, o = self.ops, dy.shape[0], self.geometry, self.out_channels
        dz = dy = dy.reshape(n, o, *geom.out_size)
        if self.activation != "linear":  # (not in place: the aliased Numba loop does not vectorise)
            if self._z is None:
                raise backward_after_no_grad(self, f"pre-activation for {self.activation!r}")
            dz = self.temporary("dz", dy.shape)
            z = None if self.activation in OUTPUT_DERIVATIVE else self._z
            ops.activation_backward(self.activation, dy, z, self._a, dz)
        dx = self.kernel_input_grad(self._x.shape, dy) if self.needs_input_grad else None
        trains = self.trainable  # frozen: no weight gradients
        dx = ops.conv2d_backward(dz, self._x, self._weight(self.params), geom, dx,
                                 self._weight(self.grads) if trains else None,
                                 self.grads.get("bias") if trains else None, self.workspace)
        return None if dx is None else dx.reshape(n, *self.input_shape)

    def extra_repr(self):
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={short(self.kernel_size)}"
        text += f", stride={short(self.stride)}" if set(self.stride) != {1} else ""
        if isinstance(self.padding, str) or set(self.padding) != {0}:
            text += f", padding={self.padding!r}" if isinstance(self.padding, str) else \
                f", padding={short(self.padding)}"
        text += f", dilation={short(self.dilation)}" if set(self.dilation) != {1} else ""
        text += f", groups={self.groups}" if self.groups != 1 else ""
        text += f", activation={self.activation!r}" if self.activation != "linear" else ""
        return text + ("" if self.use_bias else ", bias=False")

    def get_config(self):
        nd = self.ndim
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": _plain(self.kernel_size, nd), "stride": _plain(self.stride, nd),
                "padding": self.padding if isinstance(self.padding, str) else _plain(self.padding, nd),
                "activation": self.activation, "bias": self.use_bias,
                "dilation": _plain(self.dilation, nd), "groups": self.groups}


def _check_groups(name: str, groups: int, in_channels: int, out_channels: int) -> None:
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ConfigError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                          f"divisible by groups, got groups={groups}")


class Conv2D(_Conv):
    """2-D convolution (cross-correlation) over NCHW images, bias and activation fused.

    y[n, o, h, w] = act(bias[o] + sum_{c in o's group, i, j} weight[o, c, i, j]
                                                             * x_pad[n, c, sh*h + dh*i, sw*w + dw*j])

    PyTorch: ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)``
    (+ activation).

    Args:
        in_channels (int): C, channels of the input.
        out_channels (int): O, channels of the output.
        kernel_size (int | tuple[int, int]): (kh, kw).
        stride (int | tuple[int, int], optional): Default: 1.
        padding (int | tuple[int, int] | "same" | "valid", optional): zeros added on each side; "same"
            keeps (H, W) (stride 1 only; an odd total puts the extra row/column after). Default: 0.
        activation (str, optional): one of ``backend.ACTIVATIONS``, fused into forward and backward.
        bias (bool, optional): Default: ``True``.
        dilation (int | tuple[int, int], optional): spacing of the kernel taps. Default: 1.
        groups (int, optional): channels split into this many independent convolutions (``groups =
            in_channels``: depthwise); both channel counts must be divisible by it. Default: 1.
    Shape:
        x: (N, C, H, W) -> y: (N, O, OH, OW), OH = floor((H + pad_top + pad_bottom - dh*(kh-1) - 1) / sh) + 1.
    Parameters:
        weight (O, C/groups, kh, kw), bias (O) — PyTorch's layout and default init
        U(+-1/sqrt(C/groups*kh*kw)).
    Saved for backward:
        the input (by reference) and the activation's output, in workspace: written over its input where
        the derivative reads only the output (ReLU, sigmoid, tanh), beside it otherwise (GELU, ...); under
        ``nn.no_grad()`` over it always.
    """

    ndim = 2


class Conv1D(_Conv):
    """1-D convolution over (N, C, L) sequences, bias and activation fused.

    y[n, o, t] = act(bias[o] + sum_{c in o's group, i} weight[o, c, i] * x_pad[n, c, s*t + d*i])

    PyTorch: ``nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)``
    (+ activation).

    Arguments, as Conv2D's:
        in_channels (int), out_channels (int), kernel_size (int), stride (int, optional; 1),
        padding (int | "same" | "valid", optional; 0), activation (str, optional), bias (bool, optional;
        ``True``), dilation (int, optional; 1), groups (int, optional; 1) — as Conv2D.
    Shape:
        x: (N, C, L) -> y: (N, O, OL), OL = floor((L + pad_left + pad_right - d*(k-1) - 1) / stride) + 1.
    Parameters:
        weight (O, C/groups, k), bias (O) — PyTorch's layout and default init.
    Saved for backward:
        as Conv2D (it runs as a Conv2D with a (1, k) kernel).
    """

    ndim = 1


class ConvTranspose2D(Layer):
    """Transposed 2-D convolution: the adjoint, in its input, of a Conv2D with the same arguments.

    Each input pixel scatters ``weight[c]`` (scaled by x[n, c, h, w]) onto the output at
    (sh*h + dh*i - padding, sw*w + dw*j - padding):

        y[n, o, sh*h + dh*i - ph, sw*w + dw*j - pw] += x[n, c, h, w] * weight[c, o, i, j]   (+ bias[o])

    PyTorch: ``nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
    output_padding, groups, bias, dilation)``.

    Args:
        in_channels (int): C, channels of the input.
        out_channels (int): O, channels of the output.
        kernel_size (int | tuple[int, int]): (kh, kw).
        stride (int | tuple[int, int], optional): Default: 1.
        padding (int | tuple[int, int], optional): rows/columns cut from each side of the full output
            (``dilation * (kernel_size - 1) - padding`` zeros around the input). Default: 0.
        output_padding (int | tuple[int, int], optional): extra rows/columns at the bottom/right, to pick
            one of the sizes a strided Conv2D maps to the same output; smaller than stride or dilation.
            Default: 0.
        bias (bool, optional): Default: ``True``.
        dilation (int | tuple[int, int], optional): Default: 1.
        groups (int, optional): Default: 1.
    Shape:
        x: (N, C, H, W) -> y: (N, O, OH, OW), OH = (H - 1)*sh - 2*ph + dh*(kh - 1) + output_padding + 1.
    Parameters:
        weight (C, O/groups, kh, kw), bias (O) — PyTorch's layout and default init
        U(+-1/sqrt(O/groups*kh*kw)).
    Saved for backward:
        the input (a reference to it; nothing is copied).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, bias: bool = True, *, dilation=1, groups: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        name = f"ConvTranspose2D({in_channels}, {out_channels})"
        self.kernel_size = pair(kernel_size, "kernel_size", name, 2)
        self.stride = pair(stride, "stride", name, 2)
        self.padding = pair(padding, "padding", name, 2)
        self.output_padding = pair(output_padding, "output_padding", name, 2)
        self.dilation = pair(dilation, "dilation", name, 2)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 or \
                min(self.padding) < 0 or min(self.output_padding) < 0:
            raise ConfigError(f"{name}: kernel_size, stride and dilation must be >= 1, padding and "
                              f"output_padding >= 0, got {self.kernel_size}, {self.stride}, {self.dilation}, "
                              f"{self.padding}, {self.output_padding}")
        if any(op >= max(s, d) for op, s, d in
               zip(self.output_padding, self.stride, self.dilation, strict=True)):
            raise ConfigError(f"{name}: output_padding must be smaller than stride or dilation (as PyTorch), "
                              f"got output_padding={short(self.output_padding)}, "
                              f"stride={short(self.stride)}, "
                              f"dilation={short(self.dilation)}")
        _check_groups(name, self.groups, self.in_channels, self.out_channels)
        self.use_bias = bool(bias)

    @property
    def input_spec(self):
        """Any spatial size to build; the built shape afterwards."""
        return self.input_shape if self.built else (self.in_channels, "H", "W")

    def setup(self, input_shape):
        out = tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, s, p, d, k, op in
                    zip(input_shape[1:], self.stride, self.padding, self.dilation, self.kernel_size,
                        self.output_padding, strict=True))
        if min(out) < 1:
            raise ShapeError(f"{self!r}: input (N, {_dims(input_shape)}) gives an empty output {out}: "
                             f"padding {self.padding} cuts more than the kernel adds")
        bound = init.fan_in_uniform(self.out_channels // self.groups * math.prod(self.kernel_size))
        weight_shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        self.add_param("weight", weight_shape, bound)
        if self.use_bias:
            self.add_param("bias", (self.out_channels,), bound)
        # The convolution this layer transposes: from our output (its input) to our input (its output).
        self.geometry = ConvGeometry(in_size=out, out_size=tuple(input_shape[1:]), kernel=self.kernel_size,
                                     stride=self.stride, padding=tuple((p, p) for p in self.padding),
                                     dilation=self.dilation, groups=self.groups)
        return (self.out_channels, *out)

    def forward(self, x, training: bool = True):
        n = x.shape[0]
        self._x = x
        y = self.kernel_output("y", (n, *self.output_shape))
        y = self.ops.conv2d_backward(x, None, self.params["weight"], self.geometry, y, None, None,
                                     self.workspace)
        if self.use_bias:
            y += self.params["bias"].reshape(self.out_channels, 1, 1)
        return y

    def backward(self, dy):
        ops, geom = self.ops, self.geometry
        if self.use_bias and self.trainable:  # dbias += dy summed over N, OH, OW (none when frozen)
            db = self.workspace("db", (self.out_channels,))
            ops.xp.sum(dy, axis=(0, 2, 3), out=db)
            self.grads["bias"] += db
        # dx = the transposed convolution's forward: conv2d(dy); it also leaves dy's columns for dweight.
        dx = ops.conv2d(dy, self.params["weight"], None, geom, self.kernel_input_grad(self._x.shape, dy),
                        self.workspace)
        if self.trainable:
            ops.conv2d_backward(self._x, dy, self.params["weight"], geom, None, self.grads["weight"], None,
                                self.workspace)
        return dx

    def extra_repr(self):
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={short(self.kernel_size)}"
        for key in ("stride", "padding", "output_padding", "dilation"):
            value, default = getattr(self, key), 1 if key in ("stride", "dilation") else 0
            text += f", {key}={short(value)}" if set(value) != {default} else ""
        text += f", groups={self.groups}" if self.groups != 1 else ""
        return text + ("" if self.use_bias else ", bias=False")

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding),
                "output_padding": list(self.output_padding), "bias": self.use_bias,
                "dilation": list(self.dilation), "groups": self.groups}
