"""Measure what a steady-state step allocates, as tracemalloc sees it (NumPy buffers included)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

# The steady-state limits the suite holds every model family to (bytes).
MAX_GROWTH, MAX_PEAK = 64 * 1024, 256 * 1024


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


def assert_step_allocates_nothing(step: Callable[[], object], what: str = "train_step") -> tuple[int, int]:
    """``step_allocations`` within the project's limits: less than MAX_GROWTH bytes left allocated over
    20 steady-state steps and less than MAX_PEAK bytes at the peak of any one; an AssertionError naming
    both figures otherwise. Returns (growth, peak)."""
    growth, peak = step_allocations(step)
    assert growth < MAX_GROWTH and peak < MAX_PEAK, \
        f"{what} grew {growth} bytes over 20 steps and peaked at {peak} bytes in one step " \
        f"(limits {MAX_GROWTH} and {MAX_PEAK})"
    return growth, peak
