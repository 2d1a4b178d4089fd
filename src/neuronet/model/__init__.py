"""Models: Sequential and the training loop, the floor above layers, losses, optim and callbacks."""

from .functional import Input, Model, PerOutputLoss
from .sequential import Sequential

__all__ = ["Input", "Model", "PerOutputLoss", "Sequential"]
