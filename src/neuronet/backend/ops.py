"""The backend seam: one object that owns the array namespace, allocation and the fused kernels.

``Ops`` itself is the reference backend: every op written once in plain NumPy, as readable as the math
it specifies (loops where they say it best). It runs (``Ops()`` computes on NumPy arrays), and the ops
parity test (tests/backend/test_ops_parity.py) holds every faster backend to it: ``NumpyOps`` (Numba
kernels) and ``TorchOps`` override only what they make faster or must spell differently.

Layers and losses never import NumPy or torch for math. They call ``self.ops`` and use the array
namespace ``ops.xp`` only through ``XP_FUNCTIONS``: the functions NumPy and PyTorch spell the same way,
always with ``out=`` so that nothing is allocated in a training step (a test scans layers/ and losses/
for any other ``xp.<name>``). Besides those: the operators (``+ - * / @``, in-place ``+= -= *= /=``),
slicing, ``.reshape`` and ``.shape``. Everything else (creation, transposes, reductions with indices,
scatter, random numbers) is a method here. See docs/backends.md for adding a backend.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError
from .conv_geometry import ConvGeometry

# The array-namespace functions layers and losses may call as ``ops.xp.<name>`` (NumPy's names; every
# backend's ``xp`` must provide them with NumPy's meaning for the arguments used: positional arrays,
# ``out=``, and for the reductions ``axis=``/``keepdims=``). Anything else is an ``Ops`` method.
XP_FUNCTIONS = frozenset({
    "exp", "log", "log1p", "tanh", "sqrt", "square", "abs", "sign", "clip",
    "add", "subtract", "multiply", "divide", "floor_divide", "maximum", "minimum", "not_equal", "matmul",
    "sum", "mean", "amax", "amin", "isfinite",
})

# A buffer source for kernels that need scratch space: (name, shape) -> array (Layer.workspace).
Scratch = Callable[[str, tuple], Any]


class _NewOutput:
    """The type of ``NEW``."""

    def __repr__(self) -> str:
        return "NEW"


# Passed as a convolution's output (``conv2d``'s out, ``conv2d_backward``'s dx), NEW asks the op for a new
# array, which it returns. A layer passes it where ``ops.fresh_outputs``: where the kernel makes its
# result in memory of its own anyway (PyTorch's convolutions), and copying that into the layer's
# workspace would be one more pass over it.
NEW = _NewOutput()


class Spans(NamedTuple):
    """Where an optimizer update applies: the ranges [starts[i], stops[i]) of the flat parameter buffer,
    each with the index ``group[i]`` of its parameter group (int64 arrays); frozen ranges are absent.
    ``items`` holds the same as Python (start, stop, group) triples."""

    starts: np.ndarray
    stops: np.ndarray
    group: np.ndarray
    items: tuple

    @classmethod
    def of(cls, items) -> Spans:
        items = tuple((int(a), int(b), int(k)) for a, b, k in items)
        cols = np.array(items, np.int64).reshape(-1, 3).T
        return cls(*(np.ascontiguousarray(c) for c in cols), items)


ACTIVATIONS = (
    "linear", "relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "gelu", "gelu_tanh",
    "silu", "softmax", "log_softmax",
)

# Activations whose derivative is a function of their output alone: for these no copy of the
# pre-activation is saved for backward.
OUTPUT_DERIVATIVE = {"linear", "relu", "sigmoid", "tanh", "softmax", "log_softmax"}

# The alpha of the activations that take one, when none is given (PyTorch's defaults).
DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)  # (NumPy computes it in Python each time: ~2 us)


def check_activation(name: str | None, owner: str) -> str:
    """Normalise an activation name (None -> "linear") or raise naming the owner and the choices."""
    name = "linear" if name is None else str(name).lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"{owner}: unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return name


class Ops:
    """The reference backend: every op in plain NumPy. Subclasses set ``xp``, ``name``, ``device`` and
    override what they make faster (NumpyOps) or spell differently (TorchOps)."""

    xp: Any = np
    name: str = "reference"
    device: str = "cpu"
    fresh_outputs: bool = False  # see NEW: True where convolutions and norms make their results themselves

    def __deepcopy__(self, memo) -> Ops:
        """A backend is one object per device (``get_ops``): a copied model computes on the same one."""
        return self

    # ----------------------------------------------------------------- creation / conversion
    def empty(self, shape, dtype) -> Any:
        return np.empty(shape, dtype=self.resolve_dtype(dtype))

    def zeros(self, shape, dtype) -> Any:
        return np.zeros(shape, dtype=self.resolve_dtype(dtype))

    def asarray(self, x, dtype=None) -> Any:
        """Convert to this backend (no copy when already there with that dtype)."""
        if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=None if dtype is None else self.resolve_dtype(dtype))

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def host_twin(self, arrays) -> tuple[Ops, list] | None:
        """(the NumPy backend, NumPy views of ``arrays``' memory) where it can compute on these arrays of
        this backend and runs a chain of small passes faster than this backend's calls; None otherwise
        (and here, already on NumPy)."""
        return None

    def from_host(self, x) -> Any:
        """An array of this backend on the memory of ``x``, an array its ``host_twin`` computed."""
        return x

    def is_array(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def is_floating(self, x) -> bool:
        return np.asarray(x).dtype.kind == "f"

    def ready(self, x, dtype) -> bool:
        """Whether ``x`` is this backend's array of ``dtype`` (a NumPy dtype), usable as a model's input as
        it is: no conversion, no copy (the models check this before the general path, ~10 us a step)."""
        return type(x) is np.ndarray and x.dtype == dtype

    def dtype_name(self, x) -> str:
        """'float32', 'float64', 'int64', ... for error messages and checks."""
        return _dtype_name(np.asarray(x).dtype)

    def resolve_dtype(self, name: str) -> Any:
        return np.dtype(name)

    def copy_(self, dst, src) -> None:
        dst[...] = src

    def fill_(self, x, value: float) -> None:
        x[...] = value

    def add(self, a, b, out) -> Any:
        """out = a + b, elementwise (out may be a or b): the residual sums and a tensor's gradient summed
        over its consumers."""
        return self.xp.add(a, b, out=out)

    # ----------------------------------------------------------------- shape helpers
    def transpose(self, x, axes) -> Any:
        return x.transpose(axes)

    def swapaxes(self, x, a: int, b: int) -> Any:
        return x.swapaxes(a, b)

    def item(self, x) -> float:
        return float(x)

    # ----------------------------------------------------------------- primitives that differ
    def where(self, cond, a, b, out) -> Any:
        """out = a where cond else b (a and b arrays or scalars)."""
        out[...] = np.where(cond, a, b)
        return out

    def dropout_mask(self, keep: float, rng: np.random.Generator, out, dtype) -> Any:
        """Fill the boolean ``out`` with True where a uniform draw < keep: the elements inverted dropout
        keeps (one byte each, where a scaled float mask took four or eight).

        The draws are ``rng.random(out.shape, dtype=dtype)``, ``dtype`` the data's, on the NumPy backend and
        on CPU tensors, so a seed gives the same mask there; the torch backend on a GPU draws them on the
        device from a seed drawn by ``rng`` (a seed still fixes them; ``NEURONET_HOST_MASKS=1``: as here)."""
        out[...] = rng.random(tuple(out.shape), dtype=np.dtype(dtype)) < keep
        return out

    def apply_mask(self, x, mask, scale: float, out) -> Any:
        """out = x * (scale where mask else 0), scale rounded to x's dtype first (so a dropped NaN stays
        NaN, as in PyTorch); ``out`` may be ``x``."""
        out[...] = x * (mask * np.asarray(scale, dtype=x.dtype))
        return out

    def may_share_memory(self, a, b) -> bool:
        """Whether arrays a and b may overlap in memory (False only when they certainly do not)."""
        return bool(np.may_share_memory(a, b))

    def gather_rows(self, table, index, out) -> Any:
        """out[i] = table[index[i]] for a flat integer index (the caller checks it is in range)."""
        out.reshape(-1, *table.shape[1:])[...] = table[index.reshape(-1)]
        return out

    def scatter_add_rows(self, table, index, rows) -> None:
        """table[index[i]] += rows[i], repeated indices accumulate."""
        np.add.at(table, index.reshape(-1), rows.reshape(-1, *table.shape[1:]))

    # ----------------------------------------------------------------- class targets (losses)
    def class_labels(self, t, ignore_index: int, label, keep, bounds: bool = True) -> tuple | None:
        """For class targets ``t`` (M,) int64: label = t with ignore_index replaced by 0 (a valid index,
        for a position that then counts with weight 0), keep = [t != ignore_index] as floats. Returns the
        labels' (min, max), (0, -1) for none (0-d arrays where the backend keeps them on its device), or
        None without ``bounds`` (a backend may then skip computing them)."""
        xp = self.xp
        kept = self.temporary("class_labels.kept", tuple(t.shape), "bool")
        xp.not_equal(t, ignore_index, out=kept)
        xp.multiply(t, kept, out=label)
        self.copy_(keep, kept)
        if not bounds:
            return None
        return (xp.amin(label), xp.amax(label)) if t.shape[0] else (0, -1)

    def class_weights(self, label, weight, keep, rows, scores, w_row, flat) -> tuple:
        """For ``class_labels``' label and keep (labels in [0, C)) and the (M, C) ``scores``: w_row =
        keep * weight[label] (``w_row`` is ``keep`` itself when weight is None), flat = rows * C + label
        (``rows``: 0..M-1), each position's index into the flat scores. Returns (sum_i w_row_i,
        sum_i w_row_i scores[i, label_i]), 0-d arrays where the backend keeps them on its device."""
        xp, (m, c) = self.xp, scores.shape
        if weight is not None:
            self.gather_rows(weight, label, w_row)
            w_row *= keep
        xp.multiply(rows, c, out=flat)
        flat += label
        picked = self.temporary("class_weights.picked", (m,), self.dtype_name(scores))
        self.gather_rows(scores.reshape(-1), flat, picked)
        picked *= w_row
        return xp.sum(w_row), xp.sum(picked)

    def nll_loss(self, scores, target, weight, ignore_index: int) -> tuple | None:
        """Optionally -(1/W) sum_i w_i scores[i, t_i] of (M, C) ``scores`` and (M,) int64 class ``target`` in
        one fused kernel, w_i = weight[t_i] (1 without ``weight``) and 0 where t_i == ignore_index,
        W = sum_i w_i: (loss, W) as 0-d arrays on the backend's device, never read back; or None where the
        backend has no such kernel (the losses then compose class_labels and class_weights)."""
        return None

    def nll_loss_backward(self, scores, target, weight, ignore_index: int, total_weight, out) -> Any:
        """out = dL/dscores of ``nll_loss``: -w_i / W at each row's target, 0 elsewhere."""
        raise NotImplementedError(f"{self.name} backend: nll_loss returned None, so no backward")

    def softmax_target_grad(self, logp, flat, coef, out) -> Any:
        """Cross-entropy's gradient for class targets: out = exp(logp) * coef with coef_i then subtracted
        at each row's target. logp (M, C) log-probabilities, ``flat`` each row's target as an index into
        the flat (M, C) out (``class_weights``), coef (M, 1) the rows' w_i / W."""
        xp = self.xp
        xp.exp(logp, out=out)
        out *= coef
        negated = self.temporary("softmax_target_grad.coef", tuple(coef.shape), self.dtype_name(coef))
        xp.multiply(coef, -1.0, out=negated)
        self.scatter_add_rows(out.reshape(-1, 1), flat, negated)
        return out

    # ----------------------------------------------------------------- mixed precision
    def compute_in(self, dtype: str | None) -> contextlib.AbstractContextManager:
        """A context in which matmul, matmul_acc, conv2d and conv2d_backward multiply in ``dtype``
        ("bfloat16" or "float16") and write their float32 outputs (automatic mixed precision: the
        weights, gradients, norms, softmax, losses and optimizer stay float32). None: in the operands'
        own dtype (also inside an outer low-precision context).
        Only the torch backend has low-precision products; here any other value is a ConfigError."""
        if dtype is not None:
            raise ConfigError(f"mixed precision ({dtype}) needs the torch backend; the {self.name} backend "
                              "computes in the model's dtype: call model.to('torch') (or 'cuda') first")
        return contextlib.nullcontext()

    # ----------------------------------------------------------------- temporaries
    def temporary(self, name: str, shape: tuple, dtype) -> Any:
        """This thread's buffer ``name`` of ``shape`` for a value that lives only within one call (a
        backward's pre-activation gradient, a product's scratch, a convolution's columns): one buffer per
        (name, dtype) and thread, grown to the largest request and shared by every layer, where a layer
        workspace would keep one per layer. Per thread, so that replicas and row blocks running at once
        do not share. Its contents are whatever was last written there; a caller must not hold it across
        a call into another layer that may ask for the same name."""
        try:
            buffers, views = self._temporaries.buffers, self._temporaries.views
        except AttributeError:  # this thread's first temporary
            local = self.__dict__.setdefault("_temporaries", threading.local())
            buffers, views = local.__dict__.setdefault("buffers", {}), local.__dict__.setdefault("views", {})
        key = (name, _dtype_key(dtype))
        buf, view = buffers.get(key), views.get((key, shape))
        if view is not None and view[0] is buf:  # this shape's view of the current buffer (slicing a tensor
            return view[1]                       # costs microseconds)
        n = math.prod(shape)
        if buf is None or buf.shape[0] < n:
            buf = buffers[key] = self.empty((max(n, 1),), dtype)
        views[key, shape] = buf, buf[:n].reshape(shape)
        return views[key, shape][1]

    # ----------------------------------------------------------------- matrix products
    def matmul(self, a, b, out) -> Any:
        return self.xp.matmul(a, b, out=out)

    def matmul_acc(self, a, b, out, scratch=None) -> None:
        """out += a @ b for 2-D arrays. Backends that cannot accumulate inside the GEMM compute the
        product into ``scratch`` (same shape as out; allocated when None) and add it."""
        if scratch is None:
            out += self.xp.matmul(a, b)
            return
        self.xp.matmul(a, b, out=scratch)
        out += scratch

    def linear(self, x, weight, bias, activation: str, z, out) -> Any:
        """out = act(z), z = x @ weight.T + bias (bias None: none), for 2-D x (M, in) and weight (out_f, in):
        Dense's forward. ``out`` may be ``z``. Here the bias goes in with the activation (one pass on the
        NumPy backend); a backend may add it inside the product instead."""
        self.matmul(x, weight.T, out=z)
        return self.activation(activation, z, out, bias=bias)

    def linear_grads(self, dz, x, weight, dweight, dx, scratch=None) -> None:
        """The two products of a linear map's backward, for z = x weight^T with dz (M, out), x (M, in),
        weight (out, in): dweight (out, in) += dz^T x unless dweight is None (``matmul_acc``, with its
        ``scratch``), and dx (M, in) = dz weight unless dx is None. They do not depend on each other: a
        backend may run them at once."""
        if dweight is not None:
            self.matmul_acc(dz.T, x, dweight, scratch)
        if dx is not None:
            self.matmul(dz, weight, out=dx)

    def sum_rows_acc(self, x, out) -> None:
        """out += x summed over every axis but the last (bias gradients)."""
        out += self.xp.sum(x.reshape(-1, x.shape[-1]), axis=0)

    # ----------------------------------------------------------------- convolution and pooling (NCHW)
    # conv2d and conv2d_backward serve every convolution layer: a Conv2D runs them as written, a
    # ConvTranspose2D runs them the other way round (its forward is conv2d_backward's dx, its backward
    # conv2d). This generic version is im2col + one GEMM per group; TorchOps calls PyTorch's kernels.
    def conv2d(self, x, weight, bias, geom: ConvGeometry, out, scratch: Scratch) -> Any:
        """out (N, O, OH, OW) = the cross-correlation of x (N, C, H, W) with weight (O, C/groups, kh, kw),
        plus bias (O,) unless None; returns out (a new array for ``out=NEW``).

        ``scratch(name, shape)`` gives reusable buffers (a layer's ``workspace``); the columns of x stay
        in ``scratch("conv.cols")`` for ``conv2d_backward``'s weight gradient.
        """
        (n, c), o, g = x.shape[:2], weight.shape[0], geom.groups
        (kh, kw), (oh, ow) = geom.kernel, geom.out_size
        out = self._conv_output(out, x, weight, geom)
        m = n * oh * ow
        cols = scratch("conv.cols", (c, kh, kw, n, oh, ow))
        self.im2col(self.pad2d(x, geom, scratch), geom, cols)
        z = scratch("conv.gemm", (o, n, oh * ow))
        self.matmul(_groups(weight, g, c // g * kh * kw), _groups(cols, g, m), out=_groups(z, g, m))
        if bias is not None:  # here, where rows are contiguous (an add into the transposed copy is 3x slower)
            z += bias.reshape(o, 1, 1)
        self.copy_(out.reshape(n, o, oh * ow), self.swapaxes(z, 0, 1))  # (O, N, P) -> (N, O, P)
        return out

    def conv2d_backward(self, dy, x, weight, geom: ConvGeometry, dx, dweight, dbias, scratch: Scratch) -> Any:
        """The gradients of ``conv2d`` from dy = dL/dout (N, O, OH, OW): dx = dL/dx (written), dweight +=
        dL/dweight and dbias (O,) += dy summed over N, OH, OW, each skipped when None (PyTorch's
        ``convolution_backward`` with its output mask). ``x`` is the forward input; this version reads the
        columns that ``conv2d`` left in scratch instead, and needs neither x nor them for dx. Returns dx."""
        dx = self._conv_input_grad(dx, dy, weight, geom)
        n, o, g = dy.shape[0], weight.shape[0], geom.groups
        c, (kh, kw), (oh, ow) = weight.shape[1] * g, geom.kernel, geom.out_size
        m, k = n * oh * ow, c // g * kh * kw
        dy_t = scratch("conv.dy_t", (o, n, oh * ow))
        self.copy_(dy_t, self.swapaxes(dy.reshape(n, o, oh * ow), 0, 1))  # (N, O, P) -> (O, N, P)
        if dbias is not None:
            db = scratch("conv.db", (o,))
            self.xp.sum(dy_t.reshape(o, m), axis=1, out=db)
            dbias += db
        dy_t, w = _groups(dy_t, g, m), _groups(weight, g, k)
        if dweight is not None:
            cols, dw = _groups(scratch("conv.cols", (c, kh, kw, n, oh, ow)), g, m), _groups(dweight, g, k)
            self.matmul_acc(dy_t, self.swapaxes(cols, -1, -2), dw, scratch("conv.dw", tuple(dw.shape)))
        if dx is not None:
            dcols = scratch("conv.dcols", (c, kh, kw, n, oh, ow))
            self.matmul(self.swapaxes(w, -1, -2), dy_t, out=_groups(dcols, g, m))
            self.col2im(dcols, geom, dx)
        return dx

    def _new_like(self, out, x) -> Any:
        """``out``, or for ``NEW`` a new array of x's shape and dtype."""
        return self.empty(tuple(x.shape), x.dtype) if out is NEW else out

    def _conv_output(self, out, x, weight, geom: ConvGeometry) -> Any:
        """``conv2d``'s out, or for ``NEW`` a new (N, O, OH, OW) array."""
        return self.empty((x.shape[0], weight.shape[0], *geom.out_size), x.dtype) if out is NEW else out

    def _conv_input_grad(self, dx, dy, weight, geom: ConvGeometry) -> Any:
        """``conv2d_backward``'s dx (None: not asked for), or for ``NEW`` a new (N, C, H, W) array."""
        shape = (dy.shape[0], weight.shape[1] * geom.groups, *geom.in_size)
        return self.empty(shape, dy.dtype) if dx is NEW else dx

    def pad2d(self, x, geom: ConvGeometry, scratch: Scratch) -> Any:
        """x (N, C, H, W) inside zeros of ``geom.padding`` (in ``scratch("conv.padded")``), or x itself."""
        ((top, _), (left, _)), (h, w) = geom.padding, geom.in_size
        if not any(any(side) for side in geom.padding):
            return x
        padded = scratch("conv.padded", (x.shape[0], x.shape[1], *geom.padded_size))
        self.fill_(padded, 0.0)
        self.copy_(padded[:, :, top:top + h, left:left + w], x)
        return padded

    def im2col(self, x, geom: ConvGeometry, out) -> Any:
        """Patches of ``x`` (N, C, H, W), already padded, as columns: out (C, kh, kw, N, OH, OW).

        out[c, i, j, n, oh, ow] = x[n, c, oh*sh + i*dh, ow*sw + j*dw]; seen as a (C*kh*kw, N*OH*OW)
        matrix, a convolution is one GEMM ``weight.reshape(O, -1) @ out`` (per group).
        """
        (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
        oh, ow = out.shape[4:]
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
                cols = slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)
                self.copy_(out[:, i, j], self.swapaxes(x[:, :, rows, cols], 0, 1))
        return out

    def col2im(self, cols, geom: ConvGeometry, out) -> Any:
        """The adjoint of ``im2col`` of the zero-padded input: out (N, C, H, W), unpadded, = every
        column entry added back where it was read (entries that read the padding are dropped)."""
        (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
        ((top, _), (left, _)), (h, w) = geom.padding, geom.in_size
        oh, ow = cols.shape[4:]
        size = tuple(max(a, b) for a, b in zip(geom.padded_size, geom.reach, strict=True))
        padded = self.zeros((out.shape[0], out.shape[1], *size), out.dtype)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
                cols_ = slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)
                padded[:, :, rows, cols_] += self.swapaxes(cols[:, i, j], 0, 1)
        self.copy_(out, padded[:, :, top:top + h, left:left + w])
        return out

    def max_pool2d(self, x, kernel: tuple, stride: tuple, padding: tuple, out, index) -> Any:
        """out = the max of each window of ``x`` (N, C, H, W), padding as -inf; ``index`` (int64) gets
        the position h*W + w of each max in its plane, as ``F.max_pool2d(..., return_indices=True)``, or
        is None (inference: the maxima alone).
        The size of ``out`` says whether the last, partial windows count (``ceil_mode``).
        Ties keep the first maximum in the window's row-major order."""
        w, reads = x.shape[3], _window_reads(kernel, stride, padding, x.shape[2:], out.shape[2:])
        out[...] = -np.inf
        where = np.zeros(out.shape, np.int64)
        for (r, c), (rows, cols), inside in reads:
            v = np.where(inside, x[:, :, rows][:, :, :, cols], -np.inf)
            better = v > out
            out[...] = np.where(better, v, out)
            where[...] = np.where(better, (r[:, None] * w + c[None, :]), where)
        if index is not None:
            index[...] = where
        return out

    def avg_pool2d(self, x, kernel: tuple, stride: tuple, padding: tuple, inverse, out) -> Any:
        """out = the sum of each window of ``x`` (N, C, H, W), padding as zeros, times ``inverse`` (OH, OW):
        each window's 1/divisor (the layer's count_include_pad and ceil_mode rules). The size of ``out``
        says whether the last, partial windows count."""
        out[...] = 0.0
        for _, (rows, cols), inside in _window_reads(kernel, stride, padding, x.shape[2:], out.shape[2:]):
            out += np.where(inside, x[:, :, rows][:, :, :, cols], 0.0)
        out *= inverse
        return out

    def avg_pool2d_backward(self, dy, kernel: tuple, stride: tuple, padding: tuple, inverse, out) -> Any:
        """out (N, C, H, W) = dy times ``inverse``, added back to every input position of its window."""
        g = dy * inverse
        out[...] = 0.0
        for _, (rows, cols), inside in _window_reads(kernel, stride, padding, out.shape[2:], dy.shape[2:]):
            rows, cols = np.broadcast_arrays(rows[:, None], cols[None, :])
            np.add.at(out, (slice(None), slice(None), rows, cols), np.where(inside, g, 0.0))
        return out

    def max_pool2d_backward(self, dy, index, out) -> Any:
        """out (N, C, H, W) = dy added at the ``index`` positions of each plane (zero elsewhere)."""
        n, c = out.shape[:2]
        planes = np.zeros((n * c, out.shape[2] * out.shape[3]), out.dtype)
        for p, (idx, d) in enumerate(zip(index.reshape(n * c, -1), dy.reshape(n * c, -1), strict=True)):
            np.add.at(planes[p], idx, d)
        out[...] = planes.reshape(out.shape)
        return out

    # ----------------------------------------------------------------- activations
    def activation(self, name: str, z, out, alpha: float | None = None, *, bias=None) -> Any:
        """out = act(z) for a name in ACTIVATIONS; ``out`` may be ``z``. Softmaxes use the last axis.

        ``alpha`` is LeakyReLU's negative slope or ELU's alpha (DEFAULT_ALPHA when None). With
        ``bias`` (last-axis vector) ``z += bias`` first, in place, in the same pass (Dense).
        """
        if bias is not None:
            z += bias
        a = DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha
        v = z.astype(np.float64)  # the specification computes in float64 and rounds once
        if name == "linear":
            y = v
        elif name == "relu":
            y = np.maximum(v, 0.0)
        elif name == "sigmoid":
            y = _sigmoid(v)
        elif name == "tanh":
            y = np.tanh(v)
        elif name == "leaky_relu":
            y = np.where(v > 0, v, a * v)
        elif name == "elu":
            y = np.where(v > 0, v, a * np.expm1(np.minimum(v, 0.0)))
        elif name == "selu":
            y = SELU_SCALE * np.where(v > 0, v, SELU_ALPHA * np.expm1(np.minimum(v, 0.0)))
        elif name == "gelu":  # v Phi(v), Phi the standard normal CDF
            y = v * _normal_cdf(v)
        elif name == "gelu_tanh":
            y = 0.5 * v * (1.0 + np.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v ** 3)))
        elif name == "silu":
            y = v * _sigmoid(v)
        elif name == "softmax":
            e = np.exp(v - v.max(axis=-1, keepdims=True))
            y = e / e.sum(axis=-1, keepdims=True)
        else:  # log_softmax
            shifted = v - v.max(axis=-1, keepdims=True)
            y = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        out[...] = y
        return out

    def activation_backward(self, name: str, dy, z, y, out, alpha: float | None = None, *,
                            bias_grad=None) -> Any:
        """out = dL/dz from dy = dL/dy, the pre-activation ``z`` and the output ``y``.

        For names in OUTPUT_DERIVATIVE ``z`` is not read (pass None). ``out`` may be ``dy``.
        Derivatives at 0 follow PyTorch: ReLU'(0) = 0, LeakyReLU'(0) = alpha, ELU'(0) = alpha.
        With ``bias_grad``, also ``bias_grad += out`` summed over every axis but the last (Dense).
        """
        a = DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha
        d, y = dy.astype(np.float64), None if y is None else y.astype(np.float64)
        v = None if z is None else z.astype(np.float64)
        if name == "linear":
            g = d
        elif name == "relu":
            g = d * (y > 0)
        elif name == "sigmoid":
            g = d * y * (1.0 - y)
        elif name == "tanh":
            g = d * (1.0 - y * y)
        elif name == "leaky_relu":
            g = d * np.where(v > 0, 1.0, a)
        elif name == "elu":
            g = d * np.where(v > 0, 1.0, a * np.exp(np.minimum(v, 0.0)))
        elif name == "selu":
            g = d * SELU_SCALE * np.where(v > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(v, 0.0)))
        elif name == "gelu":  # Phi(v) + v phi(v)
            g = d * (_normal_cdf(v) + v * np.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi))
        elif name == "gelu_tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v ** 3))
            dt = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * v * v)
            g = d * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * dt)
        elif name == "silu":
            s = _sigmoid(v)
            g = d * s * (1.0 + v * (1.0 - s))
        elif name == "softmax":
            g = y * (d - (d * y).sum(axis=-1, keepdims=True))
        else:  # log_softmax
            g = d - np.exp(y) * d.sum(axis=-1, keepdims=True)
        out[...] = g
        if bias_grad is not None:
            self.sum_rows_acc(out, bias_grad)
        return out

    def arange(self, n: int) -> Any:
        """0..n-1 as an integer index array (cached by callers in their workspace)."""
        return self.xp.arange(n)

    # ----------------------------------------------------------------- sequence models (norms, attention)
    def norm_rows(self, x, weight, bias, eps: float, center: bool, out, mean, rstd) -> Any:
        """LayerNorm (``center``) or RMSNorm over the last axis of 2-D ``x``.

        out = (x - mean) * rstd * weight (+ bias), rstd = 1/sqrt(var + eps);
        for RMSNorm mean = 0 and var = mean(x^2).
        Saves ``mean`` and ``rstd`` (one per row) for ``norm_rows_backward``. ``bias`` may be None.
        Returns out (a new array for ``out=NEW``).
        """
        out = self._new_like(out, x)
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        mu = x.mean(axis=1) if center else np.zeros(len(x))
        rs = 1.0 / np.sqrt(((x - mu[:, None]) ** 2).mean(axis=1) + eps)
        mean[...], rstd[...] = mu, rs
        y = (x - mu[:, None]) * rs[:, None] * weight
        out[...] = (y if bias is None else y + bias).reshape(out.shape)
        return out

    def norm_rows_backward(self, dy, x, weight, mean, rstd, center: bool, dx, dweight, dbias) -> Any:
        """dx of ``norm_rows``; ACCUMULATES into ``dweight`` and ``dbias`` (None when there is no bias).

        With xhat = (x - mean) rstd and g = dy weight: dx = rstd (g - mean(g xhat) xhat - mean(g)),
        the last term only when centred. Returns dx (a new array for ``dx=NEW``)."""
        dx = self._new_like(dx, dy)
        dy = dy.reshape(-1, dy.shape[-1]).astype(np.float64)
        x = x.reshape(dy.shape).astype(np.float64)
        rs = rstd.astype(np.float64)[:, None]
        xhat = (x - mean.astype(np.float64)[:, None]) * rs
        g = dy * weight
        d = g - xhat * (g * xhat).mean(axis=1, keepdims=True)
        if center:
            d -= g.mean(axis=1, keepdims=True)
        dx[...] = (d * rs).reshape(dx.shape)
        dweight += (dy * xhat).sum(axis=0)
        if dbias is not None:
            dbias += dy.sum(axis=0)
        return dx

    def batch_norm_stats(self, x, mean, var) -> None:
        """Per channel of contiguous ``x`` (N, C, M): mean (C,) and biased variance var (C,) over (N, M)."""
        x64 = x.astype(np.float64)
        mean[...] = x64.mean(axis=(0, 2))
        var[...] = x64.var(axis=(0, 2))

    def batch_norm_training(self, x, weight, bias, eps: float, out, mean, var, rstd,
                            relu: bool = False) -> Any:
        """The training forward: ``batch_norm_stats`` into mean and var (C,), rstd (C,) = 1/sqrt(var + eps),
        then ``batch_norm`` into out. Returns out (a new array for ``out=NEW``)."""
        self.batch_norm_stats(x, mean, var)
        self.copy_(rstd, var)
        rstd += eps
        rstd **= -0.5
        return self.batch_norm(x, mean, rstd, weight, bias, out, relu)

    def fused_batch_norm_training(self, x, weight, bias, eps: float, out, mean, rstd, relu: bool,
                                  running_mean, running_var, momentum: float) -> Any:
        """Optionally ``batch_norm_training`` and the running averages' update in one fused kernel
        (running = (1 - momentum) running + momentum * the batch's mean, and its unbiased variance, as
        PyTorch): returns out (a new array for ``out=NEW``), or None where the backend has none (the layer
        then calls ``batch_norm_training`` and updates the averages itself)."""
        return None

    def batch_norm(self, x, mean, rstd, weight, bias, out, relu: bool = False) -> Any:
        """out = (x - mean[c]) * rstd[c] * weight[c] + bias[c] for x (N, C, M) and per-channel (C,) stats;
        with ``relu`` max(that, 0). Returns out (a new array for ``out=NEW``)."""
        out = self._new_like(out, x)
        out[...] = (x - mean[:, None]) * (rstd * weight)[:, None] + bias[:, None]
        if relu:
            np.maximum(out, 0.0, out=out)
        return out

    def batch_norm_backward(self, dy, x, mean, rstd, weight, training: bool, dx, dweight, dbias,
                            relu_out=None) -> Any:
        """The gradients of ``batch_norm`` with xhat = (x - mean) rstd: dbias = sum dy and dweight = sum dy
        xhat over (N, M), WRITTEN (C,); dx (N, C, M), unless None, = weight rstd (dy - dbias/M - xhat
        dweight/M) when the statistics were the batch's (``training``), else weight rstd dy. After a
        ``relu`` forward, ``relu_out`` is its output and dy counts only where relu_out > 0. Returns dx (a new
        array for ``dx=NEW``)."""
        dx = self._new_like(dx, dy)
        x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
        if relu_out is not None:
            dy64 = np.where(relu_out > 0, dy64, 0.0)
        xhat = (x64 - mean[:, None]) * rstd[:, None]
        dbias[...] = dy64.sum(axis=(0, 2))
        dweight[...] = (dy64 * xhat).sum(axis=(0, 2))
        if dx is not None:
            m = x.shape[0] * x.shape[2]
            g = dy64 - (dbias[:, None] + xhat * dweight[:, None]) / m if training else dy64
            dx[...] = g * (weight * rstd)[:, None]
        return dx

    def group_norm(self, x, weight, bias, groups: int, eps: float, out, mean, rstd) -> Any:
        """GroupNorm of contiguous ``x`` (N, C, M): each sample's C channels in ``groups`` equal blocks,
        each normalised over its (C / groups) * M values; out = (x - mean) * rstd * weight[c] + bias[c].
        Saves ``mean`` and ``rstd`` (N * groups) for ``group_norm_backward``. Returns out (a new array for
        ``out=NEW``)."""
        out = self._new_like(out, x)
        n, c, m = x.shape
        blocks = x.reshape(n * groups, -1).astype(np.float64)  # one row per (sample, group)
        mu, rs = blocks.mean(axis=1), 1.0 / np.sqrt(blocks.var(axis=1) + eps)
        mean[...], rstd[...] = mu, rs
        xhat = ((blocks - mu[:, None]) * rs[:, None]).reshape(n, c, m)
        out[...] = xhat * weight[:, None] + bias[:, None]
        return out

    def group_norm_backward(self, dy, x, weight, mean, rstd, groups: int, dx, dweight, dbias) -> Any:
        """dx of ``group_norm`` (all (N, C, M)); ACCUMULATES into ``dweight`` and ``dbias`` (C).

        Per (sample, group) block, with g = dy weight[c]: dx = rstd (g - mean(g) - xhat mean(g xhat)).
        Returns dx (a new array for ``dx=NEW``)."""
        dx = self._new_like(dx, dy)
        n, c, m = x.shape
        mu, rs = mean.astype(np.float64)[:, None], rstd.astype(np.float64)[:, None]
        dy = dy.astype(np.float64)
        xh = (x.reshape(n * groups, -1) - mu) * rs
        g = (dy * weight[:, None]).reshape(n * groups, -1)
        d = g - g.mean(axis=1, keepdims=True) - xh * (g * xh).mean(axis=1, keepdims=True)
        dx[...] = (d * rs).reshape(n, c, m)
        dweight += (dy * xh.reshape(n, c, m)).sum(axis=(0, 2))
        dbias += dy.sum(axis=(0, 2))
        return dx

    def attention_softmax(self, scores, out, causal: bool, scale: float = 1.0) -> Any:
        """P = softmax(scale * scores) over the last axis of (..., T, T) scores; with ``causal`` query t
        sees keys 0..t only (P is 0 above the diagonal). ``out`` may be ``scores``."""
        s = scores.astype(np.float64) * scale
        if causal:
            t = s.shape[-1]
            s = np.where(np.triu(np.ones((t, t), bool), 1), -np.inf, s)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        out[...] = e / e.sum(axis=-1, keepdims=True)
        return out

    def attention_softmax_backward(self, dprobs, probs, out, scale: float = 1.0) -> Any:
        """dL/dscores of ``attention_softmax``: scale * P (dP - rowsum(dP P)). ``out`` may be ``dprobs``."""
        d, p = dprobs.astype(np.float64), probs.astype(np.float64)
        out[...] = scale * p * (d - (d * p).sum(axis=-1, keepdims=True))
        return out

    def attention(self, q, k, v, probs, out, causal: bool, scale: float, mask, keep_scale: float,
                  scratch: Scratch) -> None:
        """Scaled dot-product attention of head stacks q (B, H, Tq, hd), k and v (B, H, Tk, hd):
        probs (B, H, Tq, Tk) = attention_softmax(q k^T, causal, scale), saved for backward, and out (B, H,
        Tq, hd) = W v with W = probs, or with dropout (``mask`` (B, H, Tq, Tk) bool, else None) probs *
        mask * keep_scale. ``probs`` None: nothing is kept for a backward (``nn.no_grad``), the
        probabilities pass through scratch. ``scratch(name, shape)``: buffers that live within the call."""
        if probs is None:
            probs = scratch("attention.probs", (*q.shape[:3], k.shape[2]))
        self.matmul(q, self.swapaxes(k, -1, -2), out=probs)
        self.attention_softmax(probs, probs, causal, scale)
        weights = probs if mask is None else \
            self.apply_mask(probs, mask, keep_scale, scratch("attention.weights", tuple(probs.shape)))
        self.matmul(weights, v, out=out)

    def attention_backward(self, do, probs, q, k, v, dq, dk, dv, causal: bool, scale: float, mask,
                           keep_scale: float, scratch: Scratch) -> None:
        """dq, dk, dv (written, shaped as q, k, v) of ``attention`` from dL/dout ``do`` and its saved
        probs: dv = W^T do, dW = do v^T (* mask * keep_scale), dS = attention_softmax_backward(dW, probs),
        dq = dS k, dk = dS^T q."""
        grad = scratch("attention.weights", tuple(probs.shape))  # W, then dW and dS (forward's buffer)
        weights = probs if mask is None else self.apply_mask(probs, mask, keep_scale, grad)
        self.matmul(self.swapaxes(weights, -1, -2), do, out=dv)
        self.matmul(do, self.swapaxes(v, -1, -2), out=grad)
        if mask is not None:
            self.apply_mask(grad, mask, keep_scale, grad)
        self.attention_softmax_backward(grad, probs, grad, scale)
        self.matmul(grad, k, out=dq)
        self.matmul(self.swapaxes(grad, -1, -2), q, out=dk)

    def fused_attention(self, q, k, v, causal: bool, scale: float) -> tuple | None:
        """Optionally ``attention`` without dropout as one fused kernel that keeps no probabilities
        (PyTorch's memory-efficient kernel on a GPU, FlashAttention's kin): returns (out, saved), out
        (B, H, Tq, hd) the backend's own array and ``saved`` what ``fused_attention_backward`` needs (a row
        statistic per query, not (Tq, Tk)), or None where the backend has no such kernel for these operands
        (``attention`` then runs)."""
        return None

    def fused_attention_backward(self, do, q, k, v, out, saved, dq, dk, dv, causal: bool,
                                 scale: float) -> None:
        """dq, dk, dv (written, shaped as q, k, v) of ``fused_attention``'s ``out`` from dL/dout ``do``."""
        raise NotImplementedError(f"{self.name} backend: fused_attention returned None, so no backward")

    # ----------------------------------------------------------------- recurrent cells (LSTM, GRU), one step
    def row_blocks(self, n: int, min_rows: int | None = None) -> tuple[slice, ...]:
        """The row ranges of an n-row batch that ``run_blocks`` may run at once, each of at least
        ``min_rows`` rows (None: the backend's default): one range covering every row here and on
        backends whose ops already use every core."""
        return (slice(None),)

    def run_blocks(self, tasks) -> None:
        """Run independent tasks (one per ``row_blocks`` range) and return when all are done."""
        for task in tasks:
            task()

    def lstm_sequence(self, seq, w_ih, w_hh, b_ih, b_hh, reverse: bool, saved: dict):
        """Optionally one LSTM layer-direction over the whole sequence in one call, from the zero state:
        seq (T, N, I) -> the state after each step, h_t (T, N, H) in time order (the kernel's own output
        buffer); what the backward needs goes into ``saved``. Returns None where the backend has no such
        kernel (here, and on NumPy): the layer then runs its cells step by step."""
        return None

    def lstm_sequence_backward(self, seq, w_ih, w_hh, b_ih, b_hh, reverse: bool, saved: dict, dh, dout):
        """The gradients of an ``lstm_sequence`` that returned its states, from dh (N, H) = dL/d(final state)
        and dout (T, N, H) = dL/dh_t from above (or None): (ds (T, N, I), dW_ih, dW_hh, db_ih, db_hh)."""
        raise NotImplementedError("lstm_sequence_backward: this backend has no lstm_sequence")

    def prepacked_shape(self, shape: tuple[int, int], dtype) -> tuple[int, ...]:
        """The shape of the buffer ``prepack`` fills for a (K, N) matrix of ``dtype``: (K, N) here."""
        return tuple(shape)

    def prepack(self, w, out):
        """``w`` (K, N), the right operand of every per-step product of a ``*_steps`` loop, into ``out``
        (``prepacked_shape``) in the layout those products read, once per pass: a contiguous copy here
        (BLAS ran h @ W_hh^T 1.3x slower from a transposed view); NumPy packs column panels for its
        register-blocked GEMM (``packed_gemm``). Returns ``out``."""
        self.copy_(out, w)
        return out

    def lstm_steps(self, seq, w_ih_t, gates, h, c, tanh_c, w_hh_t, bias, gh, reverse: bool,
                   rows: slice) -> None:
        """The batch rows ``rows`` (a block) through a whole LSTM layer-direction, step by step: for each t
        (from the end with ``reverse``) gates[t] = seq[t] @ w_ih_t and gh = h_prev @ w_hh_t, then
        ``lstm_cell(gates[t], gh, bias, c_prev, c_t, tanh_c[t], h_t)`` on those rows. seq (T, N, I) is the
        layer's input, gates (T, N, 4H) receive the gate activations; h, c (T + 1, N, H) have the zero
        state at index 0 (at T with ``reverse``), where prev = t (t + 1) and the step writes t + 1 (t);
        w_ih_t, w_hh_t: W_ih^T (I, 4H) and W_hh^T (H, 4H) through ``prepack``; gh (B, 4H) the block's
        scratch. (Where the block is the whole batch, the input products of all steps are one product
        before the loop: on a GPU one kernel instead of T.)"""
        gates, h, c, tanh_c = gates[:, rows], h[:, rows], c[:, rows], tanh_c[:, rows]
        for t, prev, new in self._input_steps(seq, w_ih_t, gates, rows, reverse):
            self.matmul(h[prev], w_hh_t, out=gh)
            self.lstm_cell(gates[t], gh, bias, c[prev], c[new], tanh_c[t], h[new])

    def lstm_steps_backward(self, seq, h, gates, c, tanh_c, dh, dc, dgates, w_hh, dout, reverse: bool,
                            rows: slice, dw_ih=None, dw_hh=None, dbias=None) -> None:
        """The backward of ``lstm_steps`` for the rows ``rows``, in the reverse of its order: dh (N, H)
        holds dL/d(last state) on entry (dL/dh_t is added from ``dout`` (T, N, H) when not None), dc
        (N, H) zeros; each step writes dgates[t] = dL/d(pre-activations) (``lstm_cell_backward``) and,
        but for the step from the zero state, dh = dgates[t] @ w_hh (W_hh (4H, H) through ``prepack``).
        Unless ``dw_ih`` is None, adds the block's weight gradients: dw_ih (4H, I) += dgates^T s,
        dw_hh (4H, H) += dgates^T h_prev, dbias (4H,) += dgates summed over steps and rows (the one
        gradient of both biases)."""
        seq, h, gates, c, tanh_c, dgates = (a[:, rows] for a in (seq, h, gates, c, tanh_c, dgates))
        dh, dc = dh[rows], dc[rows]
        for t, prev, last in _backward_steps(len(gates), reverse):
            if dout is not None:
                dh += dout[t, rows]
            self.lstm_cell_backward(gates[t], c[prev], tanh_c[t], dh, dc, dgates[t])
            if not last:
                self.matmul(dgates[t], w_hh, out=dh)
        if dw_ih is not None:
            self._add_weight_grads(seq, h, reverse, dgates, dgates, dw_ih, dw_hh, dbias, None)

    def gru_steps(self, seq, w_ih_t, gates, h, hn, w_hh_t, b_ih, b_hh, gh, reverse: bool,
                  rows: slice) -> None:
        """``lstm_steps`` for a GRU: per step gates[t] = seq[t] @ w_ih_t and gh = h_prev @ w_hh_t, then
        ``gru_cell(gates[t], gh, b_ih, b_hh, h_prev, hn[t], h_t)`` on the rows ``rows``; gates (T, N, 3H),
        hn (T, N, H), gh (B, 3H)."""
        gates, h, hn = gates[:, rows], h[:, rows], hn[:, rows]
        for t, prev, new in self._input_steps(seq, w_ih_t, gates, rows, reverse):
            self.matmul(h[prev], w_hh_t, out=gh)
            self.gru_cell(gates[t], gh, b_ih, b_hh, h[prev], hn[t], h[new])

    def _input_steps(self, seq, w_ih_t, gates, rows: slice, reverse: bool) -> Iterator[tuple[int, int, int]]:
        """``_forward_steps`` of a block's forward loop, with its input product gates[t] = seq[t] @ w_ih_t
        done by the time each step is yielded (gates: the block's (T, B, G*H) view): one product of all
        steps before the first where the block is the whole batch (on a GPU one kernel instead of T),
        else one per step."""
        whole = len(range(seq.shape[1])[rows]) == seq.shape[1]
        seq = seq[:, rows]
        if whole:
            self.matmul(_steps_as_rows(seq), w_ih_t, out=_steps_as_rows(gates))
        for t, prev, new in _forward_steps(len(gates), reverse):
            if not whole:
                self.matmul(seq[t], w_ih_t, out=gates[t])
            yield t, prev, new

    def gru_steps_backward(self, seq, h, gates, hn, dh, dgx, dgh, w_hh, dout, dh_direct, reverse: bool,
                           rows: slice, dw_ih=None, dw_hh=None, db_ih=None, db_hh=None) -> None:
        """The backward of ``gru_steps`` for the rows ``rows`` (as ``lstm_steps_backward``): each step
        writes dgx[t], dgh[t] (``gru_cell_backward``) and, but for the step from the zero state, dh =
        dgh[t] @ w_hh (3H, H) + dh z; dh_direct (B, H) scratch. Unless ``dw_ih`` is None, adds the block's
        dw_ih += dgx^T s, dw_hh += dgh^T h_prev, db_ih += dgx and db_hh += dgh summed."""
        seq, h, gates, hn, dgx, dgh = (a[:, rows] for a in (seq, h, gates, hn, dgx, dgh))
        dh = dh[rows]
        for t, prev, last in _backward_steps(len(gates), reverse):
            if dout is not None:
                dh += dout[t, rows]
            self.gru_cell_backward(gates[t], hn[t], h[prev], dh, dgx[t], dgh[t], dh_direct)
            if not last:
                self.matmul(dgh[t], w_hh, out=dh)
                dh += dh_direct
        if dw_ih is not None:
            self._add_weight_grads(seq, h, reverse, dgx, dgh, dw_ih, dw_hh, db_ih, db_hh)

    def _add_weight_grads(self, seq, h, reverse: bool, d_in, d_rec, dw_ih, dw_hh, db_ih, db_hh) -> None:
        """A block's recurrent weight gradients after its loop, each one product over its steps: dw_ih +=
        d_in^T s, dw_hh += d_rec^T h_prev, db_ih += d_in summed, db_hh += d_rec summed (unless None); every
        array (T, B, .) of the block's rows, h (T + 1, B, H)."""
        off, steps = int(reverse), len(seq)
        for grad, d, right in ((dw_ih, d_in, seq), (dw_hh, d_rec, h[off:steps + off])):  # h_prev of each step
            scratch = self.temporary("rnn.dw", tuple(grad.shape), grad.dtype)
            self.matmul_acc(_steps_as_rows(d).T, _steps_as_rows(right), grad, scratch)
        for grad, d in ((db_ih, d_in), (db_hh, d_rec)):
            if grad is not None:
                self.sum_rows_acc(_steps_as_rows(d), grad)

    def lstm_cell(self, gates, gh, bias, c_prev, c, tanh_c, h) -> None:
        """One LSTM step in PyTorch's gate order i, f, g, o; every array 2-D ``(N, .)`` and contiguous.

        ``gates`` (N, 4H) holds x W_ih^T on entry and, on exit, the activations sigmoid(i), sigmoid(f),
        tanh(g), sigmoid(o) of gates + gh + bias (gh = h_prev W_hh^T, bias = b_ih + b_hh). Writes
        c = f c_prev + i g, tanh_c = tanh(c) and h = o tanh_c.
        """
        hid = c.shape[1]
        pre = gates + gh + bias
        gates[:, :2 * hid] = _sigmoid(pre[:, :2 * hid])
        gates[:, 2 * hid:3 * hid] = np.tanh(pre[:, 2 * hid:3 * hid])
        gates[:, 3 * hid:] = _sigmoid(pre[:, 3 * hid:])
        i, f, g, o = np.split(gates, 4, axis=1)
        c[...] = f * c_prev + i * g
        tanh_c[...] = np.tanh(c)
        h[...] = o * tanh_c

    def lstm_cell_backward(self, gates, c_prev, tanh_c, dh, dc, dgates) -> None:
        """dgates (N, 4H) = dL/d(pre-activations) of ``lstm_cell`` given dh = dL/dh_t.

        ``dc`` holds dL/dc_t from step t+1 on entry and dL/dc_{t-1} on exit.
        """
        i, f, g, o = np.split(gates, 4, axis=1)
        dc += dh * o * (1.0 - tanh_c * tanh_c)
        dgates[...] = np.concatenate([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f),
                                      dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], axis=1)
        dc *= f

    def gru_cell(self, gates, gh, b_ih, b_hh, h_prev, hn, h) -> None:
        """One GRU step in PyTorch's gate order r, z, n; every array 2-D ``(N, .)`` and contiguous.

        ``gates`` (N, 3H) holds gx = x W_ih^T on entry; gh = h_prev W_hh^T. With a = gx + b_ih and
        b = gh + b_hh: r = sigmoid(a_r + b_r), z = sigmoid(a_z + b_z), n = tanh(a_n + r * b_n),
        h = (1 - z) n + z h_prev. On exit ``gates`` holds r, z, n; ``hn`` = b_n is kept for backward.
        """
        a_r, a_z, a_n = np.split(gates + b_ih, 3, axis=1)
        b_r, b_z, b_n = np.split(gh + b_hh, 3, axis=1)
        r, z = _sigmoid(a_r + b_r), _sigmoid(a_z + b_z)
        n = np.tanh(a_n + r * b_n)
        hn[...] = b_n
        gates[...] = np.concatenate([r, z, n], axis=1)
        h[...] = (1.0 - z) * n + z * h_prev

    def gru_cell_backward(self, gates, hn, h_prev, dh, dgx, dgh, dh_direct) -> None:
        """From dh = dL/dh_t: dgx = dL/da, dgh = dL/db (see ``gru_cell``), dh_direct = dh * z, the part of
        dL/dh_{t-1} that skips the recurrent product (the caller adds dgh @ W_hh)."""
        r, z, n = np.split(gates, 3, axis=1)
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dr = dn * hn * r * (1.0 - r)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dgx[...] = np.concatenate([dr, dz, dn], axis=1)
        dgh[...] = np.concatenate([dr, dz, dn * r], axis=1)
        dh_direct[...] = dh * z

    # ----------------------------------------------------------------- optimizer updates (flat buffer spans)
    # Each updates the flat parameters and optimizer state in place with the arithmetic of the single-tensor
    # torch.optim step, over the ranges of ``spans`` (a Spans: the trainable parts of the buffer, each with
    # its parameter group); ``lr[k]`` and ``weight_decay[k]`` are group k's. This reference makes in-place
    # passes over each span, using ``scratch``: ``update_scratch`` arrays shaped like the parameters.
    # NumpyOps fuses each update into one Numba pass over the whole table of spans (no scratch); TorchOps
    # overrides the per-span ``_*_span`` steps with torch.optim's own ops.
    update_scratch = 2

    def sum_of_squares(self, x) -> float:
        """sum(x * x) of a 1-D array, without a temporary."""
        return self.item(self.xp.dot(x, x))

    def clip_norm_(self, x, max_norm: float, eps: float) -> None:
        """Scale the 1-D ``x`` in place by min(1, max_norm / (||x||_2 + eps)): global-norm gradient
        clipping, ``torch.nn.utils.clip_grad_norm_``'s rule."""
        coef = max_norm / (math.sqrt(self.sum_of_squares(x)) + eps)
        if coef < 1.0:
            x *= coef

    def adam_step(self, p, g, m, v, scratch, spans, *, lr, weight_decay, **kw) -> None:
        """One Adam/AdamW update (beta1, beta2, eps, step, decoupled), as ``torch.optim.Adam``/``AdamW``."""
        self._each_span(self._adam_span, spans, (p, g, m, v), scratch, lr, weight_decay, kw)

    def sgd_step(self, p, g, buf, scratch, spans, *, lr, weight_decay, **kw) -> None:
        """One SGD update (momentum, dampening, nesterov, first), as ``torch.optim.SGD`` (``buf``: the
        momentum buffer, None without)."""
        self._each_span(self._sgd_span, spans, (p, g, buf), scratch, lr, weight_decay, kw)

    def rmsprop_step(self, p, g, square_avg, grad_avg, buf, scratch, spans, *, lr, weight_decay,
                     **kw) -> None:
        """One RMSprop update (alpha, eps, momentum, centered), as ``torch.optim.RMSprop`` (``grad_avg``/
        ``buf`` None when unused)."""
        arrays = (p, g, square_avg, grad_avg, buf)
        self._each_span(self._rmsprop_span, spans, arrays, scratch, lr, weight_decay, kw)

    def adagrad_step(self, p, g, state_sum, scratch, spans, *, lr, weight_decay, **kw) -> None:
        """One Adagrad update (eps), as ``torch.optim.Adagrad``; ``lr`` is already decayed (torch's clr)."""
        self._each_span(self._adagrad_span, spans, (p, g, state_sum), scratch, lr, weight_decay, kw)

    def nadam_step(self, p, g, m, v, scratch, spans, *, lr, weight_decay, **kw) -> None:
        """One NAdam update (beta1, beta2, eps, step, mu, mu_next, mu_product), as ``torch.optim.NAdam``."""
        self._each_span(self._nadam_span, spans, (p, g, m, v), scratch, lr, weight_decay, kw)

    def _each_span(self, update, spans, arrays, scratch, lr, weight_decay, kw) -> None:
        for a, b, k in spans.items:
            update(*(None if x is None else x[a:b] for x in arrays), scratch[:, a:b], lr=lr[k],
                   weight_decay=weight_decay[k], **kw)

    def _adam_span(self, p, g, m, v, scratch, *, lr, beta1, beta2, eps, weight_decay, step, decoupled):
        xp, s0, s1 = self.xp, scratch[0], scratch[1]
        if weight_decay and decoupled:
            p *= 1.0 - lr * weight_decay
        if weight_decay and not decoupled:
            g = self._l2_grad(p, g, weight_decay, s0)
        self._moments(g, m, v, beta1, beta2, s1)
        xp.sqrt(v, out=s1)
        s1 /= math.sqrt(1.0 - beta2 ** step)
        s1 += eps
        xp.divide(m, s1, out=s1)
        s1 *= lr / (1.0 - beta1 ** step)
        p -= s1

    def _sgd_span(self, p, g, buf, scratch, *, lr, momentum, dampening, nesterov, weight_decay, first):
        xp, s0, s1 = self.xp, scratch[0], scratch[1]
        if weight_decay:
            g = self._l2_grad(p, g, weight_decay, s0)
        if momentum:
            if first:
                self.copy_(buf, g)
            else:
                buf *= momentum
                xp.multiply(g, 1.0 - dampening, out=s1)
                buf += s1
            if nesterov:
                xp.multiply(buf, momentum, out=s1)
                s1 += g
                g = s1
            else:
                g = buf
        xp.multiply(g, lr, out=s1)
        p -= s1

    def _rmsprop_span(self, p, g, square_avg, grad_avg, buf, scratch, *, lr, alpha, eps, weight_decay,
                      momentum, centered):
        xp, s0, s1 = self.xp, scratch[0], scratch[1]
        if weight_decay:
            g = self._l2_grad(p, g, weight_decay, s0)
        square_avg *= alpha
        xp.multiply(g, g, out=s1)
        s1 *= 1.0 - alpha
        square_avg += s1
        if centered:
            xp.subtract(g, grad_avg, out=s1)  # grad_avg = lerp(grad_avg, g, 1 - alpha)
            s1 *= 1.0 - alpha
            grad_avg += s1
            xp.multiply(grad_avg, grad_avg, out=s1)
            xp.subtract(square_avg, s1, out=s1)
            xp.sqrt(s1, out=s1)
        else:
            xp.sqrt(square_avg, out=s1)
        s1 += eps
        xp.divide(g, s1, out=s1)
        if momentum:
            buf *= momentum
            buf += s1
            xp.multiply(buf, lr, out=s1)
        else:
            s1 *= lr
        p -= s1

    def _adagrad_span(self, p, g, state_sum, scratch, *, lr, eps, weight_decay):
        xp, s0, s1 = self.xp, scratch[0], scratch[1]
        if weight_decay:
            g = self._l2_grad(p, g, weight_decay, s0)
        xp.multiply(g, g, out=s1)
        state_sum += s1
        xp.sqrt(state_sum, out=s1)
        s1 += eps
        xp.divide(g, s1, out=s1)
        s1 *= lr
        p -= s1

    def _nadam_span(self, p, g, m, v, scratch, *, lr, beta1, beta2, eps, weight_decay, step, mu, mu_next,
                    mu_product):
        xp, s0, s1 = self.xp, scratch[0], scratch[1]
        if weight_decay:
            g = self._l2_grad(p, g, weight_decay, s0)
        self._moments(g, m, v, beta1, beta2, s1)
        xp.divide(v, 1.0 - beta2 ** step, out=s1)  # denom = sqrt(v / bias_correction2) + eps
        xp.sqrt(s1, out=s1)
        s1 += eps
        xp.divide(g, s1, out=s0)  # (g may live in s0 already: elementwise in place)
        s0 *= lr * (1.0 - mu) / (1.0 - mu_product)
        p -= s0
        xp.divide(m, s1, out=s0)
        s0 *= lr * mu_next / (1.0 - mu_product * mu_next)
        p -= s0

    def _moments(self, g, m, v, beta1, beta2, scratch) -> None:
        """Adam's and NAdam's moments in place: m = lerp(m, g, 1 - beta1), v = beta2 v + (1 - beta2) g^2."""
        xp = self.xp
        xp.subtract(g, m, out=scratch)
        scratch *= 1.0 - beta1
        m += scratch
        v *= beta2
        xp.multiply(g, g, out=scratch)
        scratch *= 1.0 - beta2
        v += scratch

    def _l2_grad(self, p, g, weight_decay, out):
        """out = g + weight_decay * p (the coupled weight decay of SGD, Adam and RMSprop)."""
        self.xp.multiply(p, weight_decay, out=out)
        out += g
        return out

    # ----------------------------------------------------------------- routing (mixture of experts)
    def topk(self, x, k: int, values, indices) -> None:
        """The ``k`` largest entries of each row of 2-D ``x``, largest first.

        Written into ``values`` and int64 ``indices``; ties keep the lower index first.
        """
        order = np.argsort(-x, axis=1, kind="stable")[:, :k]
        indices[...] = order
        values[...] = np.take_along_axis(x, order, axis=1)

    def group_by_key(self, keys, order, counts) -> None:
        """Stable sort of 1-D int64 ``keys`` in 0..len(counts)-1.

        ``order`` (like keys) receives the positions of key 0, then of key 1, ...;
        ``counts[b]`` how many equal b.
        """
        order[...] = np.argsort(keys, kind="stable")
        self.bincount(keys, counts)

    def bincount(self, keys, out) -> None:
        """out[b] = how many of the 1-D integer ``keys`` equal b, for b in 0..len(out)-1."""
        out[...] = np.bincount(keys, minlength=len(out))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_DTYPE_KEYS: dict = {}  # a dtype as given ("float32", np.dtype, torch.float32) -> str(dtype), once


def _dtype_key(dtype) -> str:
    """str(dtype), the dtype's part of a temporary's key, looked up: str of a NumPy dtype takes ~3 us, and
    a step asks for tens of temporaries (the char GPT's 74, the small ResNet's 170): 3.9 -> 0.4 us a call."""
    key = _DTYPE_KEYS.get(dtype)
    if key is None:
        key = _DTYPE_KEYS[dtype] = str(dtype)
    return key


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _window_reads(kernel: tuple, stride: tuple, padding: tuple, in_size: tuple, out_size: tuple):
    """Per window offset (i, j) of a pooling over (H, W) into (OH, OW): the input row (OH,) and column (OW,)
    each window reads there (in the padding, perhaps), the same clipped into the input, and where the read
    lies inside it (OH, OW)."""
    (kh, kw), (sh, sw), (ph, pw), (h, w), (oh, ow) = kernel, stride, padding, in_size, out_size
    for i in range(kh):
        for j in range(kw):
            r, c = np.arange(oh) * sh - ph + i, np.arange(ow) * sw - pw + j
            inside = ((r >= 0) & (r < h))[:, None] & ((c >= 0) & (c < w))[None, :]
            yield (r, c), (r.clip(0, h - 1), c.clip(0, w - 1)), inside


def _normal_cdf(v):
    return 0.5 * (1.0 + _erf(v / math.sqrt(2.0)))


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _steps_as_rows(a):
    """(T, B, W) -> (T*B, W): a view where the block is the whole batch, a copy of its rows otherwise."""
    return a.reshape(-1, a.shape[2])


def _forward_steps(steps: int, reverse: bool) -> Iterator[tuple[int, int, int]]:
    """(t, prev, new) of a recurrent pass's steps in order: the time, the state read and the state
    written (the zero state at index 0, or at ``steps`` with ``reverse``)."""
    off = int(reverse)
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        yield t, t + off, t + 1 - off


def _backward_steps(steps: int, reverse: bool) -> Iterator[tuple[int, int, bool]]:
    """(t, prev, last) of its backward, the steps in reverse: whether it is the step from the zero state
    (nothing to pass on) as ``last``."""
    off = int(reverse)
    for t in range(steps) if reverse else range(steps - 1, -1, -1):
        yield t, t + off, t == off * (steps - 1)


def _groups(a, groups: int, last: int):
    """``a`` as (groups, rows, last) matrices, or one (rows, last) matrix without groups."""
    return a.reshape(groups, -1, last) if groups > 1 else a.reshape(-1, last)
