"""neuronet: explicit layers, flat memory, zero-allocation training on NumPy or PyTorch.

    import neuronet as nn
    model = nn.Sequential(nn.Dense(784, 128, activation="relu"), nn.Dense(128, 10))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.fit(x, y, epochs=5, batch_size=64)
"""

from . import backend as backends
from . import data, distributed, errors, plotting
from .backend import set_backend
from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    History,
    ModelCheckpoint,
    ProgressBar,
    ReduceLROnPlateau,
    TensorBoard,
    TerminateOnNaN,
)
from .core import LAYERS, Layer, is_grad_enabled, manual_seed, no_grad, register_layer
from .errors import ShapeError
from .io import export_gguf, export_onnx, load, load_gguf, to_torch_state_dict
from .layers import *  # noqa: F403
from .layers import __all__ as _layer_names
from .losses import (
    LOSSES,
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    Loss,
    MarginRankingLoss,
    MSELoss,
    MultiMarginLoss,
    NLLLoss,
    TripletMarginLoss,
)
from .model import Input, Model, Sequential
from .optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    CosineAnnealingLR,
    LinearLR,
    LinearWarmup,
    LRScheduler,
    NAdam,
    Optimizer,
    RMSprop,
    StepLR,
)

__version__ = "0.1.0"

__all__ = [
    "LAYERS", "LOSSES", "OPTIMIZERS", "SGD", "Adam", "AdamW", "CSVLogger", "Callback", "CrossEntropyLoss",
    "EarlyStopping", "History", "Layer", "Loss", "MSELoss", "ModelCheckpoint", "Optimizer", "ProgressBar",
    "ReduceLROnPlateau", "Sequential", "TensorBoard", "Input", "Model", "ShapeError", "backends", "data",
    "distributed", "errors", "load", "plotting", "manual_seed", "no_grad", "is_grad_enabled",
    "register_layer", "set_backend",
    "export_gguf", "export_onnx", "load_gguf", "to_torch_state_dict",
    *_layer_names,
    "BCELoss", "BCEWithLogitsLoss", "HuberLoss", "KLDivLoss", "L1Loss", "MarginRankingLoss",
    "MultiMarginLoss", "NLLLoss", "RMSprop", "TripletMarginLoss", "CosineAnnealingLR", "LRScheduler",
    "LinearLR", "LinearWarmup", "StepLR", "Adagrad", "NAdam",
]
__all__ += ["TerminateOnNaN"]
