"""Shared fixtures: both backends, reproducible seeds, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import neuronet as nn

DATA_ROOT = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed():
    nn.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(params=["numpy", "torch"])
def backend(request):
    """Run a test on each backend ("torch" is PyTorch on its CPU device here)."""
    return request.param


@pytest.fixture
def rows_on_threads(monkeypatch):
    """The NumPy backend runs every row-block region (recurrent time loops, attention samples) in up to
    three blocks at once, however few rows or little work (without this, small test batches stay in one
    block)."""
    from neuronet.backend import NumpyOps, row_threads

    def per_row(self, n, min_rows=None):
        return row_threads.split(n, min(3, n))
    monkeypatch.setattr(NumpyOps, "row_blocks", per_row)


@pytest.fixture(params=["direct", "implicit", "pixels"])
def conv_path(request, monkeypatch):
    """Run a test with the NumPy backend's stride-1, one-group weight gradients direct wherever dx is not
    wanted (every geometry the direct kernel takes) or never (all as implicit GEMMs), and the forward's and
    dx's implicit GEMMs with the channels as rows (``implicit``) or the pixels (``pixels``), whatever the
    image's size."""
    from neuronet.backend import numpy_ops

    for name in ("DIRECT_MAX_CHANNELS", "DIRECT_MAX_INPUTS"):
        monkeypatch.setattr(numpy_ops, name, 1 << 30 if request.param == "direct" else 0)
    if request.param != "direct":
        monkeypatch.setattr(numpy_ops, "PIXEL_ROWS_GAIN", 0.0 if request.param == "pixels" else float("inf"))
    return request.param


@pytest.fixture
def data_root() -> Path:
    if not DATA_ROOT.exists():
        pytest.skip(f"shared data not found at {DATA_ROOT} (set NEURONET_DATA)")
    return DATA_ROOT
