"""Layers, one file per family; every class is also reachable as ``neuronet.<Name>``."""

from .activation import (
    ELU,
    GELU,
    SELU,
    Activation,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from .dense import Dense
from .dropout import Dropout
from .moe import MoE
from .reshape import Flatten, Reshape

__all__ = ["Activation", "Dense", "Dropout", "ELU", "Flatten", "GELU", "LeakyReLU", "LogSoftmax", "ReLU",
           "Reshape", "SELU", "SiLU", "Sigmoid", "Softmax", "Tanh"]
__all__ += ["MoE"]
