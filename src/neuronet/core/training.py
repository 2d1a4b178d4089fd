"""The Keras-style training loop: compile, train_step, fit, evaluate, predict."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import random as nnrandom


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
    "nll": "NLLLoss", "bce": "BCELoss", "binary_crossentropy": "BCELoss", "bce_with_logits": "BCEWithLogitsLoss",
    "huber": "HuberLoss", "l1": "L1Loss", "mae": "L1Loss",
}


class Trainer:
    """Mixed into Sequential: everything that drives forward/backward/step over data."""

    def __init__(self) -> None:
        self.optimizer = None
        self.loss = None
        self.metric_fns: dict = {}
        self.stop_training = False
        self.history = None

    def compile(self, optimizer: Any = "adam", loss: Any = "cross_entropy", metrics: list[str] | None = None):
        """Choose the optimizer, the loss and the metrics reported by fit/evaluate."""
        from ..losses import LOSSES
        from ..metrics import resolve
        from ..optim import OPTIMIZERS

        self.optimizer = _resolve("optimizer", optimizer, OPTIMIZERS, OPTIMIZER_ALIASES)
        self.loss = _resolve("loss", loss, LOSSES, LOSS_ALIASES)
        self.metric_fns = resolve(metrics)
        return self

    def _require_compiled(self, what: str) -> None:
        if self.optimizer is None or self.loss is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer=..., loss=...) first")

    @staticmethod
    def _check_lengths(x, y, what: str) -> None:
        if y is not None and len(x) != len(y):
            raise ValueError(f"{what}: x has {len(x)} samples but y has {len(y)}")

    # ----------------------------------------------------------------- one step
    def _aux_layers(self):
        return [layer for _, layer in self.named_layers() if getattr(layer, "aux_loss_weight", 0.0)]

    def train_step(self, x, y) -> float:
        """Forward, loss, backward and one optimizer step on one batch; returns the loss.

        A non-finite loss (NaN or inf in the data or a diverged model) raises FloatingPointError
        before the weights are touched.
        """
        self._require_compiled("train_step")
        self._check_lengths(x, y, "train_step")
        out = self._last_output = self.forward(x, training=True)
        loss = self.loss.forward(out, y)
        aux_layers = self._aux_layers()
        for layer in aux_layers:  # e.g. MoE load balancing: added to the loss and to its gradient
            loss += layer.aux_loss_weight * layer.aux_loss
            layer.aux_grad_scale = layer.aux_loss_weight
        if not math.isfinite(loss):
            for layer in aux_layers:
                layer.aux_grad_scale = 0.0
            raise FloatingPointError(f"train_step: the loss is {loss} (NaN or inf in the inputs/targets, or the "
                                     "model diverged: lower the learning rate); the step was refused")
        self.zero_grad()
        self.backward(self.loss.backward(), input_grad=False)
        for layer in aux_layers:
            layer.aux_grad_scale = 0.0
        self.optimizer.step(self.flat_params, self.flat_grads)
        return loss

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
        shape = (len(idx), *data.shape[1:])
        buf = buffers.get(key)
        if buf is None or buf.shape[0] < len(idx) or buf.dtype != data.dtype:
            buf = buffers[key] = np.empty((max(len(idx), 1), *data.shape[1:]), data.dtype)
        out = buf[:len(idx)].reshape(shape)
        np.take(data, idx, axis=0, out=out)
        return out

    def fit(self, x, y=None, epochs: int = 1, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, callbacks=None, verbose: int = 1,
            initial_epoch: int = 0):
        """Train for ``epochs`` passes over (x, y); returns a History (``history.history[key]``)."""
        from ..callbacks import CallbackList, History, ProgressBar

        self._require_compiled("fit")
        self._check_lengths(x, y, "fit")
        if batch_size < 1 or epochs < 0:
            raise ValueError(f"fit: batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
        if validation_data is None and validation_split:
            cut = int(len(x) * (1.0 - validation_split))
            validation_data = (x[cut:], y[cut:])
            x, y = x[:cut], y[:cut]
        n = len(x)
        steps = math.ceil(n / batch_size)
        history = History()
        cbs = [history, *(callbacks or [])]
        if verbose:
            cbs.append(ProgressBar(epochs, steps))
        cb = CallbackList(cbs, self)
        self.history = history
        self.stop_training = False
        buffers: dict = {}
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            cb.on_epoch_begin(epoch)
            totals = {"loss": 0.0, **{k: 0.0 for k in self.metric_fns}}
            counts = {"loss": 0, **{k: 0 for k in self.metric_fns}}
            for step, idx in enumerate(self._batches(n, batch_size, shuffle)):
                cb.on_batch_begin(step)
                xb = self._take(x, idx, buffers, "x")
                yb = self._take(y, idx, buffers, "y")
                loss = self.train_step(xb, yb)
                totals["loss"] += loss * len(idx)
                counts["loss"] += len(idx)
                if self.metric_fns:
                    self._accumulate_metrics(self.ops.to_numpy(self._last_output), yb, totals, counts)
                cb.on_batch_end(step, {k: totals[k] / max(counts[k], 1) for k in totals})
                if self.stop_training:
                    break
            logs = {k: totals[k] / max(counts[k], 1) for k in totals}
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                logs.update({f"val_{k}": v for k, v in val.items()})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        return history

    def _accumulate_metrics(self, pred, target, totals, counts) -> None:
        target = self.ops.to_numpy(target) if not isinstance(target, np.ndarray) else target
        for name, fn in self.metric_fns.items():
            s, c = fn(pred, target)
            totals[name] += s
            counts[name] += c

    def evaluate(self, x, y, batch_size: int = 256, verbose: int = 0) -> dict:
        """Mean loss (and metrics) over (x, y) in inference mode."""
        if self.loss is None:
            raise RuntimeError("evaluate: call model.compile(loss=...) first")
        self._check_lengths(x, y, "evaluate")
        totals = {"loss": 0.0, **{k: 0.0 for k in self.metric_fns}}
        counts = {"loss": 0, **{k: 0 for k in self.metric_fns}}
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            out = self.forward(xb, training=False)
            totals["loss"] += self.loss.forward(out, yb) * len(xb)
            counts["loss"] += len(xb)
            if self.metric_fns:
                self._accumulate_metrics(self.ops.to_numpy(out), np.asarray(self.ops.to_numpy(yb)), totals, counts)
        return {k: totals[k] / max(counts[k], 1) for k in totals}

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Outputs for every sample of x in inference mode, as one NumPy array."""
        outs = []
        for start in range(0, len(x), batch_size):
            out = self.forward(x[start:start + batch_size], training=False)
            outs.append(np.array(self.ops.to_numpy(out)))
        if not outs:
            raise ValueError("predict: x is empty")
        return np.concatenate(outs)
