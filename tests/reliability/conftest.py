"""Helpers shared by the reliability tests: write hand-made (hostile) model files, measure allocations."""

import json
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes

from neuronet.io._nnet_meta import checksum


def write_nnet(path, meta: dict, tensors: dict, rehash: bool = True) -> None:
    """A .nnet file with exactly this metadata and these tensors (checksum recomputed unless told)."""
    meta = dict(meta)
    if rehash:
        meta["checksum"] = {"sha256": checksum(tensors)}
    blob = safetensors_bytes(tensors, metadata={"format": "neuronet", "neuronet": json.dumps(meta)})
    path.write_bytes(blob)


def minimal_meta(layers: list, input_shape: list) -> dict:
    return {"format_version": 1, "architecture": {"type": "Sequential", "config": {"dtype": "float32"},
                                                  "layers": layers},
            "input_shape": input_shape, "dtype": "float32", "compile": None}


@pytest.fixture
def peak_bytes():
    """Call ``peak_bytes(fn)``: (result or exception, peak bytes Python/NumPy allocated while it ran)."""
    def measure(fn):
        tracemalloc.start()
        try:
            try:
                out = fn()
            except Exception as e:  # noqa: BLE001 -- returned for the test to check
                out = e
            return out, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return measure


def small_tensors():
    return {"0.weight": np.zeros((2, 3), np.float32), "0.bias": np.zeros(2, np.float32)}
