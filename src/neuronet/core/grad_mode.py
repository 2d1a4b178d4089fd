"""Whether a backward may follow the forward passes this thread runs (PyTorch's grad mode).

Under ``no_grad()`` a layer may skip what it keeps only for its backward (a max pooling's argmax
indices), so inference writes and holds less; ``predict`` and ``evaluate`` run under it. A backward
after such a forward raises where the layer kept nothing to run it with.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = threading.local()  # per thread: predict's replicas run beside a training thread


def is_grad_enabled() -> bool:
    """Whether forward passes on this thread keep what their backward needs (``torch.is_grad_enabled``)."""
    return getattr(_state, "enabled", True)


@contextmanager
def no_grad() -> Iterator[None]:
    """Forward passes inside run for inference only (``torch.no_grad``); also a decorator.

    ``with nn.no_grad(): y = model(x)``. Layers skip what only their backward reads; calling backward
    after such a forward raises a ``RuntimeError`` naming the layer. Nests; restores the previous mode.
    """
    previous = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous


def backward_after_no_grad(layer, what: str) -> RuntimeError:
    """The error a layer's backward raises when its last forward ran under ``no_grad`` and so kept no
    ``what``."""
    return RuntimeError(f"{layer!r}: backward after a forward under nn.no_grad(), which keeps no {what}; "
                        "run the forward outside no_grad")
