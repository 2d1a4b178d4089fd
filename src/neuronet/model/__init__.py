"""Models: Sequential and the training loop, the floor above layers, losses, optim and callbacks."""

from .sequential import Sequential

__all__ = ["Sequential"]
