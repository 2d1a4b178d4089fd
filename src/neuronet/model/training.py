"""The Keras-style training loop: compile, train_step, fit, evaluate, predict."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ConfigError, NonFiniteError, ShapeError
from . import parallel, resume
from .data_adapter import DataList, adapt, as_array, split_validation
from .loss_scale import DynamicLossScale
from .totals import Totals
from .weighting import scale_rows, weighted_forward

__all__ = ["DataList", "LOSS_ALIASES", "OPTIMIZER_ALIASES", "Trainer"]


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


def _finite_loss(loss) -> float:
    """The loss as a Python float; NonFiniteError (a FloatingPointError: the step is refused) when it is NaN
    or inf."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteError(f"train_step: the loss is {value} (NaN or inf in the inputs/targets, or the "
                             "model diverged: lower the learning rate); the step was refused")
    return value


_FULL_PRECISION = contextlib.nullcontext()  # reusable: entering it does nothing


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

    def compile(self, optimizer: Any = "adam", loss: Any = "cross_entropy", metrics: list[str] | None = None,
                cuda_graph: bool = False, mixed_precision: str | None = None, workers: int | str = 1):
        """Choose the optimizer, the loss and the metrics reported by fit/evaluate.

        ``cuda_graph=True`` (torch backend on CUDA): ``train_step`` captures forward + backward once per
        input shape and replays it as one CUDA graph (see ``model/cuda_graph.py``).
        ``mixed_precision="bfloat16"`` or ``"float16"`` (torch backend, float32 model): the matrix
        products and convolutions multiply in that dtype, everything else stays float32, as
        ``torch.autocast``; float16 adds dynamic loss scaling, as ``torch.amp.GradScaler``
        (``model/loss_scale.py``).
        ``workers=N`` (or "auto"): every ``train_step`` (and ``fit``, unless it is given its own)
        splits the batch over N training replicas in threads, one per core (docs/parallel.md).
        """
        from ..losses import LOSSES
        from ..metrics import resolve
        from ..optim import OPTIMIZERS

        self.optimizer = _resolve("optimizer", optimizer, OPTIMIZERS, OPTIMIZER_ALIASES)
        self.optimizer.bind(self)  # parameter names for its groups, and which layers are frozen
        self.loss = _resolve("loss", loss, LOSSES, LOSS_ALIASES)
        self.metric_fns = resolve(metrics)
        self._compile_options(cuda_graph, mixed_precision, workers)
        return self

    def _compile_options(self, cuda_graph: bool, mixed_precision: str | None, workers: int | str) -> None:
        """The options every model's compile shares: the CUDA graph, mixed precision, the workers."""
        if mixed_precision not in (None, "bfloat16", "float16"):
            raise ConfigError(f"compile: mixed_precision must be None, 'bfloat16' or 'float16', got "
                              f"{mixed_precision!r}")
        if mixed_precision is not None and str(self.dtype) != "float32":
            raise ConfigError(f"compile(mixed_precision={mixed_precision!r}) needs a float32 model (the "
                              f"master weights), this one is {self.dtype}")
        self.cuda_graph = bool(cuda_graph)
        self.mixed_precision = mixed_precision
        self.loss_scale = DynamicLossScale() if mixed_precision == "float16" else None
        self.workers = parallel.check_training_workers(self, workers, math.inf, "compile")

    def _precision(self):
        """The context forward and backward run in: products in the compiled mixed precision, if any
        (without it, one shared no-op context: nothing is made or entered per step)."""
        mixed = self.__dict__.get("mixed_precision")
        return _FULL_PRECISION if mixed is None else self.ops.compute_in(mixed)

    def _require_compiled(self, what: str) -> None:
        if self.optimizer is None or self.loss is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer=..., loss=...) first")

    def _data(self, data, name: str):
        """``fit``/``evaluate``/``predict`` data as arrays (a model of several inputs takes a DataList)."""
        return as_array(data, name)

    def _totals(self) -> Totals:
        return Totals(self.metric_fns, self.ops)

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

    def train_step(self, x, y, sample_weight=None, *, workers: int | str | None = None) -> float:
        """Forward, loss, backward and one optimizer step on one batch; returns the loss.

        ``sample_weight`` (N,) scales each sample's loss (Keras: the loss is (1/N) sum_i w_i l_i).

        Layers with an ``aux_loss_weight`` add ``aux_loss_weight * aux_loss`` to the returned loss and,
        through ``set_aux_loss_scale`` (the weight for this backward, 0 after it), to the gradient. A
        non-finite loss (NaN or inf in the data, or a diverged model) raises FloatingPointError before
        the weights are touched. On an accelerator the loss is read back once, after the backward is
        queued (the step's only host-device synchronisation); with ``compile(cuda_graph=True)`` forward
        and backward replay as one CUDA graph. ``workers`` (default: compile's) splits the batch over
        that many training replicas in threads (``model/parallel.py``).
        """
        self._require_compiled("train_step")
        self._check_lengths(x, y, "train_step")
        if workers is None:
            workers = self.__dict__.get("workers", 1)  # (checked by compile)
        elif workers != 1:
            parallel.check_training_workers(self, workers, math.inf, "train_step")
        workers = parallel.resolve_workers(self, workers, x, y)
        if workers != 1:
            with parallel.blas_threads(self, workers):
                loss = self._gradients(x, y, sample_weight, workers)
            self._optimizer_step()  # on every thread again
            return loss
        if self.__dict__.get("cuda_graph"):
            from .cuda_graph import graphed_train_step

            if sample_weight is not None:
                raise ConfigError("train_step: sample_weight is not supported with compile(cuda_graph=True)")
            return graphed_train_step(self, x, y)
        loss = self._gradients(x, y, sample_weight)
        self._optimizer_step()
        return loss

    def _optimizer_step(self) -> None:
        """One optimizer step on ``flat_grads``; with float16 loss scaling the gradients are unscaled
        first, and a step whose gradients overflowed is skipped (counted in ``skipped_steps``)."""
        scale = self.__dict__.get("loss_scale")
        if scale is not None and not scale.unscale_(self.ops, self.flat_grads):
            self.skipped_steps += 1
            return
        self.optimizer.step(self.flat_params, self.flat_grads)

    def _gradients(self, x, y, sample_weight=None, workers: int = 1, finite: bool = True) -> float:
        """train_step without the optimizer step: the loss, with its gradient in ``flat_grads``; on
        ``workers`` replicas (inside ``parallel.blas_threads``) when more than 1. ``finite=False`` (a
        replica's shard, whose mean may be 0/0) returns a NaN or inf loss instead of raising."""
        if workers != 1:
            return _finite_loss(parallel.worker_pool(self, workers).gradients(x, y, sample_weight))
        loss = self._forward_loss(x, y, sample_weight)
        deferred = self.loss.__dict__.get("_deferred")  # a device array: read it once, after the backward
        if not deferred and finite:
            loss = _finite_loss(loss)
        self._backward_loss(sample_weight)
        if not finite:
            return float(loss)
        return _finite_loss(loss) if deferred else loss

    def _forward_loss(self, x, y, sample_weight=None):
        """The forward pass and the loss of one batch, auxiliary losses included (a 0-d array on the
        device when the loss is sync-free)."""
        with self._precision():
            out = self._last_output = self.forward(x, training=True)
        loss = self.loss.forward(out, y) if sample_weight is None else \
            weighted_forward(self.loss, out, y, sample_weight)
        deferred = self.loss.__dict__.get("_deferred")
        for layer in self._aux_layers():
            loss = loss + layer.aux_loss_weight * (layer.aux_loss if deferred else float(layer.aux_loss))
        return loss

    def _backward_loss(self, sample_weight=None) -> None:
        """zero_grad, then the backward of the last ``_forward_loss`` into ``flat_grads``."""
        aux_layers = self._aux_layers()
        self.zero_grad()
        scale = self.__dict__.get("loss_scale")
        factor = 1.0 if scale is None else scale.scale
        for layer in aux_layers:
            layer.set_aux_loss_scale(layer.aux_loss_weight * factor)
        try:
            grad = self.loss.backward()
            if factor != 1.0:  # float16: the gradients flow scaled, so that small ones do not underflow
                for g in grad if isinstance(grad, list) else [grad]:
                    g *= factor
            with self._precision():
                self.backward(grad if sample_weight is None else scale_rows(self.ops, grad, sample_weight),
                              input_grad=False)
        finally:
            for layer in aux_layers:
                layer.set_aux_loss_scale(0.0)

    # ----------------------------------------------------------------- loops
    def fit(self, x, y=None, epochs: int = 1, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, callbacks=None, verbose: int = 1,
            initial_epoch: int = 0, *, steps_per_epoch: int | None = None, class_weight: dict | None = None,
            sample_weight=None, workers=None, distributed: bool = False, on_nonfinite: str = "raise"):
        """Train for ``epochs`` passes over the data in mini-batches; returns a History.

        The data: arrays ``(x, y)`` (batched here, shuffled with ``shuffle``), or ``x`` alone as a
        source of ``(x, y)`` batches: ``nn.data.DataLoader``, a PyTorch DataLoader, a generator
        (``steps_per_epoch`` batches per epoch for an endless one). ``validation_split`` holds out the
        LAST fraction of array data (before shuffling), as Keras does; ``validation_data`` (a pair of
        arrays or a source) takes precedence. ``sample_weight`` (N,) and ``class_weight`` ({class:
        weight}) scale each sample's loss, as in Keras. Logs per epoch: ``loss``, the metrics, and
        ``val_``-prefixed ones with validation data. ``verbose``: 0 silent, 1 a progress bar per epoch
        (loss/metrics, rate, ETA), 2 one line per epoch. ``workers=N`` (or "auto"; default: compile's)
        splits each batch over N threads; ``distributed=True`` trains data-parallel over the ranks of an
        ``mpiexec``/``torchrun`` job, ``batch_size`` per rank (docs/parallel.md).

        Resuming: ``fit(..., initial_epoch=model.epoch)`` on a loaded model continues exactly where the
        saved run was, also inside an epoch (``model.position``). ``on_nonfinite``: what a batch with
        a NaN/inf loss does (its update is never applied): ``"raise"`` NonFiniteError (default),
        ``"skip"`` it, or skip it with a ``"warn"``ing; NaN/inf weights at an epoch's end are reported
        the same way (raise, or warn) (docs/reliability.md).
        """
        from ..callbacks import CallbackList, EpochLogger, History, ProgressBar

        self._require_compiled("fit")
        if int(batch_size) < 1 or int(epochs) < 0:
            raise ValueError(f"fit: batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
        batch_size = int(batch_size)
        x, y, sample_weight, validation = split_validation(x, y, sample_weight, validation_data,
                                                           validation_split, max(batch_size, 256),
                                                           as_data=self._data)
        data = adapt(x, y, batch_size=batch_size, shuffle=shuffle, steps=steps_per_epoch,
                     sample_weight=sample_weight, class_weight=class_weight, to_host=self.ops.name == "numpy",
                     as_data=self._data)
        workers = self.__dict__.get("workers", 1) if workers is None else workers
        run = parallel.TrainingRun(self, data, batch_size, workers, distributed)
        verbose, callbacks = run.verbose(verbose), run.callbacks(callbacks)
        history = History()
        cbs = [history, *(callbacks or [])]
        if verbose == 1:
            cbs.append(ProgressBar(epochs, run.steps(data)))
        elif verbose:
            cbs.append(EpochLogger(epochs))
        cb = CallbackList(cbs, self)
        self.history = history
        self.stop_training = False
        resume.check_mode(on_nonfinite, run.distributed)
        cursor = self._cursor = resume.EpochCursor(getattr(data, "n", -1), batch_size, bool(shuffle),
                                                   self.position, initial_epoch)
        self.position = None
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            totals = self._totals()
            cursor.begin(epoch, totals)
            cb.on_epoch_begin(epoch)
            batches = iter(run.epoch(data, epoch))  # lazy: a distributed run sizes each step as it goes
            first, complete = None, True
            for step, (xb, yb, wb) in enumerate(batches):
                if first is None:  # the shuffle is drawn by now: resume (or not) from here
                    first = cursor.first_step()
                if step < first:
                    continue
                cb.on_batch_begin(step)
                try:
                    loss = self.last_loss = run.train_step(xb, yb, wb)
                except NonFiniteError as err:  # the update was refused; the weights are unchanged
                    self.last_loss = math.nan
                    resume.nonfinite_step(err, on_nonfinite, epoch, step)
                    self.skipped_steps += 1
                else:
                    totals.add_loss(loss, len(xb), self.loss_parts())
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
            if validation is not None:
                val = self.evaluate(validation, distributed=run.distributed)
                logs.update({f"val_{k}": v for k, v in val.items()})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        return history

    def evaluate(self, x, y=None, batch_size: int = 256, verbose: int = 0, *, steps: int | None = None,
                 sample_weight=None, distributed: bool = False) -> dict:
        """Mean loss (and metrics) in inference mode: ``{"loss": ..., "accuracy": ...}``.

        The data: arrays ``(x, y)`` or a source of batches as in ``fit`` (``steps`` batches of it).
        Safe to call from several threads at once. ``distributed=True``: each rank evaluates its part of
        the arrays and the result is reduced over the ranks (every rank must call it).
        """
        if self.loss is None:
            raise RuntimeError("evaluate: call model.compile(loss=...) first")
        resume.check_input(x, "evaluate")  # NaN/inf in array input: an error, not NaN results
        data = adapt(x, y, batch_size=int(batch_size), steps=steps, sample_weight=sample_weight,
                     to_host=self.ops.name == "numpy", what="evaluate", as_data=self._data)
        data, comm = parallel.shard(data, distributed)
        totals = self._totals()
        with parallel.inference_model(self) as model:
            for xb, yb, wb in data.epoch():
                out = model.forward(xb, training=False)
                loss = model.loss.forward(out, yb) if wb is None else \
                    weighted_forward(model.loss, out, yb, wb)
                totals.add_loss(loss, len(xb), model.loss_parts())
                if self.metric_fns:
                    totals.add_metrics(out, yb)
        result = parallel.reduce_totals(totals, comm)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in result.items()))
        return result

    def predict(self, x, batch_size: int = 256, workers: int = 1, *, steps: int | None = None):
        """Outputs for every sample of x in inference mode, as one NumPy array (no compile needed); a list
        of arrays for a model with several outputs.

        ``x``: an array of samples (N, ...), or a source of batches (``x`` or ``(x, y)`` each). Safe to
        call from several threads at once; ``workers=N`` splits array data over N threads.
        """
        if self.built and isinstance(x, np.ndarray) and isinstance(self.input_shape, tuple) and \
                x.ndim == len(self.input_shape):
            raise ShapeError(f"predict: x has shape {tuple(x.shape)}, the dimensions of ONE sample; predict "
                             f"takes a batch of shape (N, {', '.join(map(str, self.input_shape))}): for a "
                             "single sample pass x[None] (or x.reshape(1, ...))")
        resume.check_input(x, "predict")  # NaN/inf in array input: an error, not NaN outputs
        data = adapt(x, batch_size=int(batch_size), steps=steps, to_host=self.ops.name == "numpy",
                     what="predict", needs_y=False, as_data=self._data)
        if workers != 1:
            from .data_adapter import ArrayBatches

            if not isinstance(data, ArrayBatches):
                raise ConfigError("predict(workers=N) splits arrays over threads; a source of batches "
                                  "runs with workers=1")
            return parallel.predict(self, data.arrays[0], int(batch_size), workers)
        with parallel.inference_model(self) as model:
            parts = [parallel.to_host(self.ops, model.forward(xb, training=False))
                     for xb, _, _ in data.epoch()]
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

    def _summary_table(self, rows: list[tuple], notes: list[str] = (), print_fn=print) -> str:
        """``summary()``'s text: ``rows`` (a header, then one per layer; the third column, the parameter
        counts, right-aligned) and the totals, ``notes`` and the backend below."""
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        cells = [[f"{cell:>{w}}" if c == 2 else f"{cell:<{w}}" for c, (cell, w) in enumerate(zip(r, widths,
                                                                                                 strict=True))]
                 for r in rows]
        line = "-" * (sum(widths) + 3 * (len(widths) - 1))
        text = [line, "   ".join(cells[0]).rstrip(), line, *("   ".join(c).rstrip() for c in cells[1:])]
        n, trainable = self.num_params(), self.num_trainable_params()
        text += [line, f"Total params: {n:,} ({n * self.dtype.itemsize / 2**20:.2f} MiB {self.dtype}; "
                       "gradients the same)",
                 f"Trainable params: {trainable:,}", f"Non-trainable params: {n - trainable:,}", *notes,
                 f"Backend: {self.ops.name} ({self.ops.device})", line]
        out = "\n".join(text)
        if print_fn is not None:
            print_fn(out)
        return out

    def loss_parts(self) -> tuple:
        """Each output's own loss after a loss forward (a model of several outputs), for the logs."""
        return ()

    def parameters(self) -> Iterator[Any]:
        """The parameter views, in ``named_parameters`` order (PyTorch's ``module.parameters()``)."""
        return (value for _, value in self.named_parameters())
