"""Per-sample loss weights (``sample_weight``, ``class_weight``) with Keras's meaning.

With weights w_i on the N samples of a batch, the loss is (1/N) sum_i w_i l_i, where l_i is sample
i's own loss (the batch loss of that sample alone), and its gradient is the unweighted gradient with
row i scaled by w_i. Every loss here reduces as a mean over samples, so the row scaling is exact.
"""

from __future__ import annotations

import numpy as np


def weighted_forward(loss, out, y, w: np.ndarray) -> float:
    """(1/N) sum_i w_i l_i; leaves ``loss`` holding the whole batch's forward, ready for ``backward``. The
    l_i come from that one forward (``Loss.per_sample``: one read back on a device), or, for a loss that
    does not split, from a forward of each sample alone (N + 1 calls: 2.5x the MLP's step at batch 128)."""
    loss.forward(out, y)
    per_sample = loss.per_sample(len(w))
    if per_sample is None:
        per_sample = np.array([float(loss.forward(_sample(out, i), _sample(y, i))) for i in range(len(w))])
        loss.forward(out, y)
    return float(np.dot(w, per_sample)) / len(w)


def _sample(data, i: int):
    """Sample i of a batch: of each array where ``data`` holds several (a model's outputs or targets)."""
    arrays = getattr(data, "arrays", data)  # (a DataList's)
    return [a[i:i + 1] for a in arrays] if isinstance(arrays, (list, tuple)) else data[i:i + 1]


def scale_rows(ops, grad, w: np.ndarray):
    """``grad`` (N, ...) with row i multiplied by w_i, in place; each of a list of them (several outputs)."""
    if isinstance(grad, (list, tuple)):
        for g in grad:
            scale_rows(ops, g, w)
        return grad
    shape = (len(w),) + (1,) * (len(grad.shape) - 1)
    grad *= ops.asarray(w.reshape(shape), ops.dtype_name(grad))
    return grad
