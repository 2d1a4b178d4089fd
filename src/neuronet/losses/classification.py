"""Class-score losses: logits or log-probabilities (..., C) against class targets."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core.layer import ShapeError
from .base import Loss


class _ClassScoreLoss(Loss):
    """Base of CrossEntropyLoss and NLLLoss: PyTorch's class ``weight`` and ``ignore_index``.

    Position i with class target t_i counts with w_i = weight[t_i] (1 without ``weight``), and with
    w_i = 0 when t_i == ignore_index: such a position contributes neither loss nor gradient. The mean
    divides by W = sum_i w_i, as torch's ``reduction="mean"`` does. When W = 0 (every target ignored,
    an empty batch, or only classes of weight 0) the mean is 0/0: the loss is NaN as in torch (so
    ``train_step`` refuses the step), the gradient NaN on the positions that are not ignored and 0 on
    those that are.

    Subclasses call ``_nll(pred, target, scores)`` (or ``_select(pred, _class_index(pred, target),
    scores)``) in ``_forward``; ``_select`` keeps, per position, the flat index of its target score
    (``_flat``), w_i (``_w_row``), keep_i and keep_i / W (``_row_scale``: the float 1/M when every w_i is
    1, ``_uniform``, so the common case scales by a scalar, not by a broadcast column, which NumPy
    buffers).
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

    def _select(self, pred, t, scores):
        """For ``t``, the class targets of ``pred`` (..., C) as a flat index (``_class_index``): check them
        and keep each position's index, weight and scale. Returns sum_i w_i scores[i, t_i] for the (M, C)
        ``scores`` (a 0-d array when sync-free)."""
        ops, xp = self.ops, self.ops.xp
        c = pred.shape[-1]
        m = t.shape[0]
        label, keep = self.workspace("label", (m,), "int64"), self.workspace("keep", (m,))
        # (sync-free: no bounds to read back; an out-of-range label fails on the device)
        bounds = ops.class_labels(t, self.ignore_index, label, keep, bounds=not self._deferred)
        if bounds is not None:
            self._check_range(*map(ops.item, bounds), c, f" (and not ignore_index={self.ignore_index})")
        w = self._weights(pred)
        w_row = keep if w is None else self.workspace("w_row", (m,))
        flat = self.workspace("flat_index", (m,), "int64")
        total, picked = ops.class_weights(label, w, keep, self._rows(m), scores, w_row, flat)
        if not self._deferred:
            total, picked = ops.item(total), ops.item(picked)
        self.total_weight = total
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
                ops.where(keep.reshape(m, 1) > 0, math.nan, 0.0, scale)
        self._flat, self._w_row, self._keep, self._row_scale, self._scores = flat, w_row, keep, scale, scores
        return picked

    def _nll(self, pred, target, scores):
        """-(1/W) sum_i w_i scores[i, t_i] for the (M, C) ``scores``: by the backend's fused kernel where it
        has one for them (``ops.nll_loss``, sync-free only: PyTorch's off the CPU), else by ``_select``."""
        t = self._class_index(pred, target)
        if self._deferred:
            fused = self.ops.nll_loss(scores, t, self._weights(pred), self.ignore_index)
            if fused is not None:
                loss, self.total_weight = fused
                self._nll_inputs = (pred, t, scores)
                return loss
        return self._mean(-self._select(pred, t, scores))

    def _nll_backward(self):
        """dL/dscores of a fused ``_nll`` in the workspace "grad", or None when ``_select`` ran."""
        if self.__dict__.get("_nll_inputs") is None:
            return None
        pred, t, scores = self._nll_inputs
        grad = self.workspace("grad", tuple(scores.shape))
        return self.ops.nll_loss_backward(scores, t, self._weights(pred), self.ignore_index,
                                          self.total_weight, grad)

    def per_sample(self, n: int):
        """Sample s's own loss: -sum a_i / sum w_i over its positions i, a_i = w_i scores[i, t_i] (with
        label smoothing (1 - eps) of that plus eps / C keep_i sum_c w_c logp_ic); NaN where all its targets
        are ignored, as it alone gives."""
        if self.__dict__.get("_nll_inputs") is not None:  # the fused kernel kept no rows: select them now
            self._select(*self._nll_inputs)
        host, (m, c) = self.ops.to_numpy, tuple(self._scores.shape)
        w = host(self._w_row).astype(np.float64)
        a = w * host(self._scores.reshape(-1)[self._flat])
        eps = getattr(self, "label_smoothing", 0.0)
        if eps:
            a = (1.0 - eps) * a + eps / c * host(self.workspace("smoothing_rows", (m,)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return -a.reshape(n, -1).sum(axis=1) / w.reshape(n, -1).sum(axis=1)

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
        self._logp, self._shape, self._nll_inputs = logp, tuple(pred.shape), None
        t = ops.asarray(target) if target is not None else None
        if t is not None and ops.is_floating(t) and tuple(t.shape) == tuple(pred.shape):
            return self._forward_probs(pred, logp, ops.asarray(t, self.dtype).reshape(m, c))
        self._probs = None
        if not eps:
            return self._nll(pred, t, logp)
        picked = self._select(pred, self._class_index(pred, t), logp)
        smooth = eps / c * self._smoothing_sum(pred, logp, self._keep) if eps else 0.0
        return self._mean(-((1.0 - eps) * picked + smooth))

    def per_sample(self, n: int):
        if self._probs is None:
            return super().per_sample(n)
        # probability targets: -((1 - eps) sum_c q_ic logp_ic + eps / C sum_c w_c logp_ic) over the sample's
        # positions (forward left q logp in "grad" and the smoothing term's rows), divided by their count
        eps, (m, c) = self.label_smoothing, self._logp.shape
        a = (1.0 - eps) * self._sample_sums(self.workspace("grad", (m, c)), n)
        if eps:
            a += eps / c * self._sample_sums(self.workspace("smoothing_rows", (m,)), n)
        return -a / (m // max(n, 1))

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
        dlogp = self._nll_backward()
        if dlogp is not None:  # through the log-softmax, in place
            return self.ops.activation_backward("log_softmax", dlogp, None, self._logp, dlogp).reshape(
                self._shape)
        grad = self.workspace("grad", (m, c))
        if self._probs is None and not eps:  # (softmax - one-hot target) w_i / W
            self.ops.softmax_target_grad(self._logp, self._flat, self._target_coef(), grad)
            return grad.reshape(self._shape)
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
        # (softmax sum_c a_ic - eps w / C) keep_i / W; sum_c a_ic = 1 when every w_i is 1
        if not self._uniform:
            xp.multiply(self._w_row.reshape(m, 1), 1.0 - eps, out=total)
            total += eps * w_sum / c
            grad *= total
        grad -= smooth
        grad *= self._row_scale
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
        self._shape, self._nll_inputs = tuple(pred.shape), None
        return self._nll(pred, target, pred.reshape(-1, pred.shape[-1]))

    def _backward(self):
        grad = self._nll_backward()
        if grad is not None:
            return grad.reshape(self._shape)
        m = self._w_row.shape[0]
        grad = self.workspace("grad", (m, self._shape[-1]))
        self.ops.fill_(grad, 0.0)
        coef = self._target_coef()
        coef *= -1.0
        self._add_at_targets(grad, coef)
        return grad.reshape(self._shape)
