"""Losses: ``loss.forward(pred, target) -> float``, then ``loss.backward() -> dL/dpred``.

Each reduces like PyTorch's ``reduction="mean"`` and its gradient matches PyTorch's. Classes are on
the last axis: logits (..., C) with integer targets (...) or class probabilities (..., C), the mean
taken over every leading position. Losses of several inputs take a tuple as ``pred`` and their
``backward()`` returns a tuple. A loss computes on the backend and dtype of its prediction (NumPy or
torch) and keeps its buffers in its workspace, so a steady-state step allocates nothing sizeable.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import ops_for_array
from .core.layer import ShapeError, Workspace

# Every Loss subclass by class name, for configs and files.
LOSSES: dict[str, type[Loss]] = {}


class Loss(Workspace):
    """Base class: binds the backend, checks inputs and targets, and keeps the forward/backward order.

    Subclasses name their inputs (``inputs``; more than one means ``pred`` is a tuple) and implement
    ``_forward(*preds, target) -> float``, keeping what ``_backward()`` needs, and ``_backward()``,
    which returns dL/dpred (a tuple for several inputs) in workspace buffers.
    """

    inputs: tuple[str, ...] = ("input",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            LOSSES[cls.__name__] = cls

    def __call__(self, pred, target=None) -> float:
        return self.forward(pred, target)

    sync_free: bool | None = None
    """Whether forward returns the loss as a 0-d array on its device without reading it back (no
    host-device synchronisation: no ``.item()``, class labels not range-checked on the host). ``None``
    (default): on accelerators (CUDA, MPS) but not on the CPU, where reading a value costs nothing."""

    def forward(self, pred, target=None) -> float:
        """The loss of ``pred`` against ``target`` as a Python float (a 0-d device array when sync-free,
        see ``sync_free``); saves what backward needs."""
        preds = self._bind(pred)
        self._deferred = self.ops.device != "cpu" if self.sync_free is None else bool(self.sync_free)
        self._pending = False
        value = self._forward(*preds, target)
        self._pending = True
        return value

    def backward(self) -> Any:
        """dL/dpred of the last forward (a tuple of gradients for a tuple ``pred``)."""
        if not self.__dict__.get("_pending"):
            raise RuntimeError(f"{type(self).__name__}: backward() needs a forward(pred, target) first")
        return self._backward()

    def _forward(self, *args) -> float:
        raise NotImplementedError

    def _backward(self) -> Any:
        raise NotImplementedError

    # ----------------------------------------------------------------- input and target checks
    def _bind(self, pred) -> tuple:
        """The predictions as arrays on their backend, all in the first one's float dtype and shape."""
        name, n = type(self).__name__, len(self.inputs)
        if n > 1:
            if not isinstance(pred, (tuple, list)) or len(pred) != n:
                got = f"{len(pred)} arrays" if isinstance(pred, (tuple, list)) else type(pred).__name__
                raise TypeError(f"{name}: pred must be a tuple ({', '.join(self.inputs)}), got {got}")
            preds = tuple(pred)
        else:
            preds = (pred,)
        self.ops = ops = ops_for_array(preds[0])
        first = ops.asarray(preds[0])
        if not ops.is_floating(first):
            raise TypeError(f"{name}: {self.inputs[0]} must be a floating-point array, "
                            f"got {ops.dtype_name(first)}")
        self.dtype = np.dtype(ops.dtype_name(first))
        out = [first]
        for label, x in zip(self.inputs[1:], preds[1:], strict=True):
            x = ops.asarray(x, self.dtype)
            if tuple(x.shape) != tuple(first.shape):
                raise ShapeError(f"{name}: {label} shape {tuple(x.shape)} does not match {self.inputs[0]} "
                                 f"shape {tuple(first.shape)}")
            out.append(x)
        return tuple(out)

    def _float_target(self, pred, target):
        """``target`` on pred's backend, as pred's float dtype, with pred's shape."""
        name, ops = type(self).__name__, self.ops
        if target is None:
            raise TypeError(f"{name}: a target of shape {tuple(pred.shape)} is required")
        t = ops.asarray(target)
        kind = np.dtype(ops.dtype_name(t)).kind
        if kind not in "biuf":
            raise TypeError(f"{name}: target must be numeric, got dtype {ops.dtype_name(t)}")
        if tuple(t.shape) != tuple(pred.shape):
            raise ShapeError(f"{name}: target shape {tuple(t.shape)} does not match prediction shape "
                             f"{tuple(pred.shape)}")
        return ops.asarray(t, self.dtype)

    def _class_target(self, pred, target):
        """Integer class ``target`` of shape pred.shape[:-1], checked to lie in [0, C), flattened to (M,)."""
        t = self._class_index(pred, target)
        self._check_labels(t, pred.shape[-1])
        return t

    def _class_index(self, pred, target):
        """Integer class ``target`` of shape pred.shape[:-1] as a flat int64 index (M,), range unchecked."""
        name, ops = type(self).__name__, self.ops
        if target is None:
            raise TypeError(f"{name}: integer class targets of shape {tuple(pred.shape[:-1])} are required")
        t = ops.asarray(target)
        if tuple(t.shape) != tuple(pred.shape[:-1]):
            raise ShapeError(f"{name}: class targets must have shape {tuple(pred.shape[:-1])} (input "
                             f"{tuple(pred.shape)}), got {tuple(t.shape)}")
        if ops.is_floating(t) or np.dtype(ops.dtype_name(t)).kind not in "iu":
            raise TypeError(f"{name}: class targets must be integers, got {ops.dtype_name(t)}")
        return ops.asarray(t, "int64").reshape(-1)  # as an index (torch reads uint8 as a mask)

    def _check_labels(self, labels, c: int, note: str = "") -> None:
        """Raise, naming a label and the range, when the flat integer ``labels`` leave [0, c)."""
        ops, xp = self.ops, self.ops.xp
        if labels.shape[0] and not self._deferred:  # (sync-free: an out-of-range label fails on the device)
            lo, hi = ops.item(xp.amin(labels)), ops.item(xp.amax(labels))
            if lo < 0 or hi >= c:
                bad = int(lo if lo < 0 else hi)
                raise ValueError(f"{type(self).__name__}: class label {bad} out of range [0, {c}) for {c} "
                                 f"classes{note}")

    def _rows(self, m: int):
        """0..m-1 on this backend (cached), the row index that pairs with class targets."""
        rows = self.__dict__.get("_arange")
        if rows is None or rows.shape[0] < m or not self.ops.is_array(rows):
            rows = self._arange = self.ops.arange(max(m, 1))
        return rows[:m]

    def _sum(self, x) -> float:
        total = self.ops.xp.sum(x)
        return total if self.__dict__.get("_deferred") else self.ops.item(total)

    def get_config(self) -> dict:
        """The constructor arguments (``type(loss)(**loss.get_config())`` rebuilds it)."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------- elementwise losses
class _PointwiseLoss(Loss):
    """sum over elements of f(pred, target), divided by ``_count`` (all elements: reduction="mean").

    Subclasses implement ``_pointwise(x, t) -> (sum of f, d)`` where ``d`` (a workspace buffer) times
    ``deriv_scale`` is df/dx; the workspace "grad" is free scratch inside ``_pointwise``.
    """

    deriv_scale = 1.0

    def _forward(self, x, target):
        t = self._float_target(x, target)
        total, self._deriv = self._pointwise(x, t)
        n = max(self._count(x), 1)
        self._scale = self.deriv_scale / n
        return total / n

    def _count(self, x) -> int:
        return math.prod(x.shape)

    def _pointwise(self, x, t) -> tuple[float, Any]:
        raise NotImplementedError

    def _backward(self):
        grad = self.workspace("grad", tuple(self._deriv.shape))
        self.ops.xp.multiply(self._deriv, self._scale, out=grad)
        return grad


class MSELoss(_PointwiseLoss):
    """Mean squared error (PyTorch: nn.MSELoss).

    loss = mean((x - t)^2);  dL/dx = 2 (x - t) / n

    Shape:
        pred (*), target (*) the same shape.
    Saved for backward:
        x - t (workspace).
    """

    deriv_scale = 2.0

    def _pointwise(self, x, t):
        xp = self.ops.xp
        d = self.workspace("deriv", tuple(x.shape))
        xp.subtract(x, t, out=d)
        sq = self.workspace("grad", tuple(x.shape))
        xp.multiply(d, d, out=sq)
        return self._sum(sq), d


class L1Loss(_PointwiseLoss):
    """Mean absolute error (PyTorch: nn.L1Loss).

    loss = mean(|x - t|);  dL/dx = sign(x - t) / n   (0 where x = t)

    Shape:
        pred (*), target (*) the same shape.
    Saved for backward:
        sign(x - t) (workspace).
    """

    def _pointwise(self, x, t):
        xp = self.ops.xp
        d = self.workspace("grad", tuple(x.shape))
        xp.subtract(x, t, out=d)
        s = self.workspace("deriv", tuple(x.shape))
        xp.sign(d, out=s)
        xp.abs(d, out=d)
        return self._sum(d), s


class HuberLoss(_PointwiseLoss):
    """Huber loss (PyTorch: nn.HuberLoss).

    f = 0.5 d^2 where |d| <= delta, else delta (|d| - 0.5 delta), d = x - t;
    dL/dx = clip(d, -delta, delta) / n

    Args:
        delta (float): where the quadratic turns linear (> 0). Default: ``1.0``.
    Shape:
        pred (*), target (*) the same shape.
    Saved for backward:
        clip(d, -delta, delta) (workspace).
    """

    def __init__(self, delta: float = 1.0):
        if not delta > 0:
            raise ValueError(f"HuberLoss: delta must be > 0, got {delta!r}")
        self.delta = float(delta)

    def _pointwise(self, x, t):
        xp = self.ops.xp
        d = self.workspace("grad", tuple(x.shape))
        xp.subtract(x, t, out=d)
        c = self.workspace("deriv", tuple(x.shape))
        xp.clip(d, -self.delta, self.delta, out=c)
        d *= 2.0  # 2 f = c (2 d - c)
        d -= c
        d *= c
        return 0.5 * self._sum(d), c

    def get_config(self):
        return {"delta": self.delta}


class BCELoss(_PointwiseLoss):
    """Binary cross-entropy on probabilities (PyTorch: nn.BCELoss).

    f = -(t log x + (1 - t) log(1 - x)), each log clamped at -100 as PyTorch does;
    dL/dx = (x - t) / max(x (1 - x), 1e-12) / n

    Shape:
        pred (*) with values in [0, 1], target (*) the same shape.
    Saved for backward:
        the derivative (workspace).
    """

    def _pointwise(self, x, t):
        ops, xp, shape = self.ops, self.ops.xp, tuple(x.shape)
        if math.prod(shape):
            lo, hi = ops.item(xp.amin(x)), ops.item(xp.amax(x))
            if not (lo >= 0.0 and hi <= 1.0):
                raise ValueError(f"BCELoss: input must hold probabilities in [0, 1], got values in "
                                 f"[{lo}, {hi}] (for logits use BCEWithLogitsLoss)")
        log_x, log_1mx = self.workspace("grad", shape), self.workspace("tmp", shape)
        d = self.workspace("deriv", shape)
        xp.multiply(x, -1.0, out=log_1mx)
        log_1mx += 1.0  # 1 - x
        xp.multiply(x, log_1mx, out=log_x)
        xp.clip(log_x, 1e-12, 1.0, out=log_x)
        xp.subtract(x, t, out=d)
        d /= log_x  # (x - t) / max(x (1 - x), 1e-12)
        xp.log(x, out=log_x)
        xp.log(log_1mx, out=log_1mx)
        xp.clip(log_x, -100.0, 0.0, out=log_x)
        xp.clip(log_1mx, -100.0, 0.0, out=log_1mx)
        log_x -= log_1mx  # t log x + (1 - t) log(1 - x) = log(1 - x) + t (log x - log(1 - x))
        log_x *= t
        log_x += log_1mx
        return -self._sum(log_x), d


class BCEWithLogitsLoss(_PointwiseLoss):
    """Binary cross-entropy on logits, sigmoid fused (PyTorch: nn.BCEWithLogitsLoss).

    f = max(x, 0) - x t + log(1 + exp(-|x|));  dL/dx = (sigmoid(x) - t) / n

    Shape:
        pred (*) logits, target (*) the same shape.
    Saved for backward:
        sigmoid(x) - t (workspace).
    """

    def _pointwise(self, x, t):
        ops, xp, shape = self.ops, self.ops.xp, tuple(x.shape)
        f, d = self.workspace("grad", shape), self.workspace("deriv", shape)
        xp.abs(x, out=f)
        f *= -1.0
        xp.exp(f, out=f)
        xp.log1p(f, out=f)
        xp.clip(x, 0.0, None, out=d)
        f += d
        xp.multiply(x, t, out=d)
        f -= d
        ops.activation("sigmoid", x, d)
        d -= t
        return self._sum(f), d


class KLDivLoss(_PointwiseLoss):
    """KL divergence of log-probabilities from probabilities (PyTorch: nn.KLDivLoss(reduction="batchmean")).

    loss = sum(t (log t - x)) / N  (0 where t = 0), N = the first dimension;  dL/dx = -t / N

    Shape:
        pred (N, *) log-probabilities, target (N, *) probabilities.
    Saved for backward:
        -t (workspace).
    """

    def _count(self, x):
        return x.shape[0] if x.ndim else 1

    def _pointwise(self, x, t):
        xp, shape = self.ops.xp, tuple(x.shape)
        f, d = self.workspace("grad", shape), self.workspace("deriv", shape)
        xp.clip(t, float(np.finfo(self.dtype).tiny), None, out=f)  # t log t -> 0 where t = 0
        xp.log(f, out=f)
        f -= x
        f *= t
        xp.multiply(t, -1.0, out=d)
        return self._sum(f), d


# --------------------------------------------------------------------- losses over classes (last axis)
class _ClassScoreLoss(Loss):
    """Base of CrossEntropyLoss and NLLLoss: PyTorch's class ``weight`` and ``ignore_index``.

    Position i with class target t_i counts with w_i = weight[t_i] (1 without ``weight``), and with
    w_i = 0 when t_i == ignore_index: such a position contributes neither loss nor gradient. The mean
    divides by W = sum_i w_i, as torch's ``reduction="mean"`` does. When W = 0 (every target ignored,
    an empty batch, or only classes of weight 0) the mean is 0/0: the loss is NaN as in torch (so
    ``train_step`` refuses the step), the gradient NaN on the positions that are not ignored and 0 on
    those that are.

    Subclasses call ``_select(pred, target)`` in ``_forward``; it keeps, per position, the flat index
    of its target score (``_flat``), w_i (``_w_row``), keep_i and keep_i / W (``_row_scale``: the float
    1/M when every w_i is 1, ``_uniform``, so the common case scales by a scalar, not by a broadcast
    column, which NumPy buffers).
    """

    def __init__(self, weight: Any = None, ignore_index: int = -100):
        name = type(self).__name__
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"{name}: ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        self.weight = None if weight is None else _class_weights(weight, name)

    def _weights(self, pred):
        """The class weights on pred's backend and dtype (converted once), or None without weights."""
        if self.weight is None:
            return None
        c = pred.shape[-1]
        if self.weight.shape[0] != c:
            raise ShapeError(f"{type(self).__name__}: weight has {self.weight.shape[0]} entries, expected "
                             f"one per class: {c} (input shape {tuple(pred.shape)})")
        cache = self.__dict__.get("_weight_cache")
        if cache is None or cache[0] is not self.ops or cache[1] != self.dtype:
            cache = self._weight_cache = (self.ops, self.dtype, self.ops.asarray(self.weight, self.dtype))
        return cache[2]

    def _select(self, pred, target) -> None:
        """Check the class ``target`` of ``pred`` (..., C); keep each position's index, weight and scale."""
        ops, xp = self.ops, self.ops.xp
        c = pred.shape[-1]
        t = self._class_index(pred, target)
        m = t.shape[0]
        kept = self.workspace("kept", (m,), "bool")
        xp.not_equal(t, self.ignore_index, out=kept)
        label = self.workspace("label", (m,), "int64")
        xp.multiply(t, kept, out=label)  # ignored positions read class 0, a valid index, with weight 0
        self._check_labels(label, c, f" (and not ignore_index={self.ignore_index})")
        keep = self.workspace("keep", (m,))
        ops.copy_(keep, kept)
        w = self._weights(pred)
        w_row = keep if w is None else ops.gather_rows(w, label, self.workspace("w_row", (m,)))
        if w is not None:
            w_row *= keep
        flat = self.workspace("flat_index", (m,), "int64")
        xp.multiply(self._rows(m), c, out=flat)
        flat += label
        self.total_weight = total = self._sum(w_row)
        self._uniform = not self._deferred and w is None and total == m > 0
        if self._uniform:
            scale = 1.0 / m
        else:
            scale = self.workspace("row_scale", (m, 1))
            if self._deferred:  # total is a 0-d device array: divide there (W = 0 gives inf, not NaN)
                xp.divide(keep.reshape(m, 1), total, out=scale)
            elif total > 0:
                xp.multiply(keep.reshape(m, 1), 1.0 / total, out=scale)
            else:  # 0/0 as in torch: NaN where kept, 0 where ignored
                ops.where(kept.reshape(m, 1), math.nan, 0.0, scale)
        self._flat, self._w_row, self._keep, self._row_scale = flat, w_row, keep, scale

    def _picked_sum(self, x) -> float:
        """sum_i w_i x[i, t_i] for the (M, C) scores ``x`` of the last ``_select``."""
        picked = self.workspace("picked", tuple(self._w_row.shape))
        self.ops.gather_rows(x.reshape(-1), self._flat, picked)
        picked *= self._w_row
        return self._sum(picked)

    def _mean(self, total: float) -> float:
        """total / W (NaN when W = 0, torch's 0/0)."""
        if self._deferred:
            return total / self.total_weight
        return total / self.total_weight if self.total_weight > 0 else math.nan

    def _target_coef(self):
        """w_i / W per position as an (M, 1) workspace (0 where ignored)."""
        m = self._w_row.shape[0]
        coef = self.workspace("target_coef", (m, 1))
        self.ops.xp.multiply(self._w_row.reshape(m, 1), self._row_scale, out=coef)
        return coef

    def _add_at_targets(self, grad, coef) -> None:
        """grad[i, t_i] += coef[i] for the (M, C) ``grad``."""
        self.ops.scatter_add_rows(grad.reshape(-1, 1), self._flat, coef)

    def get_config(self):
        weight = None if self.weight is None else self.weight.tolist()  # a list, for JSON configs and files
        return {"weight": weight, "ignore_index": self.ignore_index}


def _class_weights(weight: Any, owner: str) -> np.ndarray:
    """``weight`` (array-like or tensor) as a checked 1-D float64 NumPy array of finite values >= 0."""
    if hasattr(weight, "detach"):  # a torch tensor, on any device
        weight = weight.detach().cpu().numpy()
    try:
        w = np.array(weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: weight must be a 1-D array of C numbers, got {weight!r:.80}") from None
    if w.ndim != 1:
        raise ShapeError(f"{owner}: weight must be a 1-D array of C class weights, got shape {w.shape}")
    bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0)))
    if bad.size:
        raise ValueError(f"{owner}: class weights must be finite and >= 0, got {w[bad[0]]} for class "
                         f"{bad[0]}")
    return w


class CrossEntropyLoss(_ClassScoreLoss):
    """Softmax cross-entropy on logits, log-softmax and gradient fused (PyTorch: nn.CrossEntropyLoss).

    loss = -(1/W) sum_i keep_i sum_c a_ic log softmax(z_i)_c, where for class targets t
    a_ic = (1 - eps) w_{t_i} [c = t_i] + eps w_c / C  (w = ``weight``, all 1 without),
    keep_i = [t_i != ignore_index], W = sum_i keep_i w_{t_i}  (torch's weighted mean);
    for probability targets q: a_ic = w_c ((1 - eps) q_ic + eps / C), keep_i = 1, W = M.
    dL/dz_ic = keep_i (softmax(z_i)_c sum_k a_ik - a_ic) / W.  W = 0 gives NaN (see _ClassScoreLoss).

    Args:
        weight (array (C,), optional): non-negative class weights. Default: ``None`` (all 1).
        ignore_index (int): class targets equal to it are skipped; with probability targets only a
            negative value is allowed (torch's rule). Default: ``-100``.
        label_smoothing (float, optional): eps in [0, 1]. Default: ``0.0``.
    Shape:
        logits (..., C); target (...) integer classes in [0, C) or ignore_index, or (..., C) probabilities.
        M = the number of positions (all leading axes), e.g. N*T for (N, T, V) logits with (N, T) targets.
    Saved for backward:
        log-probabilities (workspace) and the target's index, weight and scale per position.
    """

    def __init__(self, weight: Any = None, *, ignore_index: int = -100, label_smoothing: float = 0.0):
        super().__init__(weight, ignore_index)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def _forward(self, pred, target):
        ops, eps = self.ops, self.label_smoothing
        c = pred.shape[-1]
        z = pred.reshape(-1, c)
        m = z.shape[0]
        logp = self.workspace("logp", (m, c))
        ops.activation("log_softmax", z, logp)
        self._logp, self._shape = logp, tuple(pred.shape)
        t = ops.asarray(target) if target is not None else None
        if t is not None and ops.is_floating(t) and tuple(t.shape) == tuple(pred.shape):
            return self._forward_probs(pred, logp, ops.asarray(t, self.dtype).reshape(m, c))
        self._probs = None
        self._select(pred, t)
        smooth = eps / c * self._smoothing_sum(pred, logp, self._keep) if eps else 0.0
        return self._mean(-((1.0 - eps) * self._picked_sum(logp) + smooth))

    def _forward_probs(self, pred, logp, q):
        xp, eps, (m, c) = self.ops.xp, self.label_smoothing, logp.shape
        if self.ignore_index >= 0:
            raise ValueError(f"CrossEntropyLoss: ignore_index={self.ignore_index} applies to class targets "
                             "only; probability targets need a negative ignore_index (as torch requires)")
        w = self._weights(pred)
        if w is not None:  # w_c q_ic
            q = xp.multiply(q, w, out=self.workspace("weighted_probs", (m, c)))
        self._probs = q
        tmp = self.workspace("grad", (m, c))
        xp.multiply(logp, q, out=tmp)
        smooth = eps / c * self._smoothing_sum(pred, logp) if eps else 0.0
        return -((1.0 - eps) * self._sum(tmp) + smooth) / m if m else math.nan

    def _smoothing_sum(self, pred, logp, keep=None) -> float:
        """sum_i keep_i sum_c w_c logp_ic (the label-smoothing term before its eps / C)."""
        xp, w, m = self.ops.xp, self._weights(pred), logp.shape[0]
        rows = self.workspace("smoothing_rows", (m,))
        if w is None:
            xp.sum(logp, axis=-1, out=rows)
        else:
            xp.matmul(logp, w, out=rows)
        if keep is not None:
            rows *= keep
        return self._sum(rows)

    def _backward(self):
        xp, eps = self.ops.xp, self.label_smoothing
        m, c = self._logp.shape
        grad = self.workspace("grad", (m, c))
        xp.exp(self._logp, out=grad)
        w = self._weights(self._logp)
        smooth = 0.0
        if eps:  # eps w_c / C, subtracted from every kept row
            smooth = eps / c if w is None else xp.multiply(w, eps / c, out=self.workspace("smooth_w", (c,)))
        w_sum = float(c) if w is None else self._sum(w)
        total = self.workspace("rowsum", (m, 1))  # sum_c a_ic
        if self._probs is not None:
            xp.sum(self._probs, axis=-1, keepdims=True, out=total)
            total *= 1.0 - eps
            total += eps * w_sum / c
            grad *= total
            tmp = self.workspace("tmp", (m, c))
            xp.multiply(self._probs, 1.0 - eps, out=tmp)
            grad -= tmp
            if eps:
                grad -= smooth
            grad *= 1.0 / max(m, 1)
            return grad.reshape(self._shape)
        coef = self._target_coef()  # w_i / W
        if eps:  # (softmax sum_c a_ic - eps w / C) keep_i / W; sum_c a_ic = 1 when every w_i is 1
            if not self._uniform:
                xp.multiply(self._w_row.reshape(m, 1), 1.0 - eps, out=total)
                total += eps * w_sum / c
                grad *= total
            grad -= smooth
            grad *= self._row_scale
        else:  # softmax w_i / W
            grad *= self._row_scale if self._uniform else coef
        coef *= -(1.0 - eps)
        self._add_at_targets(grad, coef)
        return grad.reshape(self._shape)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class NLLLoss(_ClassScoreLoss):
    """Negative log-likelihood of log-probabilities (PyTorch: nn.NLLLoss).

    loss = -(1/W) sum_i w_i x[i, t_i], w_i = weight[t_i] * (t_i != ignore_index), W = sum_i w_i;
    dL/dx = -w_i / W at the target class, 0 elsewhere.  W = 0 gives NaN (see _ClassScoreLoss).

    Args:
        weight (array (C,), optional): non-negative class weights. Default: ``None`` (all 1).
        ignore_index (int): targets equal to it are skipped. Default: ``-100``.
    Shape:
        pred (..., C) log-probabilities; target (...) integer classes in [0, C) or ignore_index.
    Saved for backward:
        the target's index, weight and scale per position.
    """

    def __init__(self, weight: Any = None, *, ignore_index: int = -100):
        super().__init__(weight, ignore_index)

    def _forward(self, pred, target):
        self._select(pred, target)
        self._shape = tuple(pred.shape)
        return self._mean(-self._picked_sum(pred.reshape(-1, pred.shape[-1])))

    def _backward(self):
        m = self._w_row.shape[0]
        grad = self.workspace("grad", (m, self._shape[-1]))
        self.ops.fill_(grad, 0.0)
        coef = self._target_coef()
        coef *= -1.0
        self._add_at_targets(grad, coef)
        return grad.reshape(self._shape)


class MultiMarginLoss(Loss):
    """Multi-class hinge loss (PyTorch: nn.MultiMarginLoss).

    h_j = max(0, margin - x_y + x_j) for j != y;  loss = mean over samples of sum_{j != y} h_j^p / C;
    dL/dx_j = p h_j^(p-1) / (C N) for j != y (the indicator [h_j > 0] when p = 1), and
    dL/dx_y = -(sum of those).

    Args:
        margin (float): Default: ``1.0``.
        p (int, keyword): 1 or 2. Default: ``1``.
    Shape:
        pred (N, C); target (N,) integer classes in [0, C).
    Saved for backward:
        dh^p/dh of the margins (workspace) and the target.
    """

    def __init__(self, margin: float = 1.0, *, p: int = 1):
        if p not in (1, 2):
            raise ValueError(f"MultiMarginLoss: p must be 1 or 2, got {p!r}")
        self.p, self.margin = int(p), float(margin)

    def _forward(self, pred, target):
        xp = self.ops.xp
        if pred.ndim != 2:
            raise ShapeError(f"MultiMarginLoss: input must be 2-D (N, C), got shape {tuple(pred.shape)}")
        n, c = pred.shape
        idx, rows = self._class_target(pred, target), self._rows(n)
        h = self.workspace("grad", (n, c))
        xp.subtract(pred, pred[rows, idx].reshape(n, 1), out=h)
        h += self.margin
        h[rows, idx] = 0.0  # the target class is not a margin
        xp.clip(h, 0.0, None, out=h)
        deriv = self._deriv = self.workspace("deriv", (n, c))
        if self.p == 1:
            xp.sign(h, out=deriv)  # 1 where the margin is violated
        else:
            xp.multiply(h, 2.0, out=deriv)
            h *= h
        self._index = idx
        return self._sum(h) / (c * max(n, 1))

    def _backward(self):
        xp = self.ops.xp
        n, c = self._deriv.shape
        grad = self.workspace("grad", (n, c))
        xp.multiply(self._deriv, 1.0 / (c * max(n, 1)), out=grad)
        total = self.workspace("rowsum", (n,))
        xp.sum(grad, axis=1, out=total)
        total *= -1.0
        grad[self._rows(n), self._index] = total
        return grad

    def get_config(self):
        return {"p": self.p, "margin": self.margin}


# --------------------------------------------------------------------- losses of several inputs
class MarginRankingLoss(Loss):
    """Ranking hinge of two scores (PyTorch: nn.MarginRankingLoss).

    loss = mean(max(0, -y (x1 - x2) + margin));  dL/dx1 = -y [z >= 0] / n = -dL/dx2, z the hinge argument

    Args:
        margin (float): Default: ``0.0``.
    Shape:
        pred = (x1, x2), each (*); target y (*) with values in {-1, 1}.
    Saved for backward:
        -y [z >= 0] (workspace).
    """

    inputs = ("input1", "input2")

    def __init__(self, margin: float = 0.0):
        self.margin = float(margin)

    def _forward(self, x1, x2, target):
        xp, shape = self.ops.xp, tuple(x1.shape)
        y = self._float_target(x1, target)
        z, d = self.workspace("z", shape), self.workspace("deriv", shape)
        xp.abs(y, out=d)
        if math.prod(shape) and not self.ops.item(xp.amin(d)) == self.ops.item(xp.amax(d)) == 1.0:
            raise ValueError("MarginRankingLoss: target values must be -1 or 1")
        xp.subtract(x1, x2, out=z)
        z *= y
        z *= -1.0
        z += self.margin
        xp.sign(z, out=d)
        d += 1.0
        xp.clip(d, 0.0, 1.0, out=d)  # [z >= 0]: torch's clamp_min passes the gradient at 0
        d *= y
        d *= -1.0
        xp.clip(z, 0.0, None, out=z)
        self._deriv, self._n = d, max(math.prod(shape), 1)
        return self._sum(z) / self._n

    def _backward(self):
        xp, d = self.ops.xp, self._deriv
        g1, g2 = self.workspace("grad1", tuple(d.shape)), self.workspace("grad2", tuple(d.shape))
        xp.multiply(d, 1.0 / self._n, out=g1)
        xp.multiply(d, -1.0 / self._n, out=g2)
        return g1, g2

    def get_config(self):
        return {"margin": self.margin}


class TripletMarginLoss(Loss):
    """Triplet hinge on p-norm distances (PyTorch: nn.TripletMarginLoss, pairwise_distance's eps = 1e-6).

    loss = mean over positions of max(0, d(a, p) - d(a, n) + margin), d(x, y) = ||x - y + eps||_p over the
    last axis;  with u = x - y + eps: dd/du = sign(u) |u|^(p-1) / d^(p-1) (u / d for p = 2).

    Args:
        margin (float): Default: ``1.0``.
        p (float): the norm's degree, >= 1. Default: ``2``.
    Shape:
        pred = (anchor, positive, negative), each (..., D); target None.
    Saved for backward:
        the differences u, the distances and the active hinges (workspace).
    """

    inputs = ("anchor", "positive", "negative")
    eps = 1e-6

    def __init__(self, margin: float = 1.0, p: float = 2.0):
        if not p >= 1:
            raise ValueError(f"TripletMarginLoss: p must be >= 1, got {p!r}")
        self.margin, self.p = float(margin), float(p)

    def _forward(self, a, pos, neg, target):
        if target is not None:
            raise TypeError("TripletMarginLoss: takes no target (pass target=None); pred is "
                            "(anchor, positive, negative)")
        if a.ndim < 1:
            raise ShapeError("TripletMarginLoss: inputs must have a feature axis (..., D), got a scalar")
        xp, dim = self.ops.xp, a.shape[-1]
        m = math.prod(a.shape[:-1])
        self._shape = tuple(a.shape)
        d_pos = self._distance(a, pos, "pos")
        d_neg = self._distance(a, neg, "neg")
        z = self.workspace("z", (m,))
        xp.subtract(d_pos, d_neg, out=z)
        z += self.margin
        active = self._active = self.workspace("active", (m, 1))
        xp.sign(z.reshape(m, 1), out=active)
        active += 1.0
        xp.clip(active, 0.0, 1.0, out=active)  # [z >= 0]: torch's clamp_min passes the gradient at 0
        xp.clip(z, 0.0, None, out=z)
        self._m, self._dim = max(m, 1), dim
        return self._sum(z) / self._m

    def _distance(self, x, y, name: str):
        """d = ||x - y + eps||_p per position; keeps u = x - y + eps in the workspace "u_<name>"."""
        xp, dim = self.ops.xp, x.shape[-1]
        m = math.prod(x.shape[:-1])
        u = self.workspace(f"u_{name}", (m, dim))
        xp.subtract(x.reshape(m, dim), y.reshape(m, dim), out=u)
        u += self.eps
        tmp = self.workspace("tmp", (m, dim))
        xp.abs(u, out=tmp)
        tmp **= self.p
        d = self.workspace(f"d_{name}", (m,))
        xp.sum(tmp, axis=-1, out=d)
        d **= 1.0 / self.p
        return d

    def _norm_grad(self, name: str, out):
        """out = dd/du for the distance ``name``, scaled by the active hinges / M."""
        xp, p, m, dim = self.ops.xp, self.p, self._m, self._dim
        u, d = self.workspace(f"u_{name}", (m, dim)), self.workspace(f"d_{name}", (m, 1))  # kept by forward
        tmp = self.workspace("tmp", (m, dim))
        xp.abs(u, out=out)
        out **= p - 1.0
        xp.sign(u, out=tmp)
        out *= tmp
        scale = self.workspace("scale", (m, 1))
        xp.clip(d, float(np.finfo(self.dtype).tiny), None, out=scale)
        scale **= p - 1.0
        xp.divide(self._active, scale, out=scale)
        scale *= 1.0 / self._m
        out *= scale
        return out

    def _backward(self):
        m, dim = self._m, self._dim
        g_pos = self._norm_grad("pos", self.workspace("grad_positive", (m, dim)))
        g_neg = self._norm_grad("neg", self.workspace("grad_negative", (m, dim)))
        g_a = self.workspace("grad_anchor", (m, dim))
        self.ops.xp.subtract(g_pos, g_neg, out=g_a)
        g_pos *= -1.0
        return g_a.reshape(self._shape), g_pos.reshape(self._shape), g_neg.reshape(self._shape)

    def get_config(self):
        return {"margin": self.margin, "p": self.p}
