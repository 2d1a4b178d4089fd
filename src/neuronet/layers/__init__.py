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
from .conv import Conv1D, Conv2D
from .global_attention import GlobalAttention
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding, PositionalEncoding
from .moe import MoE
from .normalization import LayerNorm, RMSNorm
from .rbf import RBF
from .recurrent import GRU, LSTM, Bidirectional
from .reshape import Flatten, Reshape
from .sequence_pooling import CLSPooling, LastToken, MeanPooling
from .swiglu import SwiGLU
from .transformer import TransformerBlock

__all__ = ["Activation", "Dense", "Dropout", "ELU", "Flatten", "GELU", "LeakyReLU", "LogSoftmax", "ReLU",
           "Reshape", "SELU", "SiLU", "Sigmoid", "Softmax", "Tanh"]
__all__ += ["MoE"]
__all__ += ["Embedding", "LayerNorm", "MultiHeadAttention", "PositionalEncoding", "RMSNorm", "SwiGLU",
            "TransformerBlock"]
__all__ += ["AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv1D", "Conv2D", "GlobalAvgPool2D", "MaxPool2D"]
__all__ += ["Bidirectional", "CLSPooling", "GRU", "GlobalAttention", "LSTM", "LastToken", "MeanPooling",
            "RBF"]
