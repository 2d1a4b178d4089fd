"""Layer protocol, flat parameter memory and workspaces."""

from ..errors import ShapeError
from .callback import Callback
from .grad_mode import is_grad_enabled, no_grad
from .layer import LAYERS, Layer, Workspace, layer_name, register_layer
from .random import manual_seed

__all__ = ["LAYERS", "Callback", "Layer", "ShapeError", "Workspace", "is_grad_enabled", "layer_name",
           "manual_seed", "no_grad", "register_layer"]
