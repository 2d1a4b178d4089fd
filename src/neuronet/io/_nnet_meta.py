"""Checks of a ``.nnet`` file's metadata and tensors: known keys, types, ranges, checksum, finiteness.

Every function raises ``NnetFormatError`` naming the file and the field; nothing here allocates more
than the file already holds.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from ..errors import NnetFormatError

# Allowed keys at each level of the metadata (other engineers: add new fields here).
META_KEYS = {"format_version", "neuronet_version", "architecture", "input_shape", "dtype", "compile",
             "training", "extra", "checksum", "frozen"}
COMPILE_KEYS = {"optimizer", "loss", "metrics"}
OPTIMIZER_KEYS = {"type", "config", "iterations", "initial_lr", "state", "scheduler"}
LOSS_KEYS = {"type", "config"}
TRAINING_KEYS = {"epoch", "rng_state", "history", "position"}
POSITION_KEYS = {"epoch", "step", "samples", "batch_size", "shuffle", "epoch_rng_state", "totals"}
MAX_HISTORY = 10**6  # entries per logged value


def check_keys(value, allowed: set, field: str, where: str, required: set = frozenset()) -> dict:
    """``value`` is a JSON object with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(value, dict):
        raise NnetFormatError(f"{where}: metadata {field!r} must be a JSON object, got {value!r:.80}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise NnetFormatError(f"{where}: metadata {field!r} has unknown key {unknown[0]!r:.80}; "
                              f"allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(value))
    if missing:
        raise NnetFormatError(f"{where}: metadata {field!r} lacks {missing[0]!r}")
    return value


def count(value, field: str, where: str) -> int:
    """A non-negative JSON integer below 2**53."""
    if type(value) is not int or not 0 <= value < 2**53:
        raise NnetFormatError(f"{where}: metadata {field!r} must be a non-negative integer, "
                              f"got {value!r:.80}")
    return value


def number(value, field: str, where: str, finite: bool = True) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or finite and not math.isfinite(value):
        raise NnetFormatError(f"{where}: metadata {field!r} must be a {'finite ' if finite else ''}number, "
                              f"got {value!r:.80}")
    return float(value)


def history(value, where: str) -> dict[str, list[float]]:
    """``training.history``: {name: [number or NaN, ...]}, every list as long as the others."""
    if value is None:
        return {}
    check_keys(value, set(value) if isinstance(value, dict) else set(), "training.history", where)
    lengths = set()
    for key, values in value.items():
        if not isinstance(values, list) or len(values) > MAX_HISTORY or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise NnetFormatError(f"{where}: metadata 'training.history' entry {key!r:.80} must be a list "
                                  "of numbers")
        lengths.add(len(values))
    if len(lengths) > 1:
        raise NnetFormatError(f"{where}: metadata 'training.history' lists have different lengths "
                              f"{sorted(lengths)}")
    return {k: [float(v) for v in vs] for k, vs in value.items()}


def position(value, where: str) -> dict | None:
    """``training.position``: where an epoch was interrupted (see ``Trainer.training_position``)."""
    if value is None:
        return None
    check_keys(value, POSITION_KEYS, "training.position", where, required=POSITION_KEYS)
    for key in ("epoch", "step", "samples", "batch_size"):
        count(value[key], f"training.position.{key}", where)
    if type(value["shuffle"]) is not bool or not isinstance(value["epoch_rng_state"], dict):
        raise NnetFormatError(f"{where}: metadata 'training.position' has a bad shuffle or epoch_rng_state")
    table = value["totals"]
    if not isinstance(table, dict) or not all(
            isinstance(v, list) and len(v) < 2**16 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) for v in table.values()):
        raise NnetFormatError(f"{where}: metadata 'training.position.totals' must map names to lists of "
                              "numbers")
    return value


# --------------------------------------------------------------------------------------- tensors
def checksum(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and little-endian bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        h.update(f"{name}|{value.dtype.str.lstrip('<>=|')}|{list(value.shape)}|".encode())
        h.update(memoryview(np.ascontiguousarray(value, value.dtype.newbyteorder("<"))).cast("B"))
    return h.hexdigest()


def verify_checksum(meta: dict, tensors: dict[str, np.ndarray], where: str) -> None:
    stored = meta.get("checksum")
    if stored is None:
        return  # files from before checksums; everything else is still checked
    check_keys(stored, {"sha256"}, "checksum", where, required={"sha256"})
    if checksum(tensors) != stored["sha256"]:
        raise NnetFormatError(f"{where}: the tensors do not match their SHA-256 checksum (the file was "
                              "corrupted or edited after it was written)")


def first_nonfinite(tensors: dict[str, np.ndarray]) -> str | None:
    """Name of the first floating tensor holding NaN or inf (``np.isfinite(sum)``: one pass, no copy)."""
    for name, value in tensors.items():
        if value.dtype.kind == "f" and value.size:
            with np.errstate(all="ignore"):
                total = np.add.reduce(value.reshape(-1), dtype=np.float64)
            if not math.isfinite(total) and not np.isfinite(value).all():
                return name
    return None
