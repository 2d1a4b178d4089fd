"""Optimizers over the flat parameter array, and learning-rate schedulers."""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .nadam import NAdam
from .optimizer import OPTIMIZERS, Optimizer
from .rmsprop import RMSprop
from .schedulers import CosineAnnealingLR, LinearLR, LinearWarmup, LRScheduler, ReduceLROnPlateau, StepLR
from .sgd import SGD

__all__ = ["OPTIMIZERS", "Adagrad", "Adam", "AdamW", "CosineAnnealingLR", "LRScheduler", "LinearLR",
           "LinearWarmup", "NAdam", "Optimizer", "RMSprop", "ReduceLROnPlateau", "SGD", "StepLR"]
