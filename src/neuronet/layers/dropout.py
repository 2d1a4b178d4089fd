"""Dropout: inverted dropout while training, identity otherwise (PyTorch: nn.Dropout)."""

from __future__ import annotations

from ..core import args
from ..core import random as nnrandom
from ..core.layer import Layer


class Dropout(Layer):
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p) while training.

    Args:
        p (float): the probability of zeroing an element, in [0, 1). Default: ``0.5``.
        inplace (bool): write the result over x instead of into a buffer of its own (as PyTorch's
            ``inplace=True``): for an x that nothing reads after this layer, e.g. the output of a layer
            whose backward does not read its output (a GELU or linear Dense). Default: ``False``.
    Shape:
        x: (N, *) -> y: (N, *)
    Saved for backward:
        the keep-mask (workspace, one byte per element).
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        self.p = args.real("Dropout", "p", p, 0.0, 1.0, hi_open=True)
        self.inplace = bool(inplace)

    def forward(self, x, training: bool = True):
        self._active = training and self.p > 0.0
        if not self._active:
            return x
        mask = self.workspace("mask", tuple(x.shape), bool)
        self.ops.dropout_mask(1.0 - self.p, nnrandom.generator(), mask, self.dtype)
        self._mask = mask
        out = x if self.inplace else self.workspace("y", tuple(x.shape))
        return self.ops.apply_mask(x, mask, 1.0 / (1.0 - self.p), out)

    def reapply(self, x) -> None:
        """Apply the last forward's mask and scale to x again, in place (a container that recomputes this
        layer's input calls it to recompute the output): nothing when that forward dropped nothing."""
        if self._active:
            self.ops.apply_mask(x, self._mask, 1.0 / (1.0 - self.p), x)

    def backward(self, dy):
        if not self._active:
            return dy
        dx = self.input_grad_buffer(tuple(dy.shape), dy)
        return self.ops.apply_mask(dy, self._mask, 1.0 / (1.0 - self.p), dx)

    def extra_repr(self):
        return f"p={self.p}" + (", inplace=True" if self.inplace else "")

    def get_config(self):
        return {"p": self.p, "inplace": self.inplace}
