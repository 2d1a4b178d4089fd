"""Sequential: a stack of layers that owns one flat parameter array and one flat gradient array."""

from __future__ import annotations

from typing import Any

from ..core import layer as layer_module
from ..core.layer import Layer, float_dtype, grad_slots
from ..errors import ShapeError
from .training import Trainer


class Sequential(Trainer, Layer):
    """Layers applied in order; sub-layer ``i`` is named ``"i"`` (PyTorch's ``nn.Sequential`` keys).

    Args:
        *layers: the layers.
        dtype (str, optional): "float32" (default) or "float64" for everything in the model.
    """

    def __init__(self, *layers: Layer, dtype: str = "float32"):
        Layer.__init__(self)
        Trainer.__init__(self)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is a {type(layer).__name__}, not a neuronet Layer")
        self.layers = list(layers)
        self.dtype = float_dtype(dtype, "Sequential")

    def add(self, layer: Layer) -> None:
        if self.built:
            raise RuntimeError("Sequential.add: the model is already built; add layers before build/fit")
        self.layers.append(layer)

    def setup(self, input_shape):
        shape = input_shape
        for i, layer in enumerate(self.layers):
            shape = self.add_child(str(i), layer, shape)
        self.__dict__.pop("_first_trainable_at", None)
        return shape

    @property
    def _first_trainable(self) -> int:
        """Index of the first layer with trainable weights: in train_step nothing below it runs backward
        (frozen bottom layers cost a forward only). Re-read when any ``trainable`` changes."""
        cached = self.__dict__.get("_first_trainable_at")
        if cached is None or cached[0] != layer_module.TRAINABLE_VERSION:
            first = next((i for i, layer in enumerate(self.layers) if layer.num_trainable_params()),
                         len(self.layers))
            cached = self._first_trainable_at = (layer_module.TRAINABLE_VERSION, first)
        return cached[1]

    def share_input_grads(self, depth: int) -> None:
        # Each layer's dL/dx is read by the layer below it and by nothing else, so all but the bottom
        # layer's (which leaves the model) come from the two shared temporaries of this depth.
        for k, layer in enumerate(self.layers):
            layer._grad_slots = grad_slots(depth) if k else None
            layer.share_input_grads(depth + 1)

    def build(self, input_shape, dtype: Any = None, ops=None, *, _root: bool = True) -> tuple:
        out = super().build(input_shape, dtype, ops, _root=_root)
        if self.optimizer is not None:
            self.optimizer.reset()
        return out

    # ----------------------------------------------------------------- computation
    def _prepare_input(self, x):
        """Bring a batch onto this model's backend and dtype, building the model on first sight."""
        ops = self.ops
        if self.built and ops.ready(x, self.dtype) and x.ndim:
            return x  # the common case, without the generic checks below
        x = ops.asarray(x)
        if x.ndim < 1:
            raise ShapeError("Sequential: expected a batch (N, ...), got a scalar")
        if ops.is_floating(x) and ops.dtype_name(x) != str(self.dtype):
            x = ops.asarray(x, self.dtype)
        if not self.built:
            self.build(tuple(x.shape[1:]))
        return x

    def forward(self, x, training: bool = True):
        """Run every layer; ``x`` is (N, *input_shape). Saved activations stay in the layers' workspaces."""
        x = self._prepare_input(x)
        for layer in self.layers:
            layer.check_input(x)
            x = layer.forward(x, training=training)
        return x

    def backward(self, dy, input_grad: bool = True):
        """Back-propagate dL/dy through every layer, accumulating into ``grads``; returns dL/dx.

        With ``input_grad=False`` (train_step) nothing below the first layer with parameters runs,
        that layer may skip its dL/dx, and None is returned.
        """
        layers = self.layers
        input_grad = input_grad and self.needs_input_grad  # False also when nested first in a model
        first = 0 if input_grad else self._first_trainable
        if first == len(layers):
            return dy if input_grad else None
        ready = self.grad_ready
        for layer in layers[:first:-1]:
            dy = layer.backward(dy)
            if ready is not None:
                ready(layer)
        bottom = layers[first]
        with bottom.input_grad_needed(input_grad):
            dy = bottom.backward(dy)
        if ready is not None:
            ready(bottom)
        return dy

    def check_input(self, x) -> None:
        if self.layers:
            self.layers[0].check_input(x)

    # ----------------------------------------------------------------- parameters and state
    def save(self, path) -> None:
        """Write architecture, weights, optimizer state and training position to a ``.nnet`` file.

        The write is atomic (a crash never leaves a half-written file); ``nn.load(path)`` rebuilds it.
        """
        from ..io.nnet import save

        save(self, path)

    # ----------------------------------------------------------------- description
    def summary(self, print_fn=print) -> str:
        """A table of layers, output shapes and parameter counts, with the memory they take."""
        self._require_built("summary")
        rows = [("Layer", "Output shape", "Params")]
        for i, layer in enumerate(self.layers):
            rows.append((f"{i}: {_one_line(repr(layer))}", str((None, *layer.output_shape)),
                         f"{layer.num_params():,}"))
        return self._summary_table(rows, print_fn=print_fn)

    def extra_repr(self):
        return ", ".join(repr(layer) for layer in self.layers)

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"

    def get_config(self):
        return {"dtype": str(self.dtype)}

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]


SUMMARY_WIDTH = 72  # the layer column's widest cell


def _one_line(text: str) -> str:
    """A layer's repr on one line (a nested Sequential's spans several), cut at SUMMARY_WIDTH."""
    flat = " ".join(text.split()).replace("( ", "(").replace(" )", ")")
    return flat if len(flat) <= SUMMARY_WIDTH else flat[:SUMMARY_WIDTH - 3] + "..."
