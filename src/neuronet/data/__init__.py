"""Datasets and data utilities: loaders for standard formats, splitting, encoding, augmentation, batching.

Loaders take a local folder. When its files are absent they are downloaded if a network is reachable;
otherwise ``DatasetNotFoundError`` says which files to put where.
"""

from .cifar10 import load_cifar10, read_cifar10_bin
from .datasets import CharDataset, load_csv, load_digits
from .download import DatasetNotFoundError
from .loader import DataLoader, Dataset
from .mnist import load_fashion_mnist, load_mnist, read_idx
from .transforms import augment_images, batches, normalize, one_hot, standardize, train_test_split

__all__ = ["CharDataset", "DatasetNotFoundError", "augment_images", "batches", "load_csv", "load_digits",
           "load_fashion_mnist", "load_mnist", "normalize", "one_hot", "read_idx", "standardize",
           "train_test_split"]
__all__ += ["load_cifar10", "read_cifar10_bin"]
__all__ += ["DataLoader", "Dataset"]
