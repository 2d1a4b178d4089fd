"""The Keras-style training loop: compile, train_step, fit, evaluate, predict."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ShapeError
from .data_adapter import adapt, split_validation
from .weighting import scale_rows, weighted_forward


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
    def _aux_layers(self) -> list:
        """Sub-layers that add an auxiliary loss (``aux_loss_weight``, e.g. MoE load balancing)."""
        cache = self.__dict__.get("_aux_cache")
        if cache is None or cache[0] is not self.flat_params:  # rebuilt or moved: look again
            cache = self._aux_cache = (self.flat_params, [layer for _, layer in self.named_layers()
                                                          if hasattr(layer, "aux_loss_weight")])
        return cache[1]

    def train_step(self, x, y, sample_weight=None) -> float:
        """Forward, loss, backward and one optimizer step on one batch; returns the loss.

        ``sample_weight`` (N,) scales each sample's loss (Keras: the loss is (1/N) sum_i w_i l_i).

        Layers with an ``aux_loss_weight`` add ``aux_loss_weight * aux_loss`` to the returned loss and,
        through ``aux_grad_scale`` (set only during this backward), to the gradient. A non-finite loss
        (NaN or inf in the data, or a diverged model) raises FloatingPointError before the weights
        are touched.
        """
        self._require_compiled("train_step")
        self._check_lengths(x, y, "train_step")
        out = self._last_output = self.forward(x, training=True)
        loss = self.loss.forward(out, y) if sample_weight is None else \
            weighted_forward(self.loss, out, y, sample_weight)
        aux_layers = self._aux_layers()
        for layer in aux_layers:
            loss += layer.aux_loss_weight * float(layer.aux_loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"train_step: the loss is {loss} (NaN or inf in the inputs/targets, or "
                                     "the model diverged: lower the learning rate); the step was refused")
        self.zero_grad()
        for layer in aux_layers:
            layer.aux_grad_scale = layer.aux_loss_weight
        try:
            grad = self.loss.backward()
            self.backward(grad if sample_weight is None else scale_rows(self.ops, grad, sample_weight),
                          input_grad=False)
        finally:
            for layer in aux_layers:
                layer.aux_grad_scale = 0.0
        self.optimizer.step(self.flat_params, self.flat_grads)
        return loss

    # ----------------------------------------------------------------- loops
    def fit(self, x, y=None, epochs: int = 1, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, callbacks=None, verbose: int = 1,
            initial_epoch: int = 0, *, steps_per_epoch: int | None = None, class_weight: dict | None = None,
            sample_weight=None):
        """Train for ``epochs`` passes over the data in mini-batches; returns a History.

        The data: arrays ``(x, y)`` (batched here, shuffled with ``shuffle``), or ``x`` alone as a
        source of ``(x, y)`` batches: ``nn.data.DataLoader``, a PyTorch DataLoader, a generator
        (``steps_per_epoch`` batches per epoch for an endless one). ``validation_split`` holds out the
        LAST fraction of array data (before shuffling), as Keras does; ``validation_data`` (a pair of
        arrays or a source) takes precedence. ``sample_weight`` (N,) and ``class_weight`` ({class:
        weight}) scale each sample's loss, as in Keras. Logs per epoch: ``loss``, the metrics, and
        ``val_``-prefixed ones with validation data. ``verbose``: 0 silent, 1 a progress bar per epoch
        (loss/metrics, rate, ETA), 2 one line per epoch.
        """
        from ..callbacks import CallbackList, EpochLogger, History, ProgressBar

        self._require_compiled("fit")
        if int(batch_size) < 1 or int(epochs) < 0:
            raise ValueError(f"fit: batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
        batch_size = int(batch_size)
        x, y, sample_weight, validation = split_validation(x, y, sample_weight, validation_data,
                                                           validation_split, max(batch_size, 256))
        data = adapt(x, y, batch_size=batch_size, shuffle=shuffle, steps=steps_per_epoch,
                     sample_weight=sample_weight, class_weight=class_weight, to_host=self.ops.name == "numpy")
        history = History()
        cbs = [history, *(callbacks or [])]
        if verbose == 1:
            cbs.append(ProgressBar(epochs, data.steps))
        elif verbose:
            cbs.append(EpochLogger(epochs))
        cb = CallbackList(cbs, self)
        self.history = history
        self.stop_training = False
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            cb.on_epoch_begin(epoch)
            totals = _Totals(self.metric_fns)
            for step, (xb, yb, wb) in enumerate(data.epoch()):
                cb.on_batch_begin(step)
                loss = self.train_step(xb, yb, wb)
                totals.add_loss(loss, len(xb))
                if self.metric_fns:
                    totals.add_metrics(self.ops.to_numpy(self._last_output), self.ops.to_numpy(yb))
                cb.on_batch_end(step, totals.means())
                if self.stop_training:
                    break
            logs = totals.means()
            if validation is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(validation).items()})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        return history

    def evaluate(self, x, y=None, batch_size: int = 256, verbose: int = 0, *, steps: int | None = None,
                 sample_weight=None) -> dict:
        """Mean loss (and metrics) in inference mode: ``{"loss": ..., "accuracy": ...}``.

        The data: arrays ``(x, y)`` or a source of batches as in ``fit`` (``steps`` batches of it).
        """
        if self.loss is None:
            raise RuntimeError("evaluate: call model.compile(loss=...) first")
        data = adapt(x, y, batch_size=int(batch_size), steps=steps, sample_weight=sample_weight,
                     to_host=self.ops.name == "numpy", what="evaluate")
        totals = _Totals(self.metric_fns)
        for xb, yb, wb in data.epoch():
            out = self.forward(xb, training=False)
            loss = self.loss.forward(out, yb) if wb is None else weighted_forward(self.loss, out, yb, wb)
            totals.add_loss(loss, len(xb))
            if self.metric_fns:
                totals.add_metrics(self.ops.to_numpy(out), self.ops.to_numpy(yb))
        result = totals.means()
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in result.items()))
        return result

    def predict(self, x, batch_size: int = 256, *, steps: int | None = None) -> np.ndarray:
        """Outputs for every sample of x in inference mode, as one NumPy array (no compile needed).

        ``x``: an array of samples (N, ...), or a source of batches (``x`` or ``(x, y)`` each).
        """
        if self.built and len(getattr(x, "shape", ())) == len(self.input_shape):
            raise ShapeError(f"predict: x has shape {tuple(x.shape)}, the dimensions of ONE sample; predict "
                             f"takes a batch of shape (N, {', '.join(map(str, self.input_shape))}): for a "
                             "single sample pass x[None] (or x.reshape(1, ...))")
        data = adapt(x, batch_size=int(batch_size), steps=steps, to_host=self.ops.name == "numpy",
                     what="predict", needs_y=False)
        outs = [np.array(self.ops.to_numpy(self.forward(xb, training=False))) for xb, _, _ in data.epoch()]
        return np.concatenate(outs)

    def parameters(self) -> Iterator[Any]:
        """The parameter views, in ``named_parameters`` order (PyTorch's ``module.parameters()``)."""
        return (value for _, value in self.named_parameters())


class _Totals:
    """The epoch's sample-weighted mean loss and its metric accumulators."""

    def __init__(self, metric_fns: dict):
        self.metrics = {name: make() for name, make in metric_fns.items()}
        self.loss_sum, self.loss_count = 0.0, 0

    def add_loss(self, loss: float, n: int) -> None:
        self.loss_sum += loss * n
        self.loss_count += n

    def add_metrics(self, pred: np.ndarray, target: np.ndarray) -> None:
        for metric in self.metrics.values():
            metric.update(pred, np.asarray(target))

    def means(self) -> dict:
        return {"loss": self.loss_sum / max(self.loss_count, 1),
                **{name: metric.result() for name, metric in self.metrics.items()}}
