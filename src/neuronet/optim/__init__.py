"""Optimizers over the flat parameter array, and learning-rate schedulers."""

from .adam import Adam, AdamW
from .optimizer import OPTIMIZERS, Optimizer
from .rmsprop import RMSprop
from .schedulers import CosineAnnealingLR, LinearLR, LinearWarmup, LRScheduler, ReduceLROnPlateau, StepLR
from .sgd import SGD

__all__ = ["OPTIMIZERS", "Adam", "AdamW", "CosineAnnealingLR", "LRScheduler", "LinearLR", "LinearWarmup",
           "Optimizer", "RMSprop", "ReduceLROnPlateau", "SGD", "StepLR"]
