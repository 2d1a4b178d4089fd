"""Measure what a steady-state step allocates, as tracemalloc sees it (NumPy buffers included)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def step_allocations(step: Callable[[], object], steps: int = 20, warmup: int = 3) -> tuple[int, int]:
    """Run ``step`` ``warmup`` times, then ``steps`` times under tracemalloc.

    Returns (growth, peak): bytes still allocated after the measured steps relative to before, and
    the largest transient rise above the starting point during any one step.
    """
    for _ in range(warmup):
        step()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        peak = 0
        for _ in range(steps):
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            step()
            _, step_peak = tracemalloc.get_traced_memory()
            peak = max(peak, step_peak - before)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - base, peak
