"""What ``fit``, ``evaluate`` and ``predict`` accept as data, reduced to one thing: epochs of batches.

Two kinds of input:

* arrays ``x, y`` (NumPy, torch tensors, nested lists; optional ``sample_weight``): batches are
  gathered (shuffled or in order) into buffers reused from step to step, so training on arrays
  allocates nothing per step;
* a source of batches: ``nn.data.DataLoader``, ``torch.utils.data.DataLoader``, a generator or any
  iterable yielding ``(x, y)`` or ``(x, y, sample_weight)`` (``predict`` also takes bare ``x``).
  Re-iterable sources start over each epoch; an endless generator needs ``steps_per_epoch``.

Each batch comes out as ``(x, y, w)`` where ``w`` is None or the per-sample loss weights
(``sample_weight`` times ``class_weight[y]``, as in Keras).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..core import random as nnrandom
from ..errors import ConfigError


class DataList:
    """Equal-length arrays batched together: the data of a model with several inputs (or outputs)."""

    def __init__(self, arrays: list):
        self.arrays = list(arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index) -> DataList:
        return DataList([a[index] for a in self.arrays])


class Batches:
    """One epoch of ``(x, y, w)`` batches per call to ``epoch()``; ``steps`` is its length when known."""

    steps: int | None = None

    def epoch(self) -> Iterator[tuple]:
        raise NotImplementedError


class ArrayBatches(Batches):
    """Mini-batches of aligned arrays, gathered into reused buffers (NumPy data) or indexed (tensors).

    ``views``: batches in order are views of the arrays' rows where those are C-contiguous, not copies
    (for inference, which only reads its input: ``predict`` on 256 MNIST images copied 800 KB a call).
    Training always gets copies: a layer may write over its input (``Dropout(inplace=True)``).
    """

    def __init__(self, arrays: list, batch_size: int, shuffle: bool, class_weight=None, views: bool = False):
        self.arrays, self.batch_size, self.shuffle = arrays, batch_size, shuffle
        self.class_weight, self.views = class_weight, views
        self.n = len(arrays[0])
        self.steps = -(-self.n // batch_size)
        self.buffers: dict = {}

    def batches(self) -> Iterator[np.ndarray]:
        """The sample indices of each batch (the permutation is drawn now, not on first iteration)."""
        order = nnrandom.generator().permutation(self.n) if self.shuffle else np.arange(self.n)
        return (order[start:start + self.batch_size] for start in range(0, self.n, self.batch_size))

    def epoch(self, batches=None) -> Iterator[tuple]:
        """The epoch's ``(x, y, w)``; ``batches``: other index arrays to gather (a rank's share)."""
        x, y, w = self.arrays
        in_order = batches is None and self.views and not self.shuffle
        for idx in self.batches() if batches is None else batches:
            if in_order:
                idx = slice(int(idx[0]), int(idx[-1]) + 1)
            yb = None if y is None else self._take(y, idx, "y")
            wb = None if w is None else self._take(w, idx, "w")
            yield self._take(x, idx, "x"), yb, weights(yb, wb, self.class_weight)

    def part(self, start: int, stop: int) -> ArrayBatches:
        """The same batching over samples [start, stop) only (a rank's share)."""
        arrays = [None if a is None else a[start:stop] for a in self.arrays]
        return ArrayBatches(arrays, self.batch_size, self.shuffle, self.class_weight, self.views)

    def _take(self, data, idx, key: str):
        """data[idx] gathered into a reused buffer (NumPy data), or a plain index otherwise (a slice
        ``idx``: a view where the rows are C-contiguous)."""
        if isinstance(data, DataList):
            return DataList([self._take(d, idx, f"{key}{i}") for i, d in enumerate(data.arrays)])
        if not isinstance(data, np.ndarray) or (isinstance(idx, slice) and data.flags.c_contiguous):
            return data[idx]
        if isinstance(idx, slice):
            idx = np.arange(idx.start, idx.stop)
        buf = self.buffers.get(key)
        if buf is None or buf.shape[0] < len(idx) or buf.dtype != data.dtype:
            buf = self.buffers[key] = np.empty((max(len(idx), 1), *data.shape[1:]), data.dtype)
        out = buf[:len(idx)]
        np.take(data, idx, axis=0, out=out, mode="clip")  # (our own indices: "raise" buffers the output)
        return out


class SourceBatches(Batches):
    """Batches from an iterable source: each epoch a new pass, or ``steps`` batches of one long pass."""

    def __init__(self, source, steps: int | None, to_host: bool, class_weight=None, what: str = "fit"):
        self.source, self.to_host, self.class_weight, self.what = source, to_host, class_weight, what
        self.fixed_steps = steps
        self.steps = steps if steps is not None else (len(source) if hasattr(source, "__len__") else None)
        self._running: Iterator | None = None

    def epoch(self) -> Iterator[tuple]:
        if self.fixed_steps is None:
            batches = iter(self.source)
        else:  # Keras: steps_per_epoch batches, continuing the same pass (restarted when it ends)
            batches = itertools.islice(self._endless(), self.fixed_steps)
        count = 0
        for batch in batches:
            count += 1
            yield self._unpack(batch)
        if count == 0:
            raise ConfigError(f"{self.what}: the data produced no batches (a generator is used up after "
                              "one pass: pass a re-iterable such as nn.data.DataLoader, or steps_per_epoch "
                              "for an endless generator)")

    def _endless(self) -> Iterator:
        while True:
            if self._running is None:
                self._running = iter(self.source)
            for batch in self._running:  # noqa: UP028 - `yield from` would close the user's generator
                yield batch                # when an epoch's islice lets go of this one
            restart = iter(self.source)
            if restart is self._running:  # an iterator, not a re-iterable: it is used up
                return
            self._running = restart

    def _unpack(self, batch) -> tuple:
        if not isinstance(batch, (tuple, list)):
            batch = (batch,)
        if not 1 <= len(batch) <= 3:
            raise ConfigError(f"{self.what}: each batch must be x, (x, y) or (x, y, sample_weight), got a "
                              f"{type(batch).__name__} of {len(batch)} items")
        x, y, w = (*batch, None, None)[:3]
        if self.to_host:
            x, y, w = _host(x), _host(y), _host(w)
        return x, y, weights(y, None if w is None else np.asarray(_host(w), np.float64), self.class_weight)


def weights(y, sample_weight: np.ndarray | None, class_weight: dict | None) -> np.ndarray | None:
    """Per-sample loss weights: ``sample_weight`` times ``class_weight`` of each sample's class."""
    if class_weight is None:
        return sample_weight
    labels = np.asarray(_host(y))
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot or probabilities
        labels = labels.argmax(axis=1)
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] != 1:
        raise ConfigError(f"class_weight: needs one class per sample, got targets of shape {labels.shape}")
    table = np.ones(max(max(class_weight) + 1, int(labels.max(initial=0)) + 1))
    for cls, value in class_weight.items():
        table[cls] = value
    w = table[labels[:, 0].astype(np.int64)]
    return w if sample_weight is None else w * sample_weight


def is_source(x, y) -> bool:
    """Whether ``x`` is a source of batches rather than an array of samples (with targets ``y``)."""
    if isinstance(x, (np.ndarray, Batches)) or _is_tensor(x):
        return isinstance(x, Batches)
    if isinstance(x, (list, tuple)):  # samples when targets come separately, batches otherwise
        return y is None
    return hasattr(x, "__iter__") or hasattr(x, "__next__")


def adapt(x, y=None, *, batch_size: int, shuffle: bool = False, steps: int | None = None,
          sample_weight=None, class_weight: dict | None = None, to_host: bool = True,
          what: str = "fit", needs_y: bool = True, as_data=None) -> Batches:
    """The ``Batches`` for ``x`` (and ``y``, ``sample_weight``) in ``fit``, ``evaluate`` or ``predict``.

    ``to_host``: convert torch tensors coming from a source to NumPy (the model is on NumPy).
    ``as_data(data, name)``: how the model takes arrays (a model of several inputs: a ``DataList``).
    """
    as_data = as_data or as_array
    if steps is not None and (isinstance(steps, bool) or int(steps) < 1):
        raise ConfigError(f"{what}: steps_per_epoch must be an integer >= 1, got {steps!r}")
    if class_weight is not None and not isinstance(class_weight, dict):
        raise ConfigError(f"{what}: class_weight must be a dict {{class index: weight}}, got "
                          f"{type(class_weight).__name__}")
    if isinstance(x, Batches):
        return x
    if is_source(x, y if needs_y else object()):
        if y is not None or sample_weight is not None:
            raise ConfigError(f"{what}: x is a source of batches (a {type(x).__name__}); it yields the "
                              "targets and sample weights itself, so y and sample_weight must be None")
        return SourceBatches(x, steps, to_host, class_weight, what)
    if steps is not None:
        raise ConfigError(f"{what}: steps_per_epoch/steps apply to a source of batches; on arrays an "
                          "epoch is one pass over them")
    x = as_data(x, "x")
    if needs_y:
        y = as_data(y, "y")
    arrays = [x, y, None if sample_weight is None else np.asarray(_host(sample_weight), np.float64)]
    for name, a in zip(("y", "sample_weight"), arrays[1:], strict=True):
        if a is not None and len(a) != len(x):
            raise ValueError(f"{what}: x has {len(x)} samples but {name} has {len(a)}")
    if len(x) == 0:
        raise ValueError(f"{what}: x is empty")
    return ArrayBatches(arrays, int(batch_size), shuffle, class_weight, views=what != "fit")


def split_validation(x, y, sample_weight, validation_data, validation_split: float, batch_size: int,
                     what: str = "fit", as_data=None):
    """(x, y, sample_weight, validation Batches or None): ``validation_data`` (arrays ``(xv, yv)`` or
    a source), else the LAST ``validation_split`` fraction of array data (before shuffling), as Keras."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"{what}: validation_split must be in [0, 1), got {validation_split}")
    if validation_data is not None:
        if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3) and \
                not is_source(validation_data[0], validation_data[1]):
            weight = validation_data[2] if len(validation_data) == 3 else None
            return x, y, sample_weight, adapt(*validation_data[:2], batch_size=batch_size, as_data=as_data,
                                              sample_weight=weight, what=f"{what} (validation_data)")
        if isinstance(validation_data, (tuple, list)) or not is_source(validation_data, None):
            raise ValueError(f"{what}: validation_data must be a pair (x_val, y_val) or a source of batches")
        return x, y, sample_weight, adapt(validation_data, batch_size=batch_size,
                                          what=f"{what} (validation_data)")
    if not validation_split:
        return x, y, sample_weight, None
    if is_source(x, y):
        raise ConfigError(f"{what}: validation_split needs arrays; with a source of batches pass "
                          "validation_data")
    as_data = as_data or as_array
    x, y = as_data(x, "x"), as_data(y, "y")
    cut = int(len(x) * (1.0 - validation_split))
    if cut == 0 or cut == len(x):
        raise ValueError(f"{what}: validation_split={validation_split} of {len(x)} samples leaves an "
                         "empty training or validation set")
    w = None if sample_weight is None else np.asarray(_host(sample_weight), np.float64)
    val = adapt(x[cut:], y[cut:], batch_size=batch_size, sample_weight=None if w is None else w[cut:],
                what=what, as_data=as_data)
    return x[:cut], y[:cut], None if w is None else w[:cut], val


def as_array(data, name: str):
    """Arrays (NumPy or torch) pass through; lists and other sequences become NumPy arrays."""
    if data is None:
        raise ValueError(f"{name} is required (got None)")
    if isinstance(data, np.ndarray) or _is_tensor(data):
        return data
    return np.asarray(data)


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "shape")


def _host(x: Any):
    """A torch tensor as a NumPy array (for a model on NumPy); anything else unchanged."""
    if _is_tensor(x) and hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x
