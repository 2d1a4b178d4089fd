"""Optimizer base: state over the whole flat parameter array, global-norm clipping, a learning rate,
parameter groups and frozen layers.

A subclass names its state arrays (``state_names``, flat like the parameters) and implements
``update(params, grads, spans)`` as ONE call into the backend (``ops.adam_step``, ...), which updates the
parameters and the state in place over the trainable spans of the buffer, with each span's group
settings: NumPy runs one fused Numba pass over the table of spans, torch a few in-place passes per span.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import ops_for_array
from ..core import layer as layer_module
from .groups import check_groups, model_spans, whole

# Every Optimizer subclass by class name, for configs and files.
OPTIMIZERS: dict[str, type[Optimizer]] = {}

# torch.nn.utils.clip_grad_norm_ divides max_norm by (total_norm + this).
CLIP_EPS = 1e-6


class Optimizer:
    """``opt.step(params, grads)`` updates the flat ``params`` in place from the flat ``grads``.

    Args:
        lr (float): learning rate (>= 0); schedulers change ``opt.lr`` between steps.
        clip_norm (float, optional): before each step, scale the gradient in place so that its global
            L2 norm is at most this, as ``torch.nn.utils.clip_grad_norm_(params, clip_norm)``.
        groups (list[dict], optional): parameter groups, as torch's, by ``state_dict`` name patterns:
            ``[{"params": "*.bias", "weight_decay": 0.0}, {"params": ["0.*", "1.*"], "lr": 1e-4}]``.
            Each parameter takes the first group whose fnmatch pattern matches its name; the others take
            this optimizer's own lr and weight_decay. Schedulers scale every group's lr by the factor they
            apply to the optimizer's. The names come from the model that compiles this optimizer
            (``bind``).

    Layers with ``trainable = False`` are skipped: their weights and state stay untouched.
    """

    state_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZERS[cls.__name__] = cls

    def __init__(self, lr: float, clip_norm: float | None = None, groups: list[dict] | None = None):
        self.lr = _check_number(self, "lr", lr)
        self.groups = check_groups(type(self).__name__, groups)
        self._model = None
        self._spans = self._spans_key = self._spans_params = None
        self.initial_lr = self.lr
        if clip_norm is not None and not (isinstance(clip_norm, (int, float)) and clip_norm > 0):
            raise ValueError(f"{type(self).__name__}: clip_norm must be a number > 0, got {clip_norm!r}")
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.iterations = 0
        self.state: dict[str, Any] = {}
        self._scratch = None
        self.ops = None
        self.scheduler = None  # the LRScheduler driving lr; .nnet files keep its position
        self.pending_scheduler_state: dict | None = None  # from a file, for the next scheduler attached

    def reset(self) -> None:
        """Forget the state and the step count (the parameter layout changed)."""
        self.iterations = 0
        self.state = {}
        self._scratch = None
        self._spans = self._spans_key = self._spans_params = None

    def bind(self, model) -> None:
        """Learn the parameter names, flat offsets and frozen layers of ``model`` (its ``compile`` calls
        this), for the groups and for skipping frozen layers; re-read whenever ``trainable`` changes."""
        self._model = model
        self._spans = self._spans_key = self._spans_params = None
        if self.groups and model.built and model.flat_params is not None:
            self._spans_for(model.flat_params)  # a pattern that matches nothing fails here, not later

    def _spans_for(self, params):
        """The Spans of ``params`` to update: the bound model's trainable spans with their groups, or the
        whole buffer as group 0 when ``params`` is not a bound model's."""
        key = (layer_module.TRAINABLE_VERSION, tuple(params.shape))
        if self._spans is None or self._spans_key != key or self._spans_params is not params:
            model = self._model
            if model is not None and model.flat_params is params:
                self._spans = model_spans(type(self).__name__, model, self.groups)
            elif self.groups:
                raise RuntimeError(f"{type(self).__name__}: parameter groups need the parameter names; "
                                   "compile a model with this optimizer (or call optimizer.bind(model)) and "
                                   "step its flat_params")
            else:
                self._spans = whole(int(params.shape[0]))
            self._spans_key, self._spans_params = key, params
        return self._spans

    def group_settings(self) -> dict:
        """``lr`` and ``weight_decay`` per group (group 0: this optimizer's own), as tuples; a group's lr
        follows the optimizer's lr by the same factor (a scheduler's) as lr / initial_lr."""
        lr, wd = self.lr, getattr(self, "weight_decay", 0.0)
        scale = lr / self.initial_lr if self.initial_lr else 1.0
        return {"lr": (lr, *(g["lr"] * scale if "lr" in g else lr for g in self.groups)),
                "weight_decay": (wd, *(g.get("weight_decay", wd) for g in self.groups))}

    def _init_state(self, params) -> None:
        """Allocate zeroed state (and the backend's update scratch, if it needs any) for ``params``."""
        self.ops = ops_for_array(params)
        self.state = {}
        self._ensure_state(params)

    def _ensure_state(self, params) -> None:
        """Make every state array and the scratch fit ``params``; state of the right shape is kept
        (moved to the parameters' backend if needed), so a loaded or pre-set state survives."""
        ops = self.ops = ops_for_array(params)
        shape, dtype = tuple(params.shape), ops.dtype_name(params)
        for name in self.state_names:
            s = self.state.get(name)
            if s is None or tuple(s.shape) != shape:
                self.state[name] = ops.zeros(shape, dtype)
            elif not ops.is_array(s) or ops.dtype_name(s) != dtype:
                self.state[name] = ops.asarray(s, dtype)
        k = ops.update_scratch
        s = self._scratch
        if k and (s is None or not ops.is_array(s) or tuple(s.shape) != (k, *shape)
                  or ops.dtype_name(s) != dtype):
            self._scratch = ops.empty((k, *shape), dtype)

    def step(self, params, grads) -> None:
        """One update of the flat ``params`` (in place) from the flat ``grads``."""
        if self.ops is None or not self.ops.is_array(params) or not self._state_fits(params):
            self._ensure_state(params)
        spans = self._spans_for(params)
        self.iterations += 1
        if self.clip_norm is not None:
            self.clip_(grads)
        self.update(params, grads, spans)

    def _state_fits(self, params) -> bool:
        shape = tuple(params.shape)
        for name in self.state_names:
            s = self.state.get(name)
            if s is None or type(s) is not type(params) or tuple(s.shape) != shape:
                return False
        s = self._scratch
        return not self.ops.update_scratch or s is not None and type(s) is type(params)

    def clip_(self, grads) -> None:
        """Scale ``grads`` in place so their global L2 norm is at most clip_norm (on a device without
        reading the norm back: ``ops.clip_norm_``)."""
        (self.ops or ops_for_array(grads)).clip_norm_(grads, self.clip_norm, CLIP_EPS)

    def update(self, params, grads, spans) -> None:
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments (``type(opt)(**opt.get_config())`` rebuilds it)."""
        groups = {"groups": self.groups} if self.groups else {}
        return {"lr": self.lr, "clip_norm": self.clip_norm, **groups}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def _check_number(owner, name: str, value, lo: float = 0.0, hi: float = math.inf,
                  hi_open: bool = False) -> float:
    """``value`` as a float in [lo, hi] (or [lo, hi)), else a ValueError naming the optimizer and argument."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f">= {lo:g}" if not math.isfinite(hi) else f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{type(owner).__name__}: {name} must be a finite number {interval}, got {value!r}")
    return float(value)
