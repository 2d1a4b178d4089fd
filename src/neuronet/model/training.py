"""The Keras-style training loop: compile, train_step, fit, evaluate, predict."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core import random as nnrandom


def _resolve(kind: str, value, registry: dict, aliases: dict):
    """An instance from an instance, a class name or a short alias ("adam", "cross_entropy")."""
    if not isinstance(value, str):
        return value
    key = aliases.get(value.lower().replace("-", "_"), value)
    if key not in registry:
        known = sorted(set(registry) | set(aliases))
        raise ValueError(f"compile: unknown {kind} {value!r}; known: {', '.join(known)}")
    return registry[key]()


OPTIMIZER_ALIASES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}
LOSS_ALIASES = {
    "mse": "MSELoss", "mean_squared_error": "MSELoss", "cross_entropy": "CrossEntropyLoss",
    "categorical_crossentropy": "CrossEntropyLoss", "sparse_categorical_crossentropy": "CrossEntropyLoss",
    "nll": "NLLLoss", "bce": "BCELoss", "binary_crossentropy": "BCELoss",
    "bce_with_logits": "BCEWithLogitsLoss", "huber": "HuberLoss", "l1": "L1Loss", "mae": "L1Loss",
}


class Trainer:
    """Mixed into Sequential: everything that drives forward/backward/step over data."""

    def __init__(self) -> None:
        self.optimizer = None
        self.loss = None
        self.metric_fns: dict = {}
        self.stop_training = False
        self.history = None

    def compile(self, optimizer: Any = "adam", loss: Any = "cross_entropy", metrics: list[str] | None = None,
                cuda_graph: bool = False):
        """Choose the optimizer, the loss and the metrics reported by fit/evaluate.

        ``cuda_graph=True`` (torch backend on CUDA): ``train_step`` captures forward + backward once per
        input shape and replays it as one CUDA graph (see ``model/cuda_graph.py``).
        """
        from ..losses import LOSSES
        from ..metrics import resolve
        from ..optim import OPTIMIZERS

        self.optimizer = _resolve("optimizer", optimizer, OPTIMIZERS, OPTIMIZER_ALIASES)
        self.loss = _resolve("loss", loss, LOSSES, LOSS_ALIASES)
        self.metric_fns = resolve(metrics)
        self.cuda_graph = bool(cuda_graph)
        return self

    def _require_compiled(self, what: str) -> None:
        if self.optimizer is None or self.loss is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer=..., loss=...) first")

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
        are touched. On an accelerator the loss is read back once, after the backward is queued (the
        step's only host-device synchronisation); with ``compile(cuda_graph=True)`` forward and backward
        replay as one CUDA graph.
        """
        self._require_compiled("train_step")
        self._check_lengths(x, y, "train_step")
        if self.__dict__.get("cuda_graph"):
            from .cuda_graph import graphed_train_step

            return graphed_train_step(self, x, y)
        loss = self._forward_loss(x, y)
        deferred = self.loss.__dict__.get("_deferred")  # a device array: read it once, after the backward
        value = loss if deferred else _finite_loss(loss)
        self._backward_loss()
        if deferred:
            value = _finite_loss(loss)
        self.optimizer.step(self.flat_params, self.flat_grads)
        return value

    def _forward_loss(self, x, y):
        """The forward pass and the loss of one batch, auxiliary losses included (a 0-d array on the
        device when the loss is sync-free)."""
        out = self._last_output = self.forward(x, training=True)
        loss = self.loss.forward(out, y)
        deferred = self.loss.__dict__.get("_deferred")
        for layer in self._aux_layers():
            loss = loss + layer.aux_loss_weight * (layer.aux_loss if deferred else float(layer.aux_loss))
        return loss

    def _backward_loss(self) -> None:
        """zero_grad, then the backward of the last ``_forward_loss`` into ``flat_grads``."""
        aux_layers = self._aux_layers()
        self.zero_grad()
        for layer in aux_layers:
            layer.aux_grad_scale = layer.aux_loss_weight
        try:
            self.backward(self.loss.backward(), input_grad=False)
        finally:
            for layer in aux_layers:
                layer.aux_grad_scale = 0.0

    # ----------------------------------------------------------------- loops
    def _batches(self, n: int, batch_size: int, shuffle: bool):
        order = nnrandom.generator().permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]

    @staticmethod
    def _take(data, idx, buffers: dict, key: str):
        """data[idx] gathered into a reused buffer (NumPy data), or a plain index otherwise."""
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
            initial_epoch: int = 0):
        """Train for ``epochs`` passes over (x, y) in mini-batches; returns a History.

        ``validation_split`` holds out the LAST fraction of (x, y) (before shuffling) as validation
        data, as Keras does; ``validation_data=(xv, yv)`` takes precedence. Logs per epoch: ``loss``,
        the metrics, and ``val_``-prefixed ones with validation data. ``verbose``: 0 silent, 1 a
        progress bar per epoch (loss/metrics, rate, ETA), 2 one line per epoch.
        """
        from ..callbacks import CallbackList, EpochLogger, History, ProgressBar

        self._require_compiled("fit")
        x, y = _as_data(x, "x"), _as_data(y, "y")
        self._check_lengths(x, y, "fit")
        if int(batch_size) < 1 or int(epochs) < 0:
            raise ValueError(f"fit: batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("fit: validation_data must be a pair (x_val, y_val)")
            validation_data = (_as_data(validation_data[0], "x_val"), _as_data(validation_data[1], "y_val"))
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
        history = History()
        cbs = [history, *(callbacks or [])]
        if verbose == 1:
            cbs.append(ProgressBar(epochs, math.ceil(n / batch_size)))
        elif verbose:
            cbs.append(EpochLogger(epochs))
        cb = CallbackList(cbs, self)
        self.history = history
        self.stop_training = False
        buffers: dict = {}
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            cb.on_epoch_begin(epoch)
            totals = _Totals(self.metric_fns)
            for step, idx in enumerate(self._batches(n, batch_size, shuffle)):
                cb.on_batch_begin(step)
                yb = self._take(y, idx, buffers, "y")
                loss = self.train_step(self._take(x, idx, buffers, "x"), yb)
                totals.add_loss(loss, len(idx))
                if self.metric_fns:
                    totals.add_metrics(self.ops.to_numpy(self._last_output), self.ops.to_numpy(yb))
                cb.on_batch_end(step, totals.means())
                if self.stop_training:
                    break
            logs = totals.means()
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                logs.update({f"val_{k}": v for k, v in val.items()})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        return history

    def evaluate(self, x, y, batch_size: int = 256, verbose: int = 0) -> dict:
        """Mean loss (and metrics) over (x, y) in inference mode: ``{"loss": ..., "accuracy": ...}``."""
        if self.loss is None:
            raise RuntimeError("evaluate: call model.compile(loss=...) first")
        x, y = _as_data(x, "x"), _as_data(y, "y")
        self._check_lengths(x, y, "evaluate")
        if len(x) == 0:
            raise ValueError("evaluate: x is empty")
        totals = _Totals(self.metric_fns)
        for start in range(0, len(x), int(batch_size)):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            out = self.forward(xb, training=False)
            totals.add_loss(self.loss.forward(out, yb), len(xb))
            if self.metric_fns:
                totals.add_metrics(self.ops.to_numpy(out), self.ops.to_numpy(yb))
        result = totals.means()
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in result.items()))
        return result

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Outputs for every sample of x in inference mode, as one NumPy array (no compile needed)."""
        x = _as_data(x, "x")
        if len(x) == 0:
            raise ValueError("predict: x is empty")
        outs = [np.array(self.ops.to_numpy(self.forward(x[start:start + batch_size], training=False)))
                for start in range(0, len(x), int(batch_size))]
        return np.concatenate(outs)


class _Totals:
    """Sample-weighted running means of the loss and the metrics over an epoch."""

    def __init__(self, metric_fns: dict):
        self.metric_fns = metric_fns
        self.sums = {"loss": 0.0, **{k: 0.0 for k in metric_fns}}
        self.counts = dict.fromkeys(self.sums, 0)

    def add_loss(self, loss: float, n: int) -> None:
        self.sums["loss"] += loss * n
        self.counts["loss"] += n

    def add_metrics(self, pred: np.ndarray, target: np.ndarray) -> None:
        for name, fn in self.metric_fns.items():
            s, c = fn(pred, np.asarray(target))
            self.sums[name] += s
            self.counts[name] += c

    def means(self) -> dict:
        return {k: self.sums[k] / max(self.counts[k], 1) for k in self.sums}


def _finite_loss(loss) -> float:
    """The loss as a Python float; FloatingPointError (the step is refused) when it is NaN or inf."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"train_step: the loss is {value} (NaN or inf in the inputs/targets, or the "
                                 "model diverged: lower the learning rate); the step was refused")
    return value


def _as_data(data, name: str):
    """Arrays (NumPy or torch) pass through; lists and other sequences become NumPy arrays."""
    if data is None:
        raise ValueError(f"{name} is required (got None)")
    if isinstance(data, np.ndarray) or type(data).__module__.startswith("torch"):
        return data
    return np.asarray(data)
