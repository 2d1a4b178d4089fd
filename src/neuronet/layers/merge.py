"""Merge layers (several inputs, given as a list) and Residual: the joins of a functional graph.

A layer of several inputs receives a list in ``forward`` and returns a list (one dL/dx per input)
from ``backward``; its ``input_shape`` is the tuple of its inputs' shapes. Keras: ``Add``,
``Multiply``, ``Concatenate``; PyTorch: ``a + b``, ``a * b``, ``torch.cat(dim=axis)``.
"""

from __future__ import annotations

from ..core.layer import Layer
from ..errors import ConfigError, ShapeError
from .wrapper import _Wrapper


def _dims(shape: tuple) -> str:
    return f"(N, {', '.join(map(str, shape))})"


class _Merge(Layer):
    """Checks that the input is a list of at least two tensors and keeps a reusable list for dL/dx."""

    def setup(self, input_shape):
        if not input_shape or isinstance(input_shape[0], int) or len(input_shape) < 2:
            got = f"one of shape {_dims(input_shape)}" if not input_shape or isinstance(input_shape[0], int) \
                else f"a list of {len(input_shape)}: {', '.join(map(_dims, input_shape))}"
            raise ShapeError(f"{self!r}: takes a list of at least two inputs, got {got}")
        self._dx = [None] * len(input_shape)
        return self.merge_shape(input_shape)

    def check_input(self, xs) -> None:
        if not isinstance(xs, (list, tuple)) or len(xs) != len(self.input_shape):
            raise ShapeError(f"{self!r}: expected a list of {len(self.input_shape)} inputs, got "
                             f"{type(xs).__name__}")
        got = tuple(tuple(x.shape[1:]) for x in xs)
        if got != self.input_shape or len({x.shape[0] for x in xs}) != 1:
            raise ShapeError(f"{self!r}: expected inputs {', '.join(map(_dims, self.input_shape))}, got "
                             f"{', '.join(str(tuple(x.shape)) for x in xs)}")

    def _fold(self, op, xs):
        """y = op(...op(op(x0, x1), x2)..., xk) into the "y" workspace (elementwise, equal shapes)."""
        y = self.workspace("y", tuple(xs[0].shape))
        op(xs[0], xs[1], out=y)
        for x in xs[2:]:
            op(y, x, out=y)
        return y

    def _same_shapes(self, shapes: tuple) -> tuple:
        if len(set(shapes)) != 1:
            raise ShapeError(f"{self!r}: all inputs must have the same shape, got "
                             f"{', '.join(map(_dims, shapes))}")
        return shapes[0]


class Add(_Merge):
    """y = x0 + x1 + ... (inputs of equal shape); with ``activation="relu"``, y = max(that, 0), the ReLU
    applied over the sum in place (a residual block's join, ``relu(x + block(x))``, as
    ``BatchNorm2D(activation="relu")`` takes its ReLU: no second buffer of the block's size to write).

    Saved for backward: nothing (dL/dxi = dy); with the ReLU its output y (workspace), dL/dxi = dy * (y > 0).
    """

    merge_shape = _Merge._same_shapes
    ACTIVATIONS = (None, "relu")  # what runs over the sum in place; another activation is a layer of its own

    def __init__(self, activation: str | None = None):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ConfigError(f"Add: activation must be None or 'relu' (applied over the sum), got "
                              f"{activation!r}; put any other activation in a layer of its own")
        self.activation = activation

    def forward(self, xs, training: bool = True):
        y = self._y = self._fold(self.ops.add, xs)
        if self.activation is not None:  # (in place: its derivative reads only y)
            self.ops.activation(self.activation, y, y)
        return y

    def backward(self, dy):
        if self.activation is not None:  # one dL/d(sum) for every input, kept past this call: a workspace
            dz = self.workspace("dz", tuple(dy.shape))
            dy = self.ops.activation_backward(self.activation, dy, None, self._y, dz)
        for i in range(len(self._dx)):
            self._dx[i] = dy
        return self._dx

    def extra_repr(self):
        return f"activation={self.activation!r}" if self.activation else ""

    def get_config(self):
        return {"activation": self.activation} if self.activation else {}


class Multiply(_Merge):
    """y = x0 * x1 * ... (elementwise, equal shapes). Saved for backward: the inputs (by reference)."""

    merge_shape = _Merge._same_shapes

    def forward(self, xs, training: bool = True):
        self._xs = xs
        return self._fold(self.ops.xp.multiply, xs)

    def backward(self, dy):
        """dL/dxi = dy * (product of the other inputs)."""
        if not self.needs_input_grad:
            return None
        xp = self.ops.xp
        for i in range(len(self._dx)):
            dx = self.workspace(f"dx{i}", tuple(dy.shape))
            first = True
            for j, x in enumerate(self._xs):
                if j != i:
                    xp.multiply(dy if first else dx, x, out=dx)
                    first = False
            self._dx[i] = dx
        return self._dx


class Concatenate(_Merge):
    """y = torch.cat(xs, dim=axis); ``axis`` counts the batch axis (1 = the first feature axis).

    Shape: inputs equal except along ``axis``. Saved for backward: nothing (dL/dxi is a slice of dy,
    copied into a contiguous buffer).
    """

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = int(axis)
        if self.axis == 0:
            raise ValueError("Concatenate: axis 0 is the batch axis; use axis=1 for the first feature axis")

    def merge_shape(self, shapes: tuple) -> tuple:
        rank = len(shapes[0]) + 1
        axis = self.axis if self.axis > 0 else self.axis + rank
        if not 0 < axis < rank or any(len(s) != rank - 1 for s in shapes):
            raise ShapeError(f"{self!r}: axis {self.axis} does not fit inputs "
                             f"{', '.join(map(_dims, shapes))}")
        k = axis - 1
        rest = {s[:k] + s[k + 1:] for s in shapes}
        if len(rest) != 1:
            raise ShapeError(f"{self!r}: inputs must agree except along axis {self.axis}, got "
                             f"{', '.join(map(_dims, shapes))}")
        self._slices, start = [], 0
        for s in shapes:  # where each input sits in the output
            self._slices.append((slice(None),) * axis + (slice(start, start + s[k]),))
            start += s[k]
        return shapes[0][:k] + (start,) + shapes[0][k + 1:]

    def forward(self, xs, training: bool = True):
        y = self.workspace("y", (xs[0].shape[0], *self.output_shape))
        for x, where in zip(xs, self._slices, strict=True):
            self.ops.copy_(y[where], x)
        return y

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        for i, where in enumerate(self._slices):
            part = dy[where]
            dx = self.workspace(f"dx{i}", tuple(part.shape))
            self.ops.copy_(dx, part)
            self._dx[i] = dx
        return self._dx

    def extra_repr(self):
        return f"axis={self.axis}"

    def get_config(self):
        return {"axis": self.axis}


class Residual(_Wrapper):
    """y = x + block(x): a skip connection around ``block`` (any layer, e.g. a Sequential).

    Usable in ``Sequential`` and in functional models; ``block`` must keep the shape. Its parameters
    are ``block.<name>`` (a PyTorch module holding ``self.block``).
    Saved for backward: whatever ``block`` saves.
    """

    def setup(self, input_shape):
        out = super().setup(input_shape)
        if tuple(out) != tuple(input_shape):
            raise ShapeError(f"Residual: block {self.block!r} maps {_dims(input_shape)} to {_dims(out)}; "
                             "a residual block must keep the shape")
        return input_shape

    def forward(self, x, training: bool = True):
        self.share_workspaces_under_no_grad()  # (predict: the residual blocks' layers share their buffers)
        h = self.block.forward(x, training=training)
        y = self.workspace("y", tuple(x.shape))
        self.ops.add(x, h, out=y)
        return y

    def backward(self, dy):
        """dL/dx = dy + block.backward(dy); without ``needs_input_grad`` only the block's weights."""
        self.check_activations_kept()
        with self.block.input_grad_needed(self.needs_input_grad):
            dh = self.block.backward(dy)
        if not self.needs_input_grad:
            return None
        dx = self.input_grad_buffer(tuple(dy.shape), dy)
        self.ops.add(dy, dh, out=dx)
        return dx

