"""PyTorch interop: a neuronet model's state as a PyTorch ``state_dict`` (and back via load_state_dict)."""

from __future__ import annotations

from typing import Any

from .._optional import require
from ..core.layer import Layer


def to_torch_state_dict(model: Layer) -> dict[str, Any]:
    """Parameters and buffers as torch tensors under PyTorch's key names.

    The result loads with ``torch_module.load_state_dict(...)`` into the PyTorch counterpart;
    the way back is ``model.load_state_dict(torch_module.state_dict())``. Tensors are copies on the
    CPU, in the model's dtype (buffers keep theirs, e.g. int64 ``num_batches_tracked``).
    """
    torch = require("torch", "torch", "to_torch_state_dict")

    return {name: torch.from_numpy(value) for name, value in model.state_dict().items()}
