"""Parameter initialisers with PyTorch's defaults. Each returns a host array ``f(rng, shape, dtype)``."""

from __future__ import annotations

import math

import numpy as np


def zeros(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    return np.zeros(shape, dtype)


def ones(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    return np.ones(shape, dtype)


def uniform(bound: float):
    """U(-bound, bound)."""
    def init(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
        return rng.uniform(-bound, bound, size=shape).astype(dtype)
    return init


def fan_in_uniform(fan_in: int):
    """PyTorch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (kaiming_uniform with a = sqrt(5) gives the same bound for the weight)."""
    return uniform(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


def normal(std: float = 1.0, mean: float = 0.0):
    def init(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
        return rng.normal(mean, std, size=shape).astype(dtype)
    return init


def xavier_uniform(fan_in: int, fan_out: int, gain: float = 1.0):
    return uniform(gain * math.sqrt(6.0 / (fan_in + fan_out)))
