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
from .attention import MultiHeadAttention
from .batchnorm import BatchNorm1D, BatchNorm2D
from .conv import Conv1D, Conv2D, ConvTranspose2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding, PositionalEncoding
from .global_attention import GlobalAttention
from .merge import Add, Concatenate, Multiply, Residual
from .moe import MoE
from .normalization import GroupNorm, LayerNorm, RMSNorm
from .pooling import AvgPool1D, AvgPool2D, GlobalAvgPool2D, MaxPool1D, MaxPool2D
from .rbf import RBF
from .recurrent import GRU, LSTM, Bidirectional
from .reshape import Flatten, Reshape
from .sequence_pooling import CLSPooling, LastToken, MeanPooling
from .swiglu import SwiGLU
from .transformer import TransformerBlock
from .upsample import Upsample
from .wrapper import Remat

__all__ = [
    "Activation",
    "Add",
    "AvgPool1D",
    "AvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "Bidirectional",
    "CLSPooling",
    "Concatenate",
    "Conv1D",
    "Conv2D",
    "ConvTranspose2D",
    "Dense",
    "Dropout",
    "ELU",
    "Embedding",
    "Flatten",
    "GELU",
    "GRU",
    "GlobalAttention",
    "GlobalAvgPool2D",
    "GroupNorm",
    "LSTM",
    "LastToken",
    "LayerNorm",
    "LeakyReLU",
    "LogSoftmax",
    "MaxPool1D",
    "MaxPool2D",
    "MeanPooling",
    "MoE",
    "MultiHeadAttention",
    "Multiply",
    "PositionalEncoding",
    "RBF",
    "RMSNorm",
    "ReLU",
    "Remat",
    "Residual",
    "Reshape",
    "SELU",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "SwiGLU",
    "Tanh",
    "TransformerBlock",
    "Upsample",
]
