"""The exceptions neuronet raises for bad input: one hierarchy, every class a ``ValueError``.

    NeuronetError(ValueError)
    ├── ShapeError        an input or a graph whose shape, dtype or range does not fit a layer
    ├── NnetFormatError   a malformed, corrupt or hostile ``.nnet`` (or GGUF) model file
    ├── DataFormatError   a malformed dataset file (IDX, CIFAR, CSV)
    ├── ConfigError       a YAML config or argument combination that cannot be run
    └── NonFiniteError    NaN or inf where numbers must be finite (a loss, weights, a predict input);
                          also a ``FloatingPointError``

Loaders raise only these (or ``OSError`` for a missing or unreadable file), so
``except nn.errors.NeuronetError`` catches every rejected input and nothing else.
"""

from __future__ import annotations


class NeuronetError(ValueError):
    """Base class of every bad-input error neuronet raises."""


class ShapeError(NeuronetError):
    """An input whose shape, dtype or range does not fit the layer (or graph node) it was given to."""


class NnetFormatError(NeuronetError):
    """A model file (``.nnet``, GGUF) that is malformed, corrupt, or declares what its data does not hold."""


class DataFormatError(NeuronetError):
    """A dataset file (IDX, CIFAR, CSV) that is malformed or does not match its declared sizes."""


class ConfigError(NeuronetError):
    """A configuration (YAML file, keyword arguments) that cannot be run, naming the key."""


class NonFiniteError(NeuronetError, FloatingPointError):
    """NaN or inf in a loss, the weights or an input, naming where it was found."""


__all__ = ["ConfigError", "DataFormatError", "NeuronetError", "NnetFormatError", "NonFiniteError",
           "ShapeError"]
