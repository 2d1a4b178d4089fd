"""Token embeddings and positional encodings for (N, T) sequences (PyTorch: nn.Embedding)."""

from __future__ import annotations

import numpy as np

from ..core import args
from ..core import initializers as init
from ..core.layer import Layer, ShapeError
from ..errors import ConfigError


class Embedding(Layer):
    """Look up one learned row per integer id.

    y[n, t] = weight[ids[n, t]];  dL/dweight[k] += sum of dy[n, t] over every (n, t) with ids[n, t] = k,
    except the row ``padding_idx``, which gets no gradient (it stays what it was: zeros unless loaded).

    PyTorch counterpart: ``nn.Embedding(num, dim, padding_idx)``.

    Args:
        num (int): number of ids (rows of the table).
        dim (int): size of each embedding vector.
        padding_idx (int, optional): an id in [-num, num) (negative counts from the end) whose row is
            initialised to zeros and never trained. Default: ``None``.
    Shape:
        ids: (N, T) integers in [0, num) -> y: (N, T, dim)
    Parameters:
        weight (num, dim), initialised N(0, 1) as PyTorch does (row ``padding_idx`` zeros).
    Saved for backward:
        the ids (by reference).
    """

    def __init__(self, num: int, dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num, self.dim = args.size("Embedding", "num", num), args.size("Embedding", "dim", dim)
        if padding_idx is not None:
            if not -self.num <= int(padding_idx) < self.num:
                raise ConfigError(f"Embedding({self.num}, {self.dim}): padding_idx must be in "
                                  f"[{-self.num}, {self.num}), got {padding_idx}")
            padding_idx = int(padding_idx) % self.num  # PyTorch keeps the non-negative form
        self.padding_idx = padding_idx

    def setup(self, input_shape):
        self.add_param("weight", (self.num, self.dim), self._init_weight)
        return (*input_shape, self.dim)

    def _init_weight(self, rng, shape, dtype):
        weight = init.normal(1.0)(rng, shape, dtype)
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0.0
        return weight

    def check_input(self, x):
        if x.ndim < 1 or self.ops.is_floating(x):
            raise ShapeError(f"{self!r}: expected integer ids of shape (N, T), got {self.ops.dtype_name(x)} "
                             f"array of shape {tuple(x.shape)}")
        if self.ops.device != "cpu":  # reading ids back would stall the device; its gather checks them
            return
        xp = self.ops.xp
        lo, hi = self.ops.item(xp.amin(x)), self.ops.item(xp.amax(x))
        if lo < 0 or hi >= self.num:
            bad = int(lo if lo < 0 else hi)
            raise ShapeError(f"{self!r}: id {bad} out of range [0, {self.num})")

    def forward(self, x, training: bool = True):
        self.check_input(x)
        self._ids = x.reshape(-1)
        y = self.workspace("y", (self._ids.shape[0], self.dim))
        self.ops.gather_rows(self.params["weight"], self._ids, y)
        return y.reshape(*x.shape, self.dim)

    def backward(self, dy):
        if not self.trainable:  # frozen: no weight gradient
            return None
        grad = self.grads["weight"]
        if self.padding_idx is None:
            self.ops.scatter_add_rows(grad, self._ids, dy.reshape(-1, self.dim))
            return None
        row = self.workspace("padding_row", (self.dim,))  # the padding row's gradient, put back after
        self.ops.copy_(row, grad[self.padding_idx])
        self.ops.scatter_add_rows(grad, self._ids, dy.reshape(-1, self.dim))
        self.ops.copy_(grad[self.padding_idx], row)
        return None

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num}, {self.dim}{pad}"

    def get_config(self):
        return {"num": self.num, "dim": self.dim, "padding_idx": self.padding_idx}


def sinusoid_table(max_len: int, dim: int) -> np.ndarray:
    """PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim)), shape (max_len, dim)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    freq = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((max_len, dim))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)[:, : dim // 2]
    return table


class PositionalEncoding(Layer):
    """Add a position vector to every step: y[n, t] = x[n, t] + PE[t].

    PE is the fixed sinusoidal table (``sinusoid_table``, not a parameter, not in state_dict) or, with
    ``learned``, a trained ``weight`` (GPT-2's position embedding).

    Args:
        max_len (int): the longest sequence accepted.
        dim (int): feature size.
        learned (bool, optional): train the table instead of using sinusoids. Default: ``False``.
    Shape:
        x: (N, T, dim) with T <= max_len -> y: (N, T, dim)
    Parameters:
        weight (max_len, dim) when learned, initialised N(0, 0.02).
    Saved for backward:
        nothing (the gradient w.r.t. x is dy).
    """

    def __init__(self, max_len: int, dim: int, learned: bool = False):
        super().__init__()
        owner = "PositionalEncoding"
        self.max_len, self.dim = args.size(owner, "max_len", max_len), args.size(owner, "dim", dim)
        self.learned = args.flag(owner, "learned", learned)

    @property
    def input_spec(self):
        return ("T", self.dim)

    def setup(self, input_shape):
        self._check_length(input_shape[0])
        if self.learned:
            self.add_param("weight", (self.max_len, self.dim), init.normal(0.02))
        return input_shape  # the sinusoid table is built on first use, never for a file being checked

    def _check_length(self, t: int) -> None:
        if t > self.max_len:
            raise ShapeError(f"{self!r}: sequence length {t} exceeds max_len {self.max_len}")

    def check_input(self, x):
        super().check_input(x)  # the input_spec
        self._check_length(x.shape[1])

    def table(self):
        """PE on this layer's backend and dtype (the sinusoids are converted once per backend)."""
        if self.learned:
            return self.params["weight"]
        t = self.__dict__.get("_table")
        if t is None or not self.ops.is_array(t) or self.ops.dtype_name(t) != str(self.dtype):
            t = self._table = self.ops.asarray(sinusoid_table(self.max_len, self.dim).astype(self.dtype))
        return t

    def forward(self, x, training: bool = True):
        self.check_input(x)
        y = self.workspace("y", tuple(x.shape))
        self.ops.xp.add(x, self.table()[: x.shape[1]], out=y)
        return y

    def backward(self, dy):
        if self.learned and self.trainable:
            t = dy.shape[1]
            g = self.workspace("dw", (t, self.dim))
            self.ops.xp.sum(dy, axis=0, out=g)
            self.grads["weight"][:t] += g
        return dy

    def extra_repr(self):
        return f"{self.max_len}, {self.dim}" + (", learned=True" if self.learned else "")

    def get_config(self):
        return {"max_len": self.max_len, "dim": self.dim, "learned": self.learned}
