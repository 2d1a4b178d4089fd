"""Flatten and Reshape: views, no copies (PyTorch: nn.Flatten, Tensor.view)."""

from __future__ import annotations

import math

from ..core.layer import Layer, ShapeError


class Flatten(Layer):
    """(N, *) -> (N, prod(*))."""

    def setup(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training: bool = True):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class Reshape(Layer):
    """(N, *in) -> (N, *shape); one entry of ``shape`` may be -1."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def setup(self, input_shape):
        n = math.prod(input_shape)
        known = math.prod(s for s in self.shape if s != -1)
        out = tuple(n // known if s == -1 else s for s in self.shape)
        if math.prod(out) != n or self.shape.count(-1) > 1:
            raise ShapeError(f"{self!r}: cannot reshape (N, {', '.join(map(str, input_shape))}) to (N, "
                             f"{', '.join(map(str, self.shape))})")
        return out

    def forward(self, x, training: bool = True):
        self._shape = x.shape
        return x.reshape(x.shape[0], *self.output_shape)

    def backward(self, dy):
        return dy.reshape(self._shape)

    def extra_repr(self):
        return repr(self.shape)

    def get_config(self):
        return {"shape": list(self.shape)}
