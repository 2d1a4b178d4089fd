"""The Keras-style training loop: compile, train_step, fit, evaluate, predict."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core import random as nnrandom
from ..errors import NonFiniteError
from . import parallel, resume


def _resolve(kind: str, value, registry: dict, aliases: dict):
    """An instance from an instance, a class name or a short alias ("adam", "cross_entropy")."""
    if not isinstance(value, str):
        return value
    key = aliases.get(value.lower().replace("-", "_"), value)
    if key not in registry:
        known = sorted(set(registry) | set(aliases))
        raise ValueError(f"compile: unknown {kind} {value!r}; known: {', '.join(known)}")
    return registry[key]()


OPTIMIZER_ALIASES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
                     "adagrad": "Adagrad", "nadam": "NAdam"}
LOSS_ALIASES = {
    "mse": "MSELoss", "mean_squared_error": "MSELoss", "cross_entropy": "CrossEntropyLoss",
    "categorical_crossentropy": "CrossEntropyLoss", "sparse_categorical_crossentropy": "CrossEntropyLoss",
    "nll": "NLLLoss", "bce": "BCELoss", "binary_crossentropy": "BCELoss",
    "bce_with_logits": "BCEWithLogitsLoss", "huber": "HuberLoss", "l1": "L1Loss", "mae": "L1Loss",
}


class Trainer:
    """Mixed into Sequential: everything that drives forward/backward/step over data."""

    # Called as ``grad_ready(layer)`` once a layer's gradients are final in backward (Sequential and
    # Model call it), so distributed training can start reducing them while earlier layers still compute.
    grad_ready = None

    def __init__(self) -> None:
        self.optimizer = None
        self.loss = None
        self.metric_fns: dict = {}
        self.stop_training = False
        self.history = None
        # what a .nnet file keeps about training, restored by nn.load (see model/resume.py)
        self.epoch = 0                      # epochs completed
        self.saved_history: dict = {}       # per-epoch logs of the run this model was loaded from
        self.extra: dict = {}               # free-form JSON kept in the model's files
        self.position: dict | None = None   # where a saved run stopped inside an epoch; fit resumes there
        self.last_loss = math.nan           # the loss of the last batch fit ran (TerminateOnNaN reads it)
        self.skipped_steps = 0              # batches fit skipped for a non-finite loss
        self._cursor: resume.EpochCursor | None = None

    def compile(self, optimizer: Any = "adam", loss: Any = "cross_entropy", metrics: list[str] | None = None):
        """Choose the optimizer, the loss and the metrics reported by fit/evaluate."""
        from ..losses import LOSSES
        from ..metrics import resolve
        from ..optim import OPTIMIZERS

        self.optimizer = _resolve("optimizer", optimizer, OPTIMIZERS, OPTIMIZER_ALIASES)
        self.optimizer.bind(self)  # parameter names for its groups, and which layers are frozen
        self.loss = _resolve("loss", loss, LOSSES, LOSS_ALIASES)
        self.metric_fns = resolve(metrics)
        return self

    def _require_compiled(self, what: str) -> None:
        if self.optimizer is None or self.loss is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer=..., loss=...) first")

    def _data(self, data, name: str):
        """``fit``/``evaluate``/``predict`` data as arrays (a model of several inputs takes a DataList)."""
        return _as_data(data, name)

    def _totals(self) -> _Totals:
        return _Totals(self.metric_fns, self.ops)

    @staticmethod
    def _check_lengths(x, y, what: str) -> None:
        if y is not None and len(x) != len(y):
            raise ValueError(f"{what}: x has {len(x)} samples but y has {len(y)}")

    # ----------------------------------------------------------------- one step
    def _aux_layers(self) -> list:
        """Sub-layers that add an auxiliary loss (``aux_loss_weight``, e.g. MoE load balancing)."""
        cache = self.__dict__.get("_aux_cache")
        if cache is None or cache[0] is not self.flat_params:  # rebuilt or moved: look again
            cache = self._aux_cache = (self.flat_params, [layer for _, layer in self.named_layers()
                                                          if hasattr(layer, "aux_loss_weight")])
        return cache[1]

    def train_step(self, x, y) -> float:
        """Forward, loss, backward and one optimizer step on one batch; returns the loss.

        Layers with an ``aux_loss_weight`` add ``aux_loss_weight * aux_loss`` to the returned loss and,
        through ``aux_grad_scale`` (set only during this backward), to the gradient. A non-finite loss
        (NaN or inf in the data, or a diverged model) raises FloatingPointError before the weights
        are touched.
        """
        self._require_compiled("train_step")
        self._check_lengths(x, y, "train_step")
        loss = self._gradients(x, y)
        self.optimizer.step(self.flat_params, self.flat_grads)
        return loss

    def _gradients(self, x, y) -> float:
        """train_step without the optimizer step: the loss, with its gradient in ``flat_grads``."""
        out = self._last_output = self.forward(x, training=True)
        loss = self.loss.forward(out, y)
        aux_layers = self._aux_layers()
        for layer in aux_layers:
            loss += layer.aux_loss_weight * float(layer.aux_loss)
        if not math.isfinite(loss):
            raise NonFiniteError(f"train_step: the loss is {loss} (NaN or inf in the inputs/targets, or "
                                 "the model diverged: lower the learning rate); the step was refused")
        self.zero_grad()
        for layer in aux_layers:
            layer.aux_grad_scale = layer.aux_loss_weight
        try:
            self.backward(self.loss.backward(), input_grad=False)
        finally:
            for layer in aux_layers:
                layer.aux_grad_scale = 0.0
        return loss

    # ----------------------------------------------------------------- loops
    def _batches(self, n: int, batch_size: int, shuffle: bool):
        """Index arrays of the epoch's batches; the permutation is drawn now, not on first iteration."""
        order = nnrandom.generator().permutation(n) if shuffle else np.arange(n)
        return (order[start:start + batch_size] for start in range(0, n, batch_size))

    @staticmethod
    def _take(data, idx, buffers: dict, key: str):
        """data[idx] gathered into a reused buffer (NumPy data), or a plain index otherwise."""
        if isinstance(data, DataList):
            return DataList([Trainer._take(d, idx, buffers, f"{key}{i}") for i, d in enumerate(data.arrays)])
        if not isinstance(data, np.ndarray):
            return data[idx]
        buf = buffers.get(key)
        if buf is None or buf.shape[0] < len(idx) or buf.dtype != data.dtype:
            buf = buffers[key] = np.empty((max(len(idx), 1), *data.shape[1:]), data.dtype)
        out = buf[:len(idx)]
        np.take(data, idx, axis=0, out=out)
        return out

    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, callbacks=None, verbose: int = 1,
            initial_epoch: int = 0, workers=1, distributed: bool = False, on_nonfinite: str = "raise"):
        """Train for ``epochs`` passes over (x, y) in mini-batches; returns a History.

        ``validation_split`` holds out the LAST fraction of (x, y) (before shuffling) as validation
        data, as Keras does; ``validation_data=(xv, yv)`` takes precedence. Logs per epoch: ``loss``,
        the metrics, and ``val_``-prefixed ones with validation data. ``verbose``: 0 silent, 1 a
        progress bar per epoch (loss/metrics, rate, ETA), 2 one line per epoch. ``workers=N`` (or
        "auto") splits each batch over N threads; ``distributed=True`` trains data-parallel over the
        ranks of an ``mpiexec``/``torchrun`` job, ``batch_size`` per rank (docs/parallel.md).

        Resuming: ``fit(..., initial_epoch=model.epoch)`` on a loaded model continues exactly where the
        saved run was, also inside an epoch (``model.position``). ``on_nonfinite``: what a batch with
        a NaN/inf loss does (its update is never applied): ``"raise"`` NonFiniteError (default),
        ``"skip"`` it, or skip it with a ``"warn"``ing; NaN/inf weights at an epoch's end are reported
        the same way (raise, or warn).
        """
        from ..callbacks import CallbackList, EpochLogger, History, ProgressBar

        self._require_compiled("fit")
        x, y = self._data(x, "x"), self._data(y, "y")
        self._check_lengths(x, y, "fit")
        if int(batch_size) < 1 or int(epochs) < 0:
            raise ValueError(f"fit: batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("fit: validation_data must be a pair (x_val, y_val)")
            validation_data = (self._data(validation_data[0], "x_val"),
                               self._data(validation_data[1], "y_val"))
            self._check_lengths(*validation_data, "fit (validation_data)")
        elif validation_split:
            cut = int(len(x) * (1.0 - validation_split))
            if cut == 0 or cut == len(x):
                raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves an "
                                 "empty training or validation set")
            validation_data = (x[cut:], y[cut:])
            x, y = x[:cut], y[:cut]
        n, batch_size = len(x), int(batch_size)
        if n == 0:
            raise ValueError("fit: x is empty")
        run = parallel.TrainingRun(self, x, y, batch_size, workers, distributed)
        verbose, callbacks = run.verbose(verbose), run.callbacks(callbacks)
        history = History()
        cbs = [history, *(callbacks or [])]
        if verbose == 1:
            cbs.append(ProgressBar(epochs, run.steps(n)))
        elif verbose:
            cbs.append(EpochLogger(epochs))
        cb = CallbackList(cbs, self)
        self.history = history
        self.stop_training = False
        resume.check_mode(on_nonfinite, run.distributed)
        cursor = self._cursor = resume.EpochCursor(n, batch_size, bool(shuffle), self.position, initial_epoch)
        self.position = None
        buffers: dict = {}
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            totals = self._totals()
            cursor.begin(epoch, totals)
            cb.on_epoch_begin(epoch)
            batches = run.batches(n, shuffle, epoch)  # lazy: a distributed run sizes each step as it goes
            first, complete = None, True
            for step, idx in enumerate(batches):
                if first is None:  # the shuffle is drawn by now: resume (or not) from here
                    first = cursor.first_step()
                if step < first:
                    continue
                cb.on_batch_begin(step)
                yb = self._take(y, idx, buffers, "y")
                try:
                    loss = self.last_loss = run.train_step(self._take(x, idx, buffers, "x"), yb)
                except NonFiniteError as err:  # the update was refused; the weights are unchanged
                    self.last_loss = math.nan
                    resume.nonfinite_step(err, on_nonfinite, epoch, step)
                    self.skipped_steps += 1
                else:
                    totals.add_loss(loss, len(idx))
                    if self.metric_fns:
                        totals.add_metrics(self._last_output, yb)
                cursor.step = step + 1
                cb.on_batch_end(step, totals.means())
                if self.stop_training:
                    complete = next(batches, None) is None  # stopped after the last batch: epoch done
                    break
            if not complete:  # stopped inside the epoch: it ends when fit resumes it
                break
            resume.check_weights(self, on_nonfinite, epoch)
            cursor.finish()
            self.epoch = epoch + 1
            logs = run.reduce(totals)
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=max(batch_size, 256),
                                    distributed=run.distributed)
                logs.update({f"val_{k}": v for k, v in val.items()})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        return history

    def evaluate(self, x, y, batch_size: int = 256, verbose: int = 0, distributed: bool = False) -> dict:
        """Mean loss (and metrics) over (x, y) in inference mode: ``{"loss": ..., "accuracy": ...}``.

        Safe to call from several threads at once. ``distributed=True``: each rank evaluates its part of
        (x, y) and the result is reduced over the ranks (every rank must call it).
        """
        if self.loss is None:
            raise RuntimeError("evaluate: call model.compile(loss=...) first")
        x, y = self._data(x, "x"), self._data(y, "y")
        self._check_lengths(x, y, "evaluate")
        if len(x) == 0:
            raise ValueError("evaluate: x is empty")
        totals = self._totals()
        resume.check_input(x, "evaluate")
        x, y, comm = parallel.shard(x, y, distributed)
        with parallel.inference_model(self) as model:
            for start in range(0, len(x), int(batch_size)):
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                out = model.forward(xb, training=False)
                totals.add_loss(model.loss.forward(out, yb), len(xb))
                if self.metric_fns:
                    totals.add_metrics(out, yb)
        result = parallel.reduce_totals(totals, comm)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in result.items()))
        return result

    def predict(self, x, batch_size: int = 256, workers: int = 1) -> np.ndarray:
        """Outputs for every sample of x in inference mode, as one NumPy array (no compile needed); a list
        of arrays for a model with several outputs.

        Safe to call from several threads at once; ``workers=N`` splits x over N threads.
        """
        x = self._data(x, "x")
        if len(x) == 0:
            raise ValueError("predict: x is empty")
        resume.check_input(x, "predict")
        if workers != 1:
            return parallel.predict(self, x, int(batch_size), workers)
        with parallel.inference_model(self) as model:
            parts = [parallel.to_host(self.ops, model.forward(x[start:start + batch_size], training=False))
                     for start in range(0, len(x), int(batch_size))]
        return parallel.join_batches(parts)

    # ----------------------------------------------------------------- what .nnet files keep
    def training_position(self) -> dict | None:
        """Where ``fit`` is inside an epoch (saved as ``training.position``), or None between epochs."""
        if self._cursor is not None:
            return self._cursor.position()
        return self.position

    def full_history(self) -> dict:
        """Per-epoch logs of the whole run: the loaded run's up to where this one started, then this one."""
        return resume.merged_history(self.saved_history, self.history)


class _Totals:
    """Sample-weighted running means of the loss and the metrics over an epoch."""

    def __init__(self, metric_fns: dict, ops):
        self.metric_fns, self.ops = metric_fns, ops
        self.sums = {"loss": 0.0, **{k: 0.0 for k in metric_fns}}
        self.counts = dict.fromkeys(self.sums, 0)

    def add_loss(self, loss: float, n: int) -> None:
        self.sums["loss"] += loss * n
        self.counts["loss"] += n

    def add_metrics(self, pred, target) -> None:
        pred, target = self.ops.to_numpy(pred), self.ops.to_numpy(target)
        for name, fn in self.metric_fns.items():
            s, c = fn(pred, np.asarray(target))
            self.sums[name] += s
            self.counts[name] += c

    def means(self) -> dict:
        return {k: self.sums[k] / max(self.counts[k], 1) for k in self.sums}


def _as_data(data, name: str):
    """Arrays (NumPy or torch) pass through; lists and other sequences become NumPy arrays."""
    if data is None:
        raise ValueError(f"{name} is required (got None)")
    if isinstance(data, np.ndarray) or type(data).__module__.startswith("torch"):
        return data
    return np.asarray(data)


class DataList:
    """Equal-length arrays batched together: the data of a model with several inputs (or outputs)."""

    def __init__(self, arrays: list):
        self.arrays = list(arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index) -> DataList:
        return DataList([a[index] for a in self.arrays])
