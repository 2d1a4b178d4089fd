"""Dropout: inverted dropout while training, identity otherwise (PyTorch: nn.Dropout)."""

from __future__ import annotations

from ..core import args
from ..core import random as nnrandom
from ..core.layer import Layer


class Dropout(Layer):
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p) while training.

    Shape:
        x: (N, *) -> y: (N, *)
    Saved for backward:
        the scaled keep-mask (workspace).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = args.real("Dropout", "p", p, 0.0, 1.0, hi_open=True)

    def forward(self, x, training: bool = True):
        self._active = training and self.p > 0.0
        if not self._active:
            return x
        mask = self.workspace("mask", tuple(x.shape))
        self.ops.bernoulli_mask(1.0 - self.p, nnrandom.generator(), mask)
        self._mask = mask
        y = self.workspace("y", tuple(x.shape))
        self.ops.xp.multiply(x, mask, out=y)
        return y

    def backward(self, dy):
        if not self._active:
            return dy
        dx = self.workspace("dx", tuple(dy.shape))
        self.ops.xp.multiply(dy, self._mask, out=dx)
        return dx

    def extra_repr(self):
        return f"p={self.p}"

    def get_config(self):
        return {"p": self.p}
