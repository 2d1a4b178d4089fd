"""Optimizers over the flat parameter array."""

from .adam import Adam, AdamW
from .optimizer import OPTIMIZERS, Optimizer
from .sgd import SGD

__all__ = ["OPTIMIZERS", "Adam", "AdamW", "Optimizer", "SGD"]
