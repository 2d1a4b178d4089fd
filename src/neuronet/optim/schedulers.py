"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s semantics and values, also fit callbacks.

Use them as in PyTorch, calling ``sched.step()`` after ``opt.step()``::

    opt = nn.SGD(0.1)
    sched = nn.StepLR(opt, step_size=30, gamma=0.1)
    for epoch in range(100):
        ...                     # training steps
        sched.step()            # sched.get_last_lr() -> [lr]

or hand them to ``model.fit(callbacks=[...])``, where they step at the end of every epoch
(``interval="epoch"``) or after every batch (``interval="step"``, the default of ``LinearWarmup``).
Built without an optimizer (``nn.StepLR(step_size=30)``), a scheduler drives the model's optimizer.
The optimizer's ``initial_lr`` is the base learning rate; schedulers write ``optimizer.lr``.
"""

from __future__ import annotations

import math

from ..core.callback import Callback
from .optimizer import Optimizer


class LRScheduler(Callback):
    """Base class: ``step()`` moves to the next epoch (or batch) and sets ``optimizer.lr``.

    Subclasses give ``get_lr()``, the learning rate at ``last_epoch`` from the current one (torch's
    chainable form), and ``closed_form_lr()``, the same from the base learning rate alone.

    Args:
        optimizer (Optimizer, optional): the optimizer to drive; None to take the model's in ``fit``.
        interval (str): as a fit callback, step after every ``"epoch"`` or every ``"step"`` (batch).
    """

    def __init__(self, optimizer: Optimizer | None = None, interval: str = "epoch"):
        if interval not in ("epoch", "step"):
            raise ValueError(f"{type(self).__name__}: interval must be 'epoch' or 'step', got {interval!r}")
        self.interval = interval
        self.optimizer: Optimizer | None = None
        self.last_epoch = -1
        self._initial = False
        self._last_lr: float | None = None
        if optimizer is not None:
            self.attach(optimizer)

    def attach(self, optimizer: Optimizer) -> None:
        """Drive ``optimizer`` from epoch 0; its ``initial_lr`` is the base learning rate.

        An optimizer loaded from a ``.nnet`` file with the state of a scheduler of this type
        (``optimizer.pending_scheduler_state``) resumes that schedule where it was instead.
        """
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a neuronet Optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer, self.base_lr = optimizer, optimizer.initial_lr
        pending = optimizer.pending_scheduler_state
        if pending is not None and pending.get("type") == type(self).__name__:
            optimizer.pending_scheduler_state = None
            self.load_state_dict(pending)
        else:
            self._begin()
        optimizer.scheduler = self

    # ----------------------------------------------------------------- position, for exact resume
    _state_attrs: tuple[str, ...] = ("last_epoch", "base_lr", "_last_lr")
    _nested: tuple[str, ...] = ()  # attributes holding a child scheduler's state

    def state_dict(self) -> dict:
        """The schedule's position (JSON): restored by ``load_state_dict`` or by attaching to a loaded
        optimizer. Constructor arguments are not included: rebuild the scheduler with the same ones."""
        state = {"type": type(self).__name__}
        state.update({name: getattr(self, name) for name in self._state_attrs})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s position (on the optimizer already attached)."""
        check_state(state, type(self))
        for name in self._state_attrs:
            setattr(self, name, state[name])

    def _begin(self) -> None:
        """torch's initial step to epoch 0 (which keeps the current lr for most schedules)."""
        self.last_epoch = -1
        self._initial = True
        self.step()
        self._initial = False

    def step(self) -> None:
        """Advance one epoch (or batch) and set the optimizer's learning rate."""
        self._require_optimizer()
        self.last_epoch += 1
        self._set_lr(self.get_lr())

    def restart(self) -> None:
        """Go back to epoch 0 with the closed-form learning rate (how a sequence hands over to this one)."""
        self._require_optimizer()
        self.last_epoch = 0
        self._set_lr(self.closed_form_lr())

    def get_lr(self) -> float:
        raise NotImplementedError

    def closed_form_lr(self) -> float:
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rate set by the last step, as a one-element list (torch: one per param group)."""
        self._require_optimizer()
        return [self._last_lr]

    def _set_lr(self, lr: float) -> None:
        self.optimizer.lr = self._last_lr = float(lr)

    def _require_optimizer(self) -> None:
        if self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}: no optimizer yet; pass one, or use the scheduler as "
                               "a callback of model.fit (which attaches the model's optimizer)")

    # ----------------------------------------------------------------- as a fit callback
    def set_model(self, model) -> None:
        super().set_model(model)
        if model.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}: the model has no optimizer; call model.compile first")
        if self.optimizer is None:
            self.attach(model.optimizer)
        elif self.optimizer is not model.optimizer:
            raise ValueError(f"{type(self).__name__}: it drives a different optimizer than the model's "
                             f"({self.optimizer!r} vs {model.optimizer!r})")

    def on_epoch_end(self, epoch, logs=None):
        if self.interval == "epoch":
            self.step()

    def on_batch_end(self, batch, logs=None):
        if self.interval == "step":
            self.step()


def check_state(state, cls: type | None = None) -> None:
    """Raise ValueError unless ``state`` is a scheduler state of ``cls`` (or of any known scheduler)."""
    classes = {c.__name__: c for c in (StepLR, CosineAnnealingLR, LinearLR, LinearWarmup, ReduceLROnPlateau)}
    name = state.get("type") if isinstance(state, dict) else None
    want = classes.get(name) if cls is None else cls
    if want is None or name != want.__name__ or set(state) != {"type", *want._state_attrs}:
        raise ValueError(f"scheduler state {state!r:.120} is not a state of "
                         f"{cls.__name__ if cls else 'a known scheduler'}")
    for key in want._state_attrs:
        value = state[key]
        if key in want._nested:
            if value is not None:
                check_state(value)
        elif key == "last_epoch" or key.startswith("num_") or key.endswith("_counter"):
            if type(value) is not int or not -1 <= value < 2**53:
                raise ValueError(f"scheduler state {key} must be an integer >= -1, got {value!r:.80}")
        elif value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"scheduler state {key} must be a number, got {value!r:.80}")


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (PyTorch: lr_scheduler.StepLR).

    lr = base_lr * gamma ^ floor(epoch / step_size)

    Args:
        optimizer (Optimizer, optional): see LRScheduler.
        step_size (int): epochs between decays (>= 1).
        gamma (float): the decay factor. Default: ``0.1``.
        interval (str): ``"epoch"`` (default) or ``"step"``, as a fit callback.
    """

    def __init__(self, optimizer: Optimizer | None = None, step_size: int = 1, gamma: float = 0.1,
                 interval: str = "epoch"):
        if not (isinstance(step_size, int) and step_size >= 1):
            raise ValueError(f"StepLR: step_size must be an integer >= 1, got {step_size!r}")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer, interval)

    def get_lr(self):
        lr = self.optimizer.lr
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return lr
        return lr * self.gamma

    def closed_form_lr(self):
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base learning rate to ``eta_min`` over ``T_max`` epochs
    (PyTorch: lr_scheduler.CosineAnnealingLR, without restarts: past T_max the cosine continues).

    lr = eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2

    Args:
        optimizer (Optimizer, optional): see LRScheduler.
        T_max (int): half period, in epochs (>= 1).
        eta_min (float): the lowest learning rate. Default: ``0``.
        interval (str): ``"epoch"`` (default) or ``"step"``, as a fit callback.
    """

    def __init__(self, optimizer: Optimizer | None = None, T_max: int = 1, eta_min: float = 0.0,  # noqa: N803
                 interval: str = "epoch"):
        if not (isinstance(T_max, int) and T_max >= 1):
            raise ValueError(f"CosineAnnealingLR: T_max must be an integer >= 1, got {T_max!r}")
        self.T_max, self.eta_min = T_max, float(eta_min)
        super().__init__(optimizer, interval)

    def get_lr(self):
        lr, e, t, lo = self.optimizer.lr, self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return lr
        if (e - 1 - t) % (2 * t) == 0:
            return lr + (self.base_lr - lo) * (1 - math.cos(math.pi / t)) / 2
        return (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t)) * (lr - lo) + lo

    def closed_form_lr(self):
        cos = math.cos(math.pi * self.last_epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + cos) / 2


class LinearLR(LRScheduler):
    """Scale the learning rate linearly from ``start_factor`` to ``end_factor`` over ``total_iters`` epochs,
    then keep it (PyTorch: lr_scheduler.LinearLR).

    lr = base_lr * (start_factor + (end_factor - start_factor) * min(epoch, total_iters) / total_iters)

    Args:
        optimizer (Optimizer, optional): see LRScheduler.
        start_factor (float): in (0, 1]. Default: ``1/3``.
        end_factor (float): in [0, 1]. Default: ``1.0``.
        total_iters (int): epochs of the ramp (>= 1). Default: ``5``.
        interval (str): ``"epoch"`` (default) or ``"step"``, as a fit callback.
    """

    def __init__(self, optimizer: Optimizer | None = None, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5, interval: str = "epoch"):
        if not 0.0 < start_factor <= 1.0 or not 0.0 <= end_factor <= 1.0:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1], got "
                             f"{start_factor!r}, {end_factor!r}")
        if not (isinstance(total_iters, int) and total_iters >= 1):
            raise ValueError(f"LinearLR: total_iters must be an integer >= 1, got {total_iters!r}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = total_iters
        super().__init__(optimizer, interval)

    def get_lr(self):
        lr, e, n = self.optimizer.lr, self.last_epoch, self.total_iters
        s, f = self.start_factor, self.end_factor
        if e == 0:
            return lr * s
        if self._initial or e > n:
            return lr
        return lr * (1.0 + (f - s) / (n * s + (e - 1) * (f - s)))

    def closed_form_lr(self):
        s, f = self.start_factor, self.end_factor
        return self.base_lr * (s + (f - s) * min(self.total_iters, self.last_epoch) / self.total_iters)


class LinearWarmup(LRScheduler):
    """Linear warm-up over ``warmup_steps`` steps, then hand over to another scheduler (or keep the base lr).

    lr rises linearly from base_lr * start_factor at step 0 to base_lr at step ``warmup_steps``; from there
    ``after`` (e.g. a CosineAnnealingLR with T_max in steps) runs from its epoch 0. PyTorch counterpart:
    ``SequentialLR(opt, [LinearLR(opt, start_factor, 1.0, total_iters=warmup_steps), after],
    milestones=[warmup_steps])``, or the LinearLR alone without ``after``.

    Args:
        optimizer (Optimizer, optional): see LRScheduler.
        warmup_steps (int): length of the ramp (>= 1).
        after (LRScheduler, optional): the schedule after the warm-up, stepped by this one (do not also pass
            it to fit). Built on the same optimizer, or without one.
        start_factor (float, optional): the first step's fraction of the base lr.
            Default: ``1 / warmup_steps``.
        interval (str): ``"step"`` (default: per batch) or ``"epoch"``, as a fit callback.
    """

    def __init__(self, optimizer: Optimizer | None = None, warmup_steps: int = 1,
                 after: LRScheduler | None = None, start_factor: float | None = None, interval: str = "step"):
        if not (isinstance(warmup_steps, int) and warmup_steps >= 1):
            raise ValueError(f"LinearWarmup: warmup_steps must be an integer >= 1, got {warmup_steps!r}")
        if after is not None and (not isinstance(after, LRScheduler) or isinstance(after, ReduceLROnPlateau)):
            raise TypeError("LinearWarmup: after must be an epoch-indexed LRScheduler (StepLR, "
                            f"CosineAnnealingLR, LinearLR), got {type(after).__name__}")
        self.warmup_steps, self.after = warmup_steps, after
        self.start_factor = 1.0 / warmup_steps if start_factor is None else float(start_factor)
        self.warmup = LinearLR(None, self.start_factor, 1.0, warmup_steps)
        super().__init__(optimizer, interval)

    def _begin(self):
        opt = self.optimizer
        if self.after is not None:
            if self.after.optimizer is None:
                self.after.attach(opt)
            elif self.after.optimizer is not opt:
                raise ValueError("LinearWarmup: after drives a different optimizer")
        opt.lr = opt.initial_lr  # as SequentialLR: undo the other schedulers' initial steps
        self.last_epoch = 0
        self.warmup.attach(opt)
        self._last_lr = opt.lr

    _state_attrs = (*LRScheduler._state_attrs, "warmup", "after")
    _nested = ("warmup", "after")

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["warmup"] = self.warmup.state_dict()
        state["after"] = self.after.state_dict() if self.after is not None else None
        return state

    def load_state_dict(self, state: dict) -> None:
        check_state(state, type(self))
        if (state["after"] is None) != (self.after is None):
            raise ValueError("LinearWarmup: the saved state and this scheduler differ in having 'after'")
        for name in LRScheduler._state_attrs:
            setattr(self, name, state[name])
        for child in (self.warmup, self.after):
            if child is not None:
                child.optimizer, child.base_lr = self.optimizer, self.optimizer.initial_lr
        self.warmup.load_state_dict(state["warmup"])
        if self.after is not None:
            self.after.load_state_dict(state["after"])

    def step(self):
        self._require_optimizer()
        self.last_epoch += 1
        if self.after is None or self.last_epoch < self.warmup_steps:
            self.warmup.step()
        elif self.last_epoch == self.warmup_steps:
            self.after.restart()
        else:
            self.after.step()
        self._last_lr = self.optimizer.lr


class ReduceLROnPlateau(LRScheduler):
    """Multiply the learning rate by ``factor`` once a metric has stopped improving for ``patience`` epochs
    (PyTorch: lr_scheduler.ReduceLROnPlateau; ``step(metric)``). Also the ``nn.ReduceLROnPlateau`` fit
    callback: there it reads ``logs[monitor]`` at the end of every epoch.

    Improvement (rel/min): metric < best * (1 - threshold); (abs/min): metric < best - threshold; the max
    modes mirror these. After ``patience`` epochs without one: lr = max(lr * factor, min_lr) (skipped when
    the change is below ``eps``), then ``cooldown`` epochs in which bad epochs are not counted.

    Args:
        optimizer (Optimizer, optional): see LRScheduler.
        mode (str): ``"min"``, ``"max"``, or ``"auto"``: max when ``monitor`` names an accuracy, else min
            (torch's default). Default: ``"auto"``.
        factor (float): in (0, 1). Default: ``0.1``.
        patience (int): Default: ``10``.
        threshold (float): Default: ``1e-4``.
        threshold_mode (str): ``"rel"`` or ``"abs"``. Default: ``"rel"``.
        cooldown (int): Default: ``0``.
        min_lr (float): Default: ``0``.
        eps (float): Default: ``1e-8``.
        monitor (str): the logged value watched as a callback. Default: ``"val_loss"``.
        min_delta (float, optional): Keras's spelling: threshold=min_delta with threshold_mode="abs".
        verbose (int): print each reduction. Default: ``0``.
    """

    def __init__(self, optimizer: Optimizer | None = None, mode: str = "auto", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, eps: float = 1e-8, *, monitor: str = "val_loss",
                 min_delta: float | None = None, verbose: int = 0):
        if isinstance(optimizer, str):
            raise TypeError("ReduceLROnPlateau: the first argument is the optimizer; pass "
                            f"monitor={optimizer!r} by keyword")
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min', 'max' or 'auto', got {mode!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        if min_delta is not None:
            threshold, threshold_mode = abs(float(min_delta)), "abs"
        if threshold_mode not in ("rel", "abs"):
            raise ValueError("ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', "
                             f"got {threshold_mode!r}")
        self.monitor = monitor
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.factor, self.patience, self.threshold = float(factor), int(patience), float(threshold)
        self.threshold_mode, self.cooldown, self.min_lr = threshold_mode, int(cooldown), float(min_lr)
        self.eps = float(eps)
        self.verbose = verbose
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0
        super().__init__(optimizer, "epoch")

    _state_attrs = (*LRScheduler._state_attrs, "best", "num_bad_epochs", "cooldown_counter")

    def _begin(self):
        self.last_epoch, self._last_lr = 0, self.optimizer.lr

    def is_better(self, value: float) -> bool:
        """Whether ``value`` improves on the best so far by more than the threshold."""
        t, best = self.threshold, self.best
        if self.mode == "min":
            return value < (best * (1.0 - t) if self.threshold_mode == "rel" else best - t)
        return value > (best * (1.0 + t) if self.threshold_mode == "rel" else best + t)

    def step(self, metric: float) -> None:  # type: ignore[override]
        """Record this epoch's ``metric`` and reduce the learning rate if it has plateaued."""
        self._require_optimizer()
        value = float(metric)
        self.last_epoch += 1
        if self.is_better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
                if self.verbose:
                    print(f"Epoch {self.last_epoch}: ReduceLROnPlateau reducing learning rate to {new:.4g}")
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = self.optimizer.lr

    def on_epoch_end(self, epoch, logs=None):
        if not logs or self.monitor not in logs:
            raise KeyError(f"ReduceLROnPlateau: monitored value {self.monitor!r} is not in the logs "
                           f"({', '.join(logs or {})}); pass validation_data or monitor another key")
        self.step(logs[self.monitor])
