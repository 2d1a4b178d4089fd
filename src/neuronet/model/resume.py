"""Exact resume of ``fit`` and its guard rails against non-finite numbers.

``EpochCursor`` follows ``fit`` through an epoch: which epoch, how many batches are done, the global
generator's state when the epoch began and the running loss/metric sums. ``model.save`` stores it
(``training.position`` in ``.nnet``) when it is called inside an epoch; ``fit`` given the saved
epoch as ``initial_epoch`` puts the generator back to the epoch's start, replays ``on_epoch_begin``
and the shuffle (so the permutation and any augmentation are the same), puts the generator back
to where the save happened and continues with the next batch: on the NumPy backend the result is
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..core import random as nnrandom
from ..errors import ConfigError, NonFiniteError

ON_NONFINITE = ("raise", "skip", "warn")


class EpochCursor:
    """Where ``fit`` is inside the current epoch (ints and references only: updating it allocates nothing)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, pending: dict | None, initial_epoch: int):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.epoch = -1
        self.step = 0
        self.epoch_rng_state: dict | None = None
        self.totals = None
        if pending is not None and pending["epoch"] != initial_epoch:
            warnings.warn(f"fit: the model was saved inside epoch {pending['epoch']}, but fit starts at "
                          f"epoch {initial_epoch}; pass initial_epoch=model.epoch to resume exactly",
                          RuntimeWarning, stacklevel=3)
            pending = None
        self._pending = pending
        # load() put the generator where the save happened; keep that state for the resumed batch
        self._resume_rng = nnrandom.generator().bit_generator.state if pending is not None else None

    def begin(self, epoch: int, totals) -> None:
        """Before ``on_epoch_begin``: remember (or, resuming, restore) the generator's state."""
        self.epoch, self.step, self.totals = epoch, 0, totals
        bitgen = nnrandom.generator().bit_generator
        if self._resumes(epoch):
            bitgen.state = self._pending["epoch_rng_state"]
        self.epoch_rng_state = bitgen.state

    def first_step(self) -> int:
        """After the shuffle: the batch to start at (0, or where the saved run stopped)."""
        if not self._resumes(self.epoch):
            return 0
        pending, self._pending = self._pending, None
        nnrandom.generator().bit_generator.state = self._resume_rng
        self.totals.load_state(pending["totals"])
        self.step = pending["step"]
        return self.step

    def _resumes(self, epoch: int) -> bool:
        pending = self._pending
        if pending is None or pending["epoch"] != epoch:
            return False
        same = (pending["samples"], pending["batch_size"], pending["shuffle"]) == \
            (self.n, self.batch_size, self.shuffle) and set(pending["totals"]) == set(self.totals.state())
        if not same:
            warnings.warn(f"fit: the saved run stopped inside epoch {epoch} with {pending['samples']} "
                          "samples, "
                          f"batch_size {pending['batch_size']}, shuffle={pending['shuffle']} and logs "
                          f"{sorted(pending['totals'])}; this run differs, so epoch {epoch} starts over",
                          RuntimeWarning, stacklevel=4)
            self._pending = None
        return same

    def position(self) -> dict | None:
        """The JSON ``training.position`` of a save made now, or None between epochs (and for a source
        of batches that is not an array: its position cannot be replayed)."""
        if self.step == 0 or self.totals is None or self.n < 0:
            return None
        return {"epoch": self.epoch, "step": self.step, "samples": self.n, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "epoch_rng_state": self.epoch_rng_state,
                "totals": self.totals.state()}

    def finish(self) -> None:
        """The epoch ran to its end: there is no position inside it to resume from."""
        self.step, self.totals = 0, None


def merged_history(saved: dict, history) -> dict:
    """The saved run's per-epoch logs up to where this run's ``History`` starts, then this run's."""
    if history is None or not history.epoch:
        return {k: list(v) for k, v in saved.items()}
    first, done = history.epoch[0], len(history.epoch)
    keep = min(first, min((len(v) for v in saved.values()), default=0))
    keys = list(dict.fromkeys([*saved, *history.history]))
    return {k: list(saved.get(k, [math.nan] * keep))[:keep] + list(history.history.get(k, [math.nan] * done))
            for k in keys}


def check_mode(on_nonfinite: str, distributed: bool) -> str:
    if on_nonfinite not in ON_NONFINITE:
        raise ConfigError(f"fit: on_nonfinite must be one of {', '.join(ON_NONFINITE)}, got {on_nonfinite!r}")
    if distributed and on_nonfinite != "raise":  # one rank skipping a step would leave the others waiting
        raise ConfigError(f"fit: on_nonfinite={on_nonfinite!r} is not supported with distributed=True")
    return on_nonfinite


def nonfinite_step(err: FloatingPointError, mode: str, epoch: int, step: int) -> None:
    """A batch whose loss was NaN or inf (its update was refused): raise, or warn, or nothing."""
    if mode == "raise":
        raise err
    if mode == "warn":
        warnings.warn(f"fit: epoch {epoch + 1}, batch {step}: {err}", RuntimeWarning, stacklevel=3)


def check_weights(model, mode: str, epoch: int) -> None:
    """At the end of an epoch: NaN or inf in the weights (e.g. from an infinite gradient) is reported."""
    ops, flat = model.ops, model.flat_params
    if math.isfinite(ops.sum_of_squares(flat)) or np.isfinite(ops.to_numpy(flat)).all():
        return  # (the second test: finite weights whose sum of squares overflowed)
    message = f"fit: after epoch {epoch + 1} the weights hold NaN or inf (an infinite gradient); lower " \
              "the learning rate or clip gradients (clip_norm)"
    if mode == "raise":
        raise NonFiniteError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def check_input(x, what: str) -> None:
    """Raise NonFiniteError naming the count and first sample when a float NumPy input holds NaN or inf.

    One reduction over the input (no copy) in the common finite case.
    """
    if hasattr(x, "arrays"):  # a DataList: the inputs of a model of several inputs
        for array in x.arrays:
            check_input(array, what)
        return
    if type(x) is not np.ndarray or x.dtype.kind != "f" or not x.size:
        return
    with np.errstate(all="ignore"):
        total = np.add.reduce(x.reshape(-1))  # in x's dtype: SIMD, no copy; inf also if large values overflow
    if math.isfinite(total):
        return
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if not bad.any():
        return  # finite values whose sum overflowed
    rows = np.flatnonzero(bad.any(axis=1))
    raise NonFiniteError(f"{what}: the input holds {int(bad.sum())} NaN/inf values in {len(rows)} samples "
                         f"(first: sample {int(rows[0])}); clean or impute them first")
