"""Callbacks with Keras's hooks: on_{train,epoch,batch}_{begin,end}(..., logs)."""

from __future__ import annotations

import csv
import itertools
import math
import os
import time
import warnings

import numpy as np

from ._atomic import atomic_path
from .core.callback import Callback
from .errors import ConfigError
from .optim.schedulers import ReduceLROnPlateau  # noqa: F401 -- the scheduler is also a fit callback


class CallbackList(Callback):
    """Fans every hook out to a list of callbacks, in order."""

    def __init__(self, callbacks: list[Callback], model):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)

    def __getattribute__(self, name):
        if name.startswith("on_"):
            def fan_out(*args, **kwargs):
                for cb in object.__getattribute__(self, "callbacks"):
                    getattr(cb, name)(*args, **kwargs)
            return fan_out
        return object.__getattribute__(self, name)


class History(Callback):
    """Per-epoch logs: ``history.history["loss"]``, ``["val_loss"]``, ...; ``epoch`` lists the epochs."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))

    def to_csv(self, path: str) -> None:
        """Write one row per epoch (atomically)."""
        keys = list(self.history)
        rows = [[epoch, *(self.history[k][i] for k in keys)] for i, epoch in enumerate(self.epoch)]
        _write_rows_atomically(path, [["epoch", *keys], *rows])


class ProgressBar(Callback):
    """A tqdm bar per epoch with rate, ETA and the running loss/metrics (``verbose=1``)."""

    def __init__(self, epochs: int, steps: int):
        self.epochs, self.steps = epochs, steps
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}", unit="batch",
                        leave=True, dynamic_ncols=True)

    def on_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
        self.bar.close()

    def on_train_end(self, logs=None):
        if self.bar is not None:  # training stopped inside an epoch
            self.bar.close()


class EpochLogger(Callback):
    """One line per epoch with the logs and the epoch's wall time (``verbose=2``)."""

    def __init__(self, epochs: int, print_fn=print):
        self.epochs, self.print_fn = epochs, print_fn

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        items = " - ".join(f"{k}: {v:.4f}" for k, v in (logs or {}).items())
        self.print_fn(f"Epoch {epoch + 1}/{self.epochs} - {time.perf_counter() - self._t:.1f}s - {items}")


class _Monitor(Callback):
    """Shared by the callbacks that watch one logged value for improvement."""

    def __init__(self, monitor: str, mode: str, min_delta: float):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.min_delta = abs(float(min_delta))
        self.best = math.inf if self.mode == "min" else -math.inf

    def _current(self, logs):
        if not logs or self.monitor not in logs:
            raise KeyError(f"{type(self).__name__}: monitored value {self.monitor!r} is not in the logs "
                           f"({', '.join(logs or {})}); pass validation_data or monitor another key")
        return float(logs[self.monitor])

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, patience: int = 0, min_delta: float = 0.0, monitor: str = "val_loss",
                 mode: str = "auto", restore_best_weights: bool = False):
        super().__init__(monitor, mode, min_delta)
        self.patience = int(patience)
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._best_params = None

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch = 0, None
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = self._current(logs)
        if self._improved(value):
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self._best_params = np.array(self.model.ops.to_numpy(self.model.flat_params))
            return
        self.wait += 1
        if self.wait >= self.patience:  # Keras: stop after `patience` epochs without improvement
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self._best_params is not None:
                self.model.ops.copy_(self.model.flat_params, self.model.ops.asarray(self._best_params))


class ModelCheckpoint(_Monitor):
    """Save the model (``model.save(path)``) after each epoch, or only when ``monitor`` improves.

    ``path`` may contain ``{epoch}`` and log keys, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.nnet"``.
    ``save_freq``: ``"epoch"`` (default), or an integer N to save every N batches instead (Keras); such a
    file holds the position inside the epoch, and ``fit`` resumes from it exactly. Every save is
    atomic and durable: a crash leaves the previous file complete.
    """

    def __init__(self, path: str, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", save_freq: str | int = "epoch"):
        super().__init__(monitor, mode, 0.0)
        if save_freq != "epoch" and not (type(save_freq) is int and save_freq >= 1):
            raise ValueError(f"ModelCheckpoint: save_freq must be 'epoch' or a number of batches >= 1, "
                             f"got {save_freq!r}")
        if save_freq != "epoch" and save_best_only:
            raise ValueError("ModelCheckpoint: save_best_only needs save_freq='epoch' (monitored values are "
                             "per epoch)")
        self.path = str(path)
        self.save_best_only = save_best_only
        self.save_freq = save_freq
        self._batches = 0

    def on_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches % self.save_freq == 0:
            self.model.save(self.path.format(epoch=self.model.epoch + 1, **(logs or {})))

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq != "epoch":
            return
        logs = logs or {}
        if self.save_best_only:
            value = self._current(logs)
            if not self._improved(value):
                return
            self.best = value
        self.model.save(self.path.format(epoch=epoch + 1, **logs))


class TerminateOnNaN(Callback):
    """Stop training when a batch's loss is NaN or inf, or grows past ``divergence`` times the first one.

    fit's default ``on_nonfinite="raise"`` raises on a non-finite loss before this sees it; use
    ``fit(..., on_nonfinite="skip")`` (or ``"warn"``) to stop cleanly instead. A finite loss that keeps
    growing (a learning rate far too high) is caught by ``divergence``. A non-finite loss's update is
    never applied, so after it the weights are those before the bad batch; ``stopped_batch`` and
    ``reason`` say where and why, and the model can be saved and resumed from there.

    Args:
        divergence (float, optional): stop when a batch loss exceeds this many times the first batch
            loss of the training run (and that first loss is positive). ``None`` disables the check.
            Default: ``1e4``.
    """

    def __init__(self, divergence: float | None = 1e4):
        if divergence is not None and not (isinstance(divergence, (int, float)) and divergence > 1):
            raise ValueError(f"TerminateOnNaN: divergence must be a number > 1 or None, got {divergence!r}")
        self.divergence = divergence
        self.reason: str | None = None
        self.stopped_batch: tuple[int, int] | None = None
        self._first = math.nan
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.reason, self.stopped_batch, self._first = None, None, math.nan

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = self.model.last_loss
        if math.isnan(self._first) and math.isfinite(loss):
            self._first = loss
        if not math.isfinite(loss):
            self.reason = f"batch loss is {loss}"
        elif self.divergence is not None and self._first > 0 and loss > self.divergence * self._first:
            self.reason = f"batch loss {loss:.4g} is over {self.divergence:g} times the first " \
                          f"({self._first:.4g}): the training diverges"
        else:
            return
        self.stopped_batch = (self._epoch, batch)
        self.model.stop_training = True
        warnings.warn(f"TerminateOnNaN: epoch {self._epoch + 1}, batch {batch}: {self.reason}; training "
                      "stopped", RuntimeWarning, stacklevel=2)


class CSVLogger(Callback):
    """One CSV row of logs per epoch in ``path`` (header first), rewritten atomically after each epoch.

    With ``append`` the rows of an existing file are kept and new ones added after them.
    """

    def __init__(self, path: str, append: bool = False):
        self.path, self.append = str(path), append
        self._rows: list[list] = []

    def on_train_begin(self, logs=None):
        self._rows = []
        if self.append and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                self._rows = list(csv.reader(f))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not self._rows:
            self._rows.append(["epoch", *logs])
        keys = self._rows[0][1:]
        self._rows.append([epoch, *(logs.get(k, "") for k in keys)])
        _write_rows_atomically(self.path, self._rows)


def _write_rows_atomically(path: str, rows: list[list]) -> None:
    """Write CSV rows to a temporary file next to ``path``, then rename it over ``path``."""
    with atomic_path(path, "CSV log") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)


class TensorBoard(Callback):
    """Write TensorBoard event files: losses and metrics, the learning rate and weight histograms.

    As Keras's callback: training values go to ``log_dir/train`` and validation values to
    ``log_dir/validation`` under the same tags (``epoch_loss``, ``epoch_accuracy``, ...), so TensorBoard
    draws them in one chart; ``epoch_learning_rate`` is the optimizer's ``lr``. With
    ``update_freq="batch"`` the running means of the epoch are also written after every batch
    (``batch_loss``, ...; the step is the optimizer's ``iterations``, so a resumed run continues the
    curve). Every ``histogram_freq`` epochs (0: never) each parameter's values are written as a histogram
    under its state_dict name. Only this callback writes; ``fit`` does not know about it.

    The writer is tensorboardX's (or, without it, torch.utils.tensorboard's); install it with
    ``pip install 'neuronet[tensorboard]'``.
    """

    def __init__(self, log_dir: str = "logs", update_freq: str = "epoch", histogram_freq: int = 0):
        if update_freq not in ("epoch", "batch"):
            raise ConfigError(f"TensorBoard: update_freq must be 'epoch' or 'batch', got {update_freq!r}")
        if int(histogram_freq) < 0:
            raise ConfigError(f"TensorBoard: histogram_freq must be >= 0, got {histogram_freq}")
        self.log_dir, self.update_freq, self.histogram_freq = str(log_dir), update_freq, int(histogram_freq)
        self._writer_class = _summary_writer()
        self._writers: dict = {}

    def _writer(self, name: str):
        if name not in self._writers:  # the writers name files by the second: a suffix keeps runs apart
            suffix = f".{os.getpid()}.{next(_EVENT_FILES):06d}"  # zero-padded: files are read in name order
            self._writers[name] = self._writer_class(os.path.join(self.log_dir, name), filename_suffix=suffix)
        return self._writers[name]

    def on_batch_end(self, batch, logs=None):
        if self.update_freq == "batch":
            step = self.model.optimizer.iterations
            for key, value in (logs or {}).items():
                self._writer("train").add_scalar(f"batch_{key}", float(value), step)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self._writer(split).add_scalar(f"epoch_{name}", float(value), epoch)
        train = self._writer("train")
        train.add_scalar("epoch_learning_rate", float(self.model.optimizer.lr), epoch)
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            for name, value in self.model.named_parameters():
                train.add_histogram(name, np.asarray(self.model.ops.to_numpy(value)), epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


_EVENT_FILES = itertools.count()


def _summary_writer():
    """The SummaryWriter class of tensorboardX, else of torch.utils.tensorboard (imported on first use)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoard callback: needs tensorboardX (or torch with tensorboard); "
                              "install it with pip install 'neuronet[tensorboard]'") from None
    return SummaryWriter
