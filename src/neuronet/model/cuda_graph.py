"""``compile(cuda_graph=True)``: forward + loss + backward of ``train_step`` replayed as one CUDA graph.

A neuronet training step allocates nothing in its steady state and, with a sync-free loss, never reads
a value back to the host, so its kernel launches can be recorded once and replayed: one launch per
step instead of hundreds, which is where small models lose time on a GPU. Per input shape:

1. three forward + backward passes (no optimizer step) on a side stream (PyTorch's recipe: lazy
   workspaces, cuBLAS handles and the caching allocator settle before capture);
2. ``torch.cuda.graph`` records ``forward -> loss -> zero_grad -> backward`` reading the static input
   buffers and writing the loss into a static 0-d tensor; the graph then holds every buffer it captured
   and table (``buffers_in_use``), whatever the model does with its own references afterwards;
3. each call copies the batch into the static buffers, replays the graph, reads the loss once (the
   step's one synchronisation: a non-finite loss is refused before the weights change) and runs the
   optimizer eagerly over the flat parameter array (a handful of kernels; kept out of the graph so that
   Python-side state such as Adam's step count and a scheduler's learning rate stay live).

Not capturable, refused with a ConfigError: models whose forward draws random numbers on the host
(dropout > 0: each mask's seed is drawn from the NumPy generator on the host, which a replay would
not redo) and
models whose shapes depend on the data (MoE routing). Only verified where a GPU was available: see
docs/performance-guide.md.
"""

from __future__ import annotations

import threading

from ..errors import ConfigError
from ..layers.attention import MultiHeadAttention
from ..layers.dropout import Dropout
from .training import _finite_loss


def _refuse_uncapturable(model) -> None:
    if model.__dict__.get("loss_scale") is not None:
        raise ConfigError("compile(cuda_graph=True) with mixed_precision='float16': the loss scale changes "
                          "between steps and would be frozen into the graph; use mixed_precision='bfloat16'")
    if model.ops.name != "torch" or not str(model.ops.device).startswith("cuda"):
        raise ConfigError(f"compile(cuda_graph=True) needs the torch backend on a CUDA device; this model "
                          f"runs on {model.ops.name} ({model.ops.device}): call model.to('cuda') first, or "
                          "compile without cuda_graph")
    for name, layer in model.named_layers():
        rate = layer.p if isinstance(layer, Dropout) else \
            layer.dropout if isinstance(layer, MultiHeadAttention) else 0.0
        if rate > 0.0:
            label = name.rstrip(".") or type(layer).__name__
            raise ConfigError(f"compile(cuda_graph=True): layer {label} has dropout {rate}; its masks' "
                              "seeds are drawn on the host each step and cannot be captured")
        if hasattr(layer, "aux_loss_weight"):
            raise ConfigError(f"compile(cuda_graph=True): layer {name} ({type(layer).__name__}) routes "
                              "tokens with data-dependent shapes and cannot be captured")


def buffers_in_use(model) -> list:
    """Every tensor the model, its loss and its ops object hold now (workspaces, this thread's
    temporaries, cached tables: rotary angles, the causal mask, the losses' row index, zeros): what a
    step captured before or during the warm-up may read or write. The graph holds them for its life: a
    later predict (whose blocks then use shared buffers), a larger batch (grown workspaces and tables) or
    ``clear_workspace`` drops the model's references, and memory the caching allocator handed to another
    tensor would then be read or written by every replay. (What the capture itself allocated lives in the
    graph's private pool.)"""
    found: list = []
    for owner in [layer for _, layer in model.named_layers()] + [model.loss, model.ops]:
        _tensors_in(vars(owner), found)
    return found


def _tensors_in(value, found: list, depth: int = 0) -> None:
    """Append the torch tensors in ``value``, looking into dicts, lists, tuples and this thread's view of
    a threading.local (a few levels: the caches' shapes), not into other objects."""
    import torch

    if isinstance(value, torch.Tensor):
        found.append(value)
    elif depth < 4 and isinstance(value, (dict, list, tuple, threading.local)):
        items = value.values() if isinstance(value, dict) else \
            vars(value).values() if isinstance(value, threading.local) else value
        for item in items:
            _tensors_in(item, found, depth + 1)


class _Graph:
    """The captured step of one (input shape, dtype) pair and its static buffers."""

    def __init__(self, model, x, y):
        import torch

        ops = model.ops
        self.x, self.y = ops.asarray(x).clone(), ops.asarray(y).clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # forward + backward only: the weights do not move
                model._forward_loss(self.x, self.y)
                model._backward_loss()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = model._forward_loss(self.x, self.y)
            model._backward_loss()
        self.buffers = buffers_in_use(model)

    def step(self, model, x, y) -> float:
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        value = _finite_loss(self.loss)
        model._optimizer_step()
        return value


def graphed_train_step(model, x, y) -> float:
    """``train_step`` with forward + backward replayed from a CUDA graph captured for x's shape."""
    ops = model.ops
    key = (tuple(x.shape), str(getattr(x, "dtype", "")), tuple(y.shape), id(model.flat_params), ops)
    graphs = model.__dict__.setdefault("_cuda_graphs", {})
    if key not in graphs:
        _refuse_uncapturable(model)
        if model.loss.sync_free is False:
            raise ConfigError("compile(cuda_graph=True): the loss has sync_free=False")
        graphs[key] = _Graph(model, ops.asarray(x), ops.asarray(y))
    return graphs[key].step(model, ops.asarray(x), ops.asarray(y))
