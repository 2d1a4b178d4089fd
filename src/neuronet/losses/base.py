"""The Loss protocol: bind the backend, check predictions and targets, keep forward before backward."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import ops_for_array
from ..core.layer import ShapeError, Workspace

# Every Loss subclass by class name, for configs and files.
LOSSES: dict[str, type[Loss]] = {}


class Loss(Workspace):
    """Base class: binds the backend, checks inputs and targets, and keeps the forward/backward order.

    Subclasses name their inputs (``inputs``; more than one means ``pred`` is a tuple) and implement
    ``_forward(*preds, target) -> float``, keeping what ``_backward()`` needs, and ``_backward()``,
    which returns dL/dpred (a tuple for several inputs) in workspace buffers. On torch tensors in host
    memory both run on the NumPy backend, on views of the tensors (``Ops.host_twin``).
    """

    _device_ops = None  # the backend of the predictions when the loss computes on a host twin

    inputs: tuple[str, ...] = ("input",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            LOSSES[cls.__name__] = cls

    def __call__(self, pred, target=None) -> float:
        return self.forward(pred, target)

    sync_free: bool | None = None
    """Whether forward returns the loss as a 0-d array on its device without reading it back (no
    host-device synchronisation: no ``.item()``, class labels not range-checked on the host). ``None``
    (default): on accelerators (CUDA, MPS) but not on the CPU, where reading a value costs nothing."""

    def forward(self, pred, target=None) -> float:
        """The loss of ``pred`` against ``target`` as a Python float (a 0-d device array when sync-free,
        see ``sync_free``); saves what backward needs."""
        preds = self._bind(pred)
        if self._device_ops is not None and self._device_ops.is_array(target):
            target = self.ops.asarray(target)  # its host view, once
        self._deferred = self.ops.device != "cpu" if self.sync_free is None else bool(self.sync_free)
        self._pending = False
        value = self._forward(*preds, target)
        self._pending = True
        return value

    def backward(self) -> Any:
        """dL/dpred of the last forward (a tuple of gradients for a tuple ``pred``)."""
        if not self.__dict__.get("_pending"):
            raise RuntimeError(f"{type(self).__name__}: backward() needs a forward(pred, target) first")
        grad, device = self._backward(), self._device_ops
        if device is None:
            return grad
        return tuple(device.from_host(g) for g in grad) if isinstance(grad, tuple) else device.from_host(grad)

    def per_sample(self, n: int) -> np.ndarray | None:
        """After ``forward`` on a batch of ``n`` samples: each sample's own loss (the loss of that sample
        alone) as a float64 host array (n,), from what forward kept, for ``sample_weight``
        (``model/weighting.py``); None where this loss does not split (the caller then runs it per sample)."""
        return None

    def _sample_sums(self, values, n: int) -> np.ndarray:
        """(n,) float64 host sums of ``values`` (n samples first) over each sample's elements."""
        return self.ops.to_numpy(values).reshape(n, -1).sum(axis=1, dtype=np.float64)

    def _forward(self, *args) -> float:
        raise NotImplementedError

    def _backward(self) -> Any:
        raise NotImplementedError

    # ----------------------------------------------------------------- input and target checks
    def _bind(self, pred) -> tuple:
        """The predictions as arrays on their backend, all in the first one's float dtype and shape."""
        name, n = type(self).__name__, len(self.inputs)
        if n > 1:
            if not isinstance(pred, (tuple, list)) or len(pred) != n:
                got = f"{len(pred)} arrays" if isinstance(pred, (tuple, list)) else type(pred).__name__
                raise TypeError(f"{name}: pred must be a tuple ({', '.join(self.inputs)}), got {got}")
            preds = tuple(pred)
        else:
            preds = (pred,)
        ops = ops_for_array(preds[0])
        # CPU tensors: computed by the NumPy backend on views of their memory (``Ops.host_twin``), the
        # gradient handed back as a tensor on that memory.
        twin = None if self.sync_free else ops.host_twin(preds)
        self._device_ops = None if twin is None else ops
        if twin is not None:
            ops, preds = twin
        self.ops = ops
        first = ops.asarray(preds[0])
        if not ops.is_floating(first):
            raise TypeError(f"{name}: {self.inputs[0]} must be a floating-point array, "
                            f"got {ops.dtype_name(first)}")
        self.dtype = np.dtype(ops.dtype_name(first))
        out = [first]
        for label, x in zip(self.inputs[1:], preds[1:], strict=True):
            x = ops.asarray(x, self.dtype)
            if tuple(x.shape) != tuple(first.shape):
                raise ShapeError(f"{name}: {label} shape {tuple(x.shape)} does not match {self.inputs[0]} "
                                 f"shape {tuple(first.shape)}")
            out.append(x)
        return tuple(out)

    def _float_target(self, pred, target):
        """``target`` on pred's backend, as pred's float dtype, with pred's shape."""
        name, ops = type(self).__name__, self.ops
        if target is None:
            raise TypeError(f"{name}: a target of shape {tuple(pred.shape)} is required")
        t = ops.asarray(target)
        kind = np.dtype(ops.dtype_name(t)).kind
        if kind not in "biuf":
            raise TypeError(f"{name}: target must be numeric, got dtype {ops.dtype_name(t)}")
        if tuple(t.shape) != tuple(pred.shape):
            raise ShapeError(f"{name}: target shape {tuple(t.shape)} does not match prediction shape "
                             f"{tuple(pred.shape)}")
        return ops.asarray(t, self.dtype)

    def _class_target(self, pred, target):
        """Integer class ``target`` of shape pred.shape[:-1], checked to lie in [0, C), flattened to (M,)."""
        t = self._class_index(pred, target)
        self._check_labels(t, pred.shape[-1])
        return t

    def _class_index(self, pred, target):
        """Integer class ``target`` of shape pred.shape[:-1] as a flat int64 index (M,), range unchecked."""
        name, ops = type(self).__name__, self.ops
        if target is None:
            raise TypeError(f"{name}: integer class targets of shape {tuple(pred.shape[:-1])} are required")
        t = ops.asarray(target)
        if tuple(t.shape) != tuple(pred.shape[:-1]):
            raise ShapeError(f"{name}: class targets must have shape {tuple(pred.shape[:-1])} (input "
                             f"{tuple(pred.shape)}), got {tuple(t.shape)}")
        if ops.is_floating(t) or np.dtype(ops.dtype_name(t)).kind not in "iu":
            raise TypeError(f"{name}: class targets must be integers, got {ops.dtype_name(t)}")
        return ops.asarray(t, "int64").reshape(-1)  # as an index (torch reads uint8 as a mask)

    def _check_labels(self, labels, c: int, note: str = "") -> None:
        """Raise, naming a label and the range, when the flat integer ``labels`` leave [0, c)."""
        ops, xp = self.ops, self.ops.xp
        if labels.shape[0] and not self._deferred:  # (sync-free: an out-of-range label fails on the device)
            self._check_range(ops.item(xp.amin(labels)), ops.item(xp.amax(labels)), c, note)

    def _check_range(self, lo: float, hi: float, c: int, note: str = "") -> None:
        """Raise, naming a label and the range, when the labels' min ``lo`` or max ``hi`` leave [0, c)."""
        if lo < 0 or hi >= c:
            bad = int(lo if lo < 0 else hi)
            raise ValueError(f"{type(self).__name__}: class label {bad} out of range [0, {c}) for {c} "
                             f"classes{note}")

    def _rows(self, m: int):
        """0..m-1 on this backend (cached), the row index that pairs with class targets."""
        rows = self.__dict__.get("_arange")
        if rows is None or rows.shape[0] < m or not self.ops.is_array(rows):
            rows = self._arange = self.ops.arange(max(m, 1))
        return rows[:m]

    def _sum(self, x) -> float:
        total = self.ops.xp.sum(x)
        return total if self.__dict__.get("_deferred") else self.ops.item(total)

    def get_config(self) -> dict:
        """The constructor arguments (``type(loss)(**loss.get_config())`` rebuilds it)."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
