"""The torch backend's device path on PyTorch's "meta" device, whose tensors have shapes and no data."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Inside the block the device "torch" names is PyTorch's meta device: a model moved ``to("torch")``
    runs what it runs on a GPU (dropout's uniforms drawn on the device), on tensors without data, so a
    read back to the host, a tensor left on the CPU or a branch on a value raises. Kernels dispatched
    there can be counted (``benchmarks/count_kernels.py``); nothing is computed."""
    from .. import backend

    saved = backend._TORCH_DEVICE, backend._canonical, backend.available_devices
    canonical = backend._canonical
    backend._TORCH_DEVICE = "meta"
    backend._canonical = lambda name: "torch:meta" if name == "meta" else canonical(name)
    backend.available_devices = lambda: ["cpu", "meta"]
    ops = backend.get_ops("torch")
    host_masks, ops.host_masks = ops.host_masks, False  # (gpu_check's tests set them on)
    try:
        yield
    finally:
        ops.host_masks = host_masks
        backend._TORCH_DEVICE, backend._canonical, backend.available_devices = saved
