"""Sequence pooling (N, T, D) -> (N, D): the mean over time, the first token or the last token."""

from __future__ import annotations

from ..core.layer import Layer


class _SequencePooling(Layer):
    """Checks a (N, T, D) input and returns (N, D)."""

    def setup(self, input_shape):
        return (input_shape[1],)

    @property
    def input_spec(self):
        return ("T", self.input_shape[1] if self.built else "D")


class _TokenPooling(_SequencePooling):
    """y = x[:, index]; the gradient goes to that token only."""

    index: int

    def forward(self, x, training: bool = True):
        self._x_shape = tuple(x.shape)
        y = self.workspace("y", (x.shape[0], x.shape[2]))
        self.ops.copy_(y, x[:, self.index])
        return y

    def backward(self, dy):
        dx = self.input_grad_buffer(self._x_shape, dy)
        self.ops.fill_(dx, 0.0)
        self.ops.copy_(dx[:, self.index], dy)
        return dx


class MeanPooling(_SequencePooling):
    """Average over the time axis.

    y = (1/T) sum_t x[:, t]     (PyTorch: x.mean(dim=1))

    Shape:
        x: (N, T, D) -> y: (N, D)
    Saved for backward:
        the input shape only.
    """

    def forward(self, x, training: bool = True):
        self._x_shape = tuple(x.shape)
        weights = self.workspace("weights", (x.shape[1],))  # 1/T each: a GEMM reduces without temporaries
        self.ops.fill_(weights, 1.0 / x.shape[1])
        y = self.workspace("y", (x.shape[0], x.shape[2]))
        return self.ops.matmul(weights, x, out=y)

    def backward(self, dy):
        n, steps, dim = self._x_shape
        scaled = self.workspace("dy_scaled", (n, dim))  # dy / T first: dx is then written in one pass
        self.ops.xp.multiply(dy, 1.0 / steps, out=scaled)
        dx = self.input_grad_buffer(self._x_shape, dy)
        self.ops.copy_(dx, scaled.reshape(n, 1, dim))
        return dx


class CLSPooling(_TokenPooling):
    """The first token, as BERT's [CLS] summary: y = x[:, 0]   (PyTorch: x[:, 0]).

    Shape:
        x: (N, T, D) -> y: (N, D)
    Saved for backward:
        the input shape only.
    """

    index = 0


class LastToken(_TokenPooling):
    """The last token, as a causal model's summary: y = x[:, -1]   (PyTorch: x[:, -1]).

    Shape:
        x: (N, T, D) -> y: (N, D)
    Saved for backward:
        the input shape only.
    """

    index = -1
