"""Layer protocol, flat parameter memory, workspaces and the Sequential model."""

from .layer import LAYERS, Layer, ShapeError, Workspace
from .model import Sequential
from .random import manual_seed

__all__ = ["LAYERS", "Layer", "Sequential", "ShapeError", "Workspace", "manual_seed"]
