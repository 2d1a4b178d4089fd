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
def data_root() -> Path:
    if not DATA_ROOT.exists():
        pytest.skip(f"shared data not found at {DATA_ROOT} (set NEURONET_DATA)")
    return DATA_ROOT
