"""Optimizer base: state over the whole flat parameter array, global-norm clipping, a learning rate."""

from __future__ import annotations

import math
from typing import Any

from ..backend import ops_for_array

# Every Optimizer subclass by class name, for configs and files.
OPTIMIZERS: dict[str, type[Optimizer]] = {}


class Optimizer:
    """``opt.step(params, grads)`` updates the flat ``params`` in place from the flat ``grads``.

    Args:
        lr (float): learning rate (>= 0).
        clip_norm (float, optional): rescale the gradient so its global L2 norm is at most this.
    """

    state_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZERS[cls.__name__] = cls

    def __init__(self, lr: float, clip_norm: float | None = None):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"{type(self).__name__}: learning rate must be a finite number >= 0, got {lr!r}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"{type(self).__name__}: clip_norm must be > 0, got {clip_norm!r}")
        self.lr = float(lr)
        self.initial_lr = self.lr
        self.clip_norm = clip_norm
        self.iterations = 0
        self.state: dict[str, Any] = {}
        self._scratch = None

    def reset(self) -> None:
        """Forget the moment estimates and the step count (the parameter layout changed)."""
        self.iterations = 0
        self.state = {}
        self._scratch = None

    def _init_state(self, params) -> None:
        ops = ops_for_array(params)
        self.ops = ops
        self.state = {name: ops.zeros(tuple(params.shape), ops.dtype_name(params)) for name in self.state_names}
        self._scratch = ops.empty(tuple(params.shape), ops.dtype_name(params))

    def step(self, params, grads) -> None:
        s = self._scratch
        if s is None or type(s) is not type(params) or tuple(s.shape) != tuple(params.shape):
            self._init_state(params)
        self.iterations += 1
        if self.clip_norm is not None:
            self.clip_(grads)
        self.update(params, grads)

    def clip_(self, grads) -> float:
        """Scale ``grads`` in place so their global L2 norm is at most clip_norm; returns the norm."""
        xp = self.ops.xp
        norm = math.sqrt(self.ops.item(xp.sum(xp.multiply(grads, grads, out=self._scratch))))
        if norm > self.clip_norm:
            grads *= self.clip_norm / (norm + 1e-6)  # torch.nn.utils.clip_grad_norm_'s epsilon
        return norm

    def update(self, params, grads) -> None:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"lr": self.lr, "clip_norm": self.clip_norm}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"
