"""Layer protocol, flat parameter memory and workspaces."""

from ..errors import ShapeError
from .callback import Callback
from .layer import LAYERS, Layer, Workspace, layer_name, register_layer
from .random import manual_seed

__all__ = ["LAYERS", "Callback", "Layer", "ShapeError", "Workspace", "layer_name", "manual_seed",
           "register_layer"]
