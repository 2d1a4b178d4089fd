"""Lightweight replicas: a copy of a built layer tree that shares the parameters and owns its scratch.

A replica computes with the SAME weights as its original (its parameter views point into the original's
flat parameter array, so an optimizer step on the original is seen at once) but keeps its own
workspaces and saved activations, so the original and its replicas can run forward/backward in
different threads at the same time. Two kinds:

- ``replica(model)`` (inference): gradients and buffers are the original's; for predict/evaluate.
- ``replica(model, grads=...)`` (a training worker): gradients go to ``grads``, a private flat array
  (or a row of one stacked (K, P) array, so K workers are reduced by one matrix product), and the
  buffers (BatchNorm running statistics) are private copies: each worker normalises with its own
  batch statistics, as each process does under PyTorch DDP.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .layer import Layer, Workspace

_SCRATCH = ("_workspace", "_workspace_views", "_workspace_dtypes", "_fused")  # _fused: recurrent.py
# A model's training state that a replica neither needs nor may share (the optimizer's moments,
# the history, the thread pools and locks of the model/parallel module, what a fused attention or loss
# kernel saved for its backward).
_LEFT_OUT = ("optimizer", "history", "_last_output", "_aux_cache", "_parallel", "grad_ready", "_sdpa_saved",
             "_nll_inputs")


def replica(root: Layer, grads: Any = None) -> Layer:
    """A copy of ``root`` (built) sharing its parameters; private gradients when ``grads`` is given.

    ``grads`` is a flat array of ``root.num_params()`` elements on the root's backend. Everything that
    is not an array (layer settings, sub-layer structure, the loss) is deep-copied; the parameter
    arrays are shared, the workspaces start empty.
    """
    root._require_built("replica")
    memo: dict[int, Any] = {id(root.flat_params): root.flat_params, id(root.flat_grads): root.flat_grads}
    objects = [layer for _, layer in root.named_layers()]
    loss = getattr(root, "loss", None)
    if isinstance(loss, Workspace):
        objects.append(loss)
    is_array = root.ops.is_array
    # Each object's attributes as a snapshot (one dict copy, atomic under the GIL): another thread may be
    # running the original and adding attributes (its first forward's saved activations) meanwhile.
    states = [dict(vars(obj)) for obj in objects]
    for obj, state in zip(objects, states, strict=True):
        for key, value in state.items():
            if value is None:  # (None in the memo would stand for {} everywhere)
                continue
            if key in _SCRATCH:
                memo[id(value)] = state[key] = {}
            elif key in _LEFT_OUT:
                memo[id(value)] = state[key] = None
            elif key == "ops" or is_array(value):  # saved activations: rebound by the first forward
                memo[id(value)] = value
        for table in (state.get("params", {}), state.get("grads", {}), state.get("buffers", {})):
            for value in table.values():
                memo[id(value)] = value
        memo[id(obj)] = object.__new__(type(obj))  # its copy, filled below: references resolve to it
    for obj, state in zip(objects, states, strict=True):
        vars(memo[id(obj)]).update(copy.deepcopy(state, memo))
    clone = memo[id(root)]
    for _, layer in clone.named_layers():
        for key in ("_parallel", "grad_ready"):  # None above; the replica makes its own when asked
            layer.__dict__.pop(key, None)
    if grads is not None:
        if tuple(grads.shape) != tuple(root.flat_grads.shape):
            raise ValueError(f"replica: grads has shape {tuple(grads.shape)}, the model's gradients "
                             f"{tuple(root.flat_grads.shape)}")
        clone.flat_grads = grads
        ops = root.ops
        for _, layer in clone.named_layers():
            layer.buffers = {k: ops.asarray(np.array(ops.to_numpy(v))) for k, v in layer.buffers.items()}
    clone._bind(root.ops)  # parameter views of the shared array, gradient views of ours, empty workspaces
    return clone


def copy_buffers(src: Layer, dst: Layer) -> None:
    """Copy every buffer of ``src`` into the same-named buffer of ``dst`` (same architecture)."""
    ops = src.ops
    for (_, a), (_, b) in zip(src.named_layers(), dst.named_layers(), strict=True):
        for key, value in a.buffers.items():
            if b.buffers[key] is not value:
                ops.copy_(b.buffers[key], value)
