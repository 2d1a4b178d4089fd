"""Layer protocol, flat parameter memory and workspaces."""

from ..errors import ShapeError
from .callback import Callback
from .layer import LAYERS, Layer, Workspace
from .random import manual_seed

__all__ = ["LAYERS", "Callback", "Layer", "ShapeError", "Workspace", "manual_seed"]
