"""Backends: which array library and device a model computes on.

``get_ops(name)`` returns the ops object for "numpy" (the default), "torch" (PyTorch on its CPU),
"cpu" (NumPy), "cuda", "cuda:1" or "mps" (PyTorch on that device), or "reference" (the plain-NumPy
specification ``Ops``: slow, for checking; see docs/backends.md). ``set_backend`` changes the
default for models built afterwards; the ``NEURONET_BACKEND`` environment variable sets it at start.
"""

from __future__ import annotations

import functools
import os

from .numpy_ops import NumpyOps
from .ops import ACTIVATIONS, NEW, OUTPUT_DERIVATIVE, Ops, Spans, check_activation

__all__ = ["ACTIVATIONS", "NEW", "OUTPUT_DERIVATIVE", "Ops", "NumpyOps", "Spans", "available",
           "check_activation", "get_ops", "ops_for_array", "set_backend", "default_ops"]

_default = os.environ.get("NEURONET_BACKEND", "numpy")
# The device "torch" names (default "cpu"): benchmarks/gpu_check.py runs the torch-backend tests with "cuda".
_TORCH_DEVICE = os.environ.get("NEURONET_TORCH_DEVICE", "cpu")


def _canonical(name: str) -> str:
    name = str(name).lower()
    if name in ("numpy", "np", "cpu"):
        return "numpy"
    if name == "reference":
        return name
    if name == "torch":
        return f"torch:{_TORCH_DEVICE}"
    if name in ("torch-cpu", "torch:cpu"):
        return "torch:cpu"
    if name.startswith("cuda") or name == "mps":
        return "torch:" + name
    raise ValueError(f"unknown backend or device {name!r}; expected one of {', '.join(available())}")


@functools.cache
def _ops_for(canonical: str) -> Ops:
    if canonical == "numpy":
        return NumpyOps()
    if canonical == "reference":
        return Ops()
    try:
        from .torch_ops import TorchOps
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise RuntimeError("the torch backend needs PyTorch: pip install 'neuronet[torch]'") from e
    device = canonical.split(":", 1)[1]
    if device not in available_devices():
        raise RuntimeError(f"device {device!r} is not available here; available: {', '.join(available())}")
    return TorchOps(device)


def get_ops(name: str | None = None) -> Ops:
    """The ops object for a backend or device name (the default backend when None)."""
    return _ops_for(_canonical(_default if name is None else name))


def default_ops() -> Ops:
    return get_ops(None)


def set_backend(name: str) -> None:
    """Make ``name`` the backend of models built from now on."""
    global _default
    get_ops(name)  # validate now, not at first use
    _default = name


def available_devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def available() -> list[str]:
    """Backend names this machine can run: "numpy" always, "torch" and its devices when installed."""
    names = ["numpy"]
    devices = available_devices()
    if devices:
        names.append("torch")
        names += [d for d in devices if d != "cpu"]
    return names


def ops_for_array(x) -> Ops:
    """The ops object an array lives on: NumPy for ndarrays, torch on the tensor's device otherwise."""
    if type(x).__module__.startswith("torch"):
        device = str(x.device)
        return get_ops("torch:cpu" if device == "cpu" else device)
    return get_ops("numpy")
