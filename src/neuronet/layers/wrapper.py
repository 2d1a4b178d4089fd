"""Layers around one block: the base they share (Keras: ``keras.layers.Wrapper``), and Remat.

``Remat`` trades compute for memory as PyTorch's ``torch.utils.checkpoint`` and Keras's ``keras.remat``
do (activation checkpointing, rematerialisation): its block's activations are recomputed in backward
instead of kept from forward.
"""

from __future__ import annotations

import threading
import weakref

from ..core import random as nnrandom
from ..core.layer import Layer
from ..errors import ConfigError, ShapeError


class _Wrapper(Layer):
    """A layer around one ``block`` (any layer, e.g. a Sequential), built as its child ``child_name``."""

    child_name = "block"

    def __init__(self, block: Layer):
        super().__init__()
        if not isinstance(block, Layer):
            raise TypeError(f"{type(self).__name__}: block is a {type(block).__name__}, not a neuronet Layer")
        self.block = block

    @property
    def layers(self) -> list[Layer]:
        return [self.block]

    def setup(self, input_shape):
        return self.add_child(self.child_name, self.block, input_shape)

    def check_input(self, x) -> None:
        self.block.check_input(x)

    def extra_repr(self):
        return repr(self.block)


_last = threading.local()  # .writer: a weak reference to the Remat whose block last ran forward here


def _ran_last(remat: Remat) -> bool:
    writer = getattr(_last, "writer", None)
    return writer is not None and writer() is remat


class Remat(_Wrapper):
    """y = block(x), keeping only x for backward: ``block``'s activations are computed again there.

    A stack of N remat'd blocks of one layout (a transformer's blocks) holds one block's activations
    instead of N: inside a Remat every workspace of ``block`` and its sub-layers is this thread's
    ``ops.temporary`` of the sub-layer's place in the block, shared by every Remat whose block has that
    place, and live only within one call. Backward runs ``block.forward`` again from x with the random
    stream rewound to where the first forward drew (the same dropout masks) and the block's buffers
    (BatchNorm's running statistics) put back afterwards (they move once per step), then
    ``block.backward``: one more forward of the block per step, except for the block that ran forward
    last on this thread (the top one of a stack), whose activations are still in the buffers. PyTorch:
    ``torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)``; Keras: ``keras.remat(block)``.

    Args:
        block (Layer): one input, one output; no Remat inside it.
    Shape:
        block's.
    Parameters:
        block's, under the same names (the wrapper adds no prefix: a model trained with Remat loads into
        the same model without it).
    Saved for backward:
        x (by reference), the output (workspace, a copy), the random stream's state where block drew.
    """

    child_name = ""  # transparent: the block's parameters keep their names

    def setup(self, input_shape):
        if input_shape and not isinstance(input_shape[0], int):
            raise ShapeError(f"Remat: block {self.block!r} takes several inputs; Remat wraps a block of one "
                             "input and one output")
        out = super().setup(input_shape)
        if out and not isinstance(out[0], int):
            raise ShapeError(f"Remat: block {self.block!r} returns several outputs; Remat wraps a block of "
                             "one input and one output")
        for path, layer in self.block.named_layers():
            if isinstance(layer, Remat):
                raise ConfigError(f"Remat: {layer!r} is inside the block of another Remat; remat the outer "
                                  "block or the inner one, not both")
            layer.share_workspaces(f"remat:{path}:")
        return out

    def forward(self, x, training: bool = True):
        rng = nnrandom.generator()
        before = rng.bit_generator.state if training else None
        y = self.block.forward(x, training=training)
        _last.writer = weakref.ref(self)  # weak: the thread must not keep a deleted model alive
        self._x, self._training = x, training
        self._rng_state = before if training and rng.bit_generator.state != before else None
        out = self.workspace("y", tuple(y.shape))
        self.ops.copy_(out, y)  # block's own output lives in a buffer the next Remat overwrites
        return out

    def backward(self, dy):
        """Recompute block's forward from the saved x (unless it ran forward last on this thread: its
        activations are still there), then dL/dx = block.backward(dy)."""
        if not _ran_last(self):
            self._recompute()
        with self.block.input_grad_needed(self.needs_input_grad):
            dh = self.block.backward(dy)
        if not self.needs_input_grad:
            return None
        dx = self.input_grad_buffer(tuple(dh.shape), dy)
        self.ops.copy_(dx, dh)  # (as y: dh lives in this thread's shared buffers)
        return dx

    def _recompute(self) -> None:
        """block.forward(x) again as the first forward ran it: the same random draws, and the buffers
        (running statistics) as they were after that forward."""
        ops = self.ops
        buffers = [buf for _, buf in self.block.named_buffers()]
        kept = [self.workspace(f"buffer{i}", tuple(buf.shape), ops.dtype_name(buf)) for i, buf in
                enumerate(buffers)]
        for copy, buf in zip(kept, buffers, strict=True):
            ops.copy_(copy, buf)
        rng = nnrandom.generator()
        if self._rng_state is not None:
            now = rng.bit_generator.state
            rng.bit_generator.state = self._rng_state
        self.block.forward(self._x, training=self._training)
        _last.writer = weakref.ref(self)
        if self._rng_state is not None:
            rng.bit_generator.state = now
        for copy, buf in zip(kept, buffers, strict=True):
            ops.copy_(buf, copy)
