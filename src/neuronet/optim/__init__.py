"""Optimizers over the flat parameter array, and learning-rate schedulers."""

from .adam import Adam, AdamW
from .optimizer import OPTIMIZERS, Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["OPTIMIZERS", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD"]
