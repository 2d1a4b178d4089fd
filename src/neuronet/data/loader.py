"""Dataset and DataLoader: shuffled mini-batches gathered ahead of time on a background thread.

    train = nn.data.Dataset(x, y)                       # arrays, np.memmap arrays, or anything indexable
    loader = nn.data.DataLoader(train, batch_size=64, shuffle=True)
    model.fit(loader, epochs=5)

While the model computes on one batch, a thread gathers the next ones (``prefetch`` of them) into
fresh arrays: copying rows out of a ``np.memmap`` (a file larger than memory, read page by page) or
running a per-sample ``__getitem__`` then overlaps with training instead of adding to it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..core import random as nnrandom
from ..errors import ConfigError, ShapeError


class Dataset:
    """Aligned arrays indexed together (PyTorch: ``TensorDataset``): ``dataset[idx] -> (x[idx], y[idx])``.

    Args:
        *arrays: arrays with the same first dimension: NumPy arrays, ``np.memmap`` views of files
            larger than memory (only the rows of a batch are read), or torch CPU tensors.
    """

    def __init__(self, *arrays: Any):
        if not arrays:
            raise ConfigError("Dataset: give at least one array")
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ShapeError(f"Dataset: arrays have different lengths {lengths}")
        self.arrays = tuple(a.numpy() if hasattr(a, "numpy") and not isinstance(a, np.ndarray) else a
                            for a in arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, idx) -> tuple:
        """The rows ``idx`` (an int, a slice or an index array) of every array."""
        return tuple(a[idx] for a in self.arrays)


class DataLoader:
    """Mini-batches of a dataset, shuffled each epoch, prepared ahead on a background thread.

    Args:
        dataset: a ``Dataset`` (rows gathered a batch at a time), or any object with ``__len__`` and a
            per-sample ``__getitem__(i)`` returning an array or a tuple of arrays (a PyTorch-style
            map dataset; its samples are stacked).
        batch_size (int): samples per batch. Default: 32.
        shuffle (bool): a new order every epoch, from ``nn.manual_seed``'s generator or ``seed``.
            Default: ``False``.
        drop_last (bool): skip the last, smaller batch. Default: ``False``.
        prefetch (int): batches prepared ahead by the background thread; 0 prepares each batch when it
            is asked for, on the calling thread. Default: 2.
        seed (int, optional): a generator of its own for the shuffling. Default: the global one.

    Iterating gives one epoch of tuples ``(x, y)`` (as many arrays as the dataset holds); ``len`` is
    the number of batches. Rows of each batch are read in increasing order (the batch itself keeps the
    shuffled order), which a memory-mapped file reads fastest.
    """

    def __init__(self, dataset: Any, batch_size: int = 32, shuffle: bool = False, drop_last: bool = False,
                 prefetch: int = 2, seed: int | None = None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ConfigError(f"DataLoader: dataset must have __len__ and __getitem__, got "
                              f"{type(dataset).__name__}")
        if isinstance(batch_size, bool) or int(batch_size) < 1 or int(prefetch) < 0:
            raise ConfigError(f"DataLoader: batch_size must be >= 1 and prefetch >= 0, got {batch_size}, "
                              f"{prefetch}")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), bool(shuffle)
        self.drop_last, self.prefetch = bool(drop_last), int(prefetch)
        self._rng = None if seed is None else np.random.default_rng(seed)

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _index_batches(self) -> Iterator[np.ndarray]:
        n = len(self.dataset)
        order = (self._rng or nnrandom.generator()).permutation(n) if self.shuffle else np.arange(n)
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]

    def _gather(self, idx: np.ndarray) -> tuple:
        if isinstance(self.dataset, Dataset):
            if not self.shuffle:  # a contiguous range: a slice reads it straight from the file
                return tuple(np.array(a) for a in self.dataset[idx[0]:idx[-1] + 1])
            ascending = np.argsort(idx, kind="stable")
            rows = self.dataset[idx[ascending]]
            back = np.empty_like(ascending)
            back[ascending] = np.arange(len(idx))
            return tuple(np.take(np.asarray(r), back, axis=0) for r in rows)
        return collate([self.dataset[int(i)] for i in idx])

    def __iter__(self) -> Iterator[tuple]:
        batches = self._index_batches()  # drawn now: the shuffle order does not depend on the thread
        if self.prefetch == 0:
            return (self._gather(idx) for idx in batches)
        return _prefetched(self._gather, list(batches), self.prefetch)


def collate(samples: Sequence[Any]) -> tuple:
    """Per-sample items (arrays, numbers, or tuples of them) stacked into a tuple of batch arrays."""
    if isinstance(samples[0], (tuple, list)):
        return tuple(np.stack([np.asarray(s[k]) for s in samples]) for k in range(len(samples[0])))
    return (np.stack([np.asarray(s) for s in samples]),)


_DONE = object()


def _prefetched(gather, batches: list, depth: int) -> Iterator[tuple]:
    """``gather(idx)`` for each batch, computed up to ``depth`` ahead on a daemon thread.

    An exception in the thread is raised in the consumer; a consumer that stops early (``break``,
    an error in training) stops the thread at its next batch.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for idx in batches:
                if stop.is_set():
                    return
                slots.put(gather(idx))
            slots.put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            slots.put(e)

    thread = threading.Thread(target=work, name="neuronet-DataLoader", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
