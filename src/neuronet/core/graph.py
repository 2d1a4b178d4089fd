"""Symbolic tensors: calling a layer on them records a graph node instead of computing.

``nn.Input(shape)`` makes a :class:`SymbolicTensor` with no producer; ``layer(t)`` (or ``layer([a, b])``
for a layer of several inputs) builds the layer for ``t``'s shape, so bad shapes fail right there, and
returns the node's output tensor. ``nn.Model(inputs, outputs)`` later walks these nodes back from its
outputs. Nothing here holds arrays: a graph is only shapes and who-feeds-whom.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ..errors import ShapeError

_calls = itertools.count()  # a global call order: sorting nodes by it is a topological order


@dataclass(eq=False)
class SymbolicTensor:
    """A batch ``(N, *shape)`` that will flow here; ``node`` produced it (None for a model input)."""

    shape: tuple
    node: Node | None = None
    name: str | None = None

    def describe(self) -> str:
        where = self.name or (f"output of {self.node.layer!r}" if self.node else "input")
        return f"{where} (N, {', '.join(map(str, self.shape))})"

    def __repr__(self) -> str:
        return f"<SymbolicTensor {self.describe()}>"


@dataclass(eq=False)
class Node:
    """One call ``layer(inputs)``: ``listed`` says the layer was given a list (merge layers)."""

    layer: Any
    inputs: list[SymbolicTensor]
    listed: bool
    order: int = field(default_factory=lambda: next(_calls))
    output: SymbolicTensor | None = None


def is_symbolic(x: Any) -> bool:
    if isinstance(x, SymbolicTensor):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, SymbolicTensor) for t in x)


def call_layer(layer, x) -> SymbolicTensor:
    """Record ``layer(x)`` for symbolic ``x``: build (or check) the layer for its shape, return the output."""
    listed = not isinstance(x, SymbolicTensor)
    inputs = list(x) if listed else [x]
    shape = tuple(t.shape for t in inputs) if listed else x.shape
    if getattr(layer, "_graph_called", False):  # a shared layer: one set of weights, one input shape
        if layer.input_shape != shape:
            raise ShapeError(f"{layer!r} was built for input {_describe(layer.input_shape)} and is called "
                             f"again on {_describe(shape)}; a shared layer takes one input shape")
    else:
        layer.build(shape, _root=False)
        layer._graph_called = True
    node = Node(layer, inputs, listed)
    out_shape = layer.output_shape
    if out_shape and not isinstance(out_shape[0], int):
        raise ShapeError(f"{layer!r} has several outputs ({_describe(out_shape)}); a functional graph takes "
                         "layers of one output")
    node.output = SymbolicTensor(tuple(out_shape), node)
    return node.output


def _describe(shape: tuple) -> str:
    if shape and not isinstance(shape[0], int):
        return "[" + ", ".join(_describe(s) for s in shape) + "]"
    return f"(N, {', '.join(map(str, shape))})"
