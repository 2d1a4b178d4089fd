"""Datasets and data utilities: loaders for standard formats, splitting, encoding, batching."""

from .download import DatasetNotFoundError
from .mnist import load_fashion_mnist, load_mnist, read_idx

__all__ = ["DatasetNotFoundError", "load_fashion_mnist", "load_mnist", "read_idx"]
