"""Fused CPU kernels (Numba) behind the NumPy backend: one pass over memory each, no temporaries.

Elementwise kernels take flat (1-D, contiguous) arrays; row kernels take 2-D ``(rows, C)`` arrays
and act on the last axis. Codes for the activations are the positions in ``ACT_CODES``.
Every kernel is compiled on first use per dtype and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import fastmath as fm
from . import vector_rows

ACT_CODES = {
    "linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "leaky_relu": 4, "elu": 5, "selu": 6,
    "gelu": 7, "gelu_tanh": 8, "silu": 9,
}

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_SQRT_2_OVER_PI = 0.7978845608028654

# reassoc lets LLVM vectorise the row sums (softmax, norms); contract fuses a*b+c into FMAs. Constants are
# cast to the data's dtype (``dt(...)``) so float32 data is computed in float32 throughout.
jit = numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"}, error_model="numpy")
# Inlined into its caller in Numba's own IR: a loop given the same array twice then reads and writes one
# pointer, where two pointers to the same memory fail LLVM's run-time overlap check and the loop runs its
# scalar version.
jit_inline = numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"}, error_model="numpy",
                        inline="always")


# In place (a Dense layer's ReLU, tanh or sigmoid overwrites its pre-activation; a linear one adds its
# bias in place), 393,216 floats, one thread: GELU 2150 against 214 us, ReLU 307 against 53 (out of
# place: 212 and 52).
@jit
def activation_forward(code, alpha, z, out):
    """out[i] = act(z[i]); alpha is LeakyReLU's slope or ELU's alpha; out may be z."""
    fm.prefer_512_bit_vectors()
    if z.ctypes.data == out.ctypes.data:
        _activation_forward(code, alpha, out, out)
    else:
        _activation_forward(code, alpha, z, out)


@jit_inline
def _activation_forward(code, alpha, z, out):
    n, dt = z.size, z.dtype.type
    one, half, alpha = dt(1.0), dt(0.5), dt(alpha)
    if code == 0:
        for i in range(n):
            out[i] = z[i]
    elif code == 1:
        for i in range(n):
            v = z[i]
            out[i] = 0.0 if v <= 0 else v  # NaN propagates, as in torch.relu
    elif code == 2:
        for i in range(n):
            out[i] = fm.sigmoid(z[i])
    elif code == 3:
        for i in range(n):
            out[i] = fm.tanh(z[i])
    elif code == 4:
        for i in range(n):
            v = z[i]
            out[i] = v if v > 0 else v * alpha
    elif code == 5:
        for i in range(n):
            v = z[i]
            out[i] = v if v > 0 else alpha * (fm.exp(v) - one)
    elif code == 6:
        scale, scale_alpha = dt(SELU_SCALE), dt(SELU_SCALE * SELU_ALPHA)
        for i in range(n):
            v = z[i]
            out[i] = scale * v if v > 0 else scale_alpha * (fm.exp(v) - one)
    elif code == 7:
        inv_sqrt2 = dt(_INV_SQRT2)
        for i in range(n):
            v = z[i]
            out[i] = half * v * (one + fm.erf(v * inv_sqrt2))
    elif code == 8:
        c, c3 = dt(_SQRT_2_OVER_PI), dt(_SQRT_2_OVER_PI * 0.044715)
        for i in range(n):
            v = z[i]
            out[i] = half * v * (one + fm.tanh(v * (c + c3 * v * v)))
    elif code == 9:
        for i in range(n):
            v = z[i]
            out[i] = v * fm.sigmoid(v)


@jit
def activation_backward(code, alpha, dy, z, y, out):
    """out[i] = dy[i] * act'(z[i]); relu/sigmoid/tanh read the output y, the rest read z; out may be dy."""
    fm.prefer_512_bit_vectors()
    if dy.ctypes.data == out.ctypes.data:
        _activation_backward(code, alpha, out, z, y, out)
    else:
        _activation_backward(code, alpha, dy, z, y, out)


@jit_inline
def _activation_backward(code, alpha, dy, z, y, out):
    n, dt = dy.size, dy.dtype.type
    one, half, alpha = dt(1.0), dt(0.5), dt(alpha)
    if code == 0:
        for i in range(n):
            out[i] = dy[i]
    elif code == 1:
        for i in range(n):
            out[i] = dy[i] if y[i] > 0 else 0.0
    elif code == 2:
        for i in range(n):
            s = y[i]
            out[i] = dy[i] * s * (one - s)
    elif code == 3:
        for i in range(n):
            t = y[i]
            out[i] = dy[i] * (one - t * t)
    elif code == 4:
        for i in range(n):
            out[i] = dy[i] if z[i] > 0 else dy[i] * alpha
    elif code == 5:
        for i in range(n):
            v = z[i]
            out[i] = dy[i] if v > 0 else dy[i] * alpha * fm.exp(v)
    elif code == 6:
        scale, scale_alpha = dt(SELU_SCALE), dt(SELU_SCALE * SELU_ALPHA)
        for i in range(n):
            v = z[i]
            out[i] = dy[i] * scale if v > 0 else dy[i] * scale_alpha * fm.exp(v)
    elif code == 7:  # d/dv [v Phi(v)] = Phi(v) + v phi(v)
        inv_sqrt2, inv_sqrt_2pi = dt(_INV_SQRT2), dt(_INV_SQRT_2PI)
        for i in range(n):
            v = z[i]
            cdf = half * (one + fm.erf(v * inv_sqrt2))
            out[i] = dy[i] * (cdf + v * inv_sqrt_2pi * fm.exp(-half * v * v))
    elif code == 8:
        c, c3 = dt(_SQRT_2_OVER_PI), dt(_SQRT_2_OVER_PI * 0.044715)
        for i in range(n):
            v = z[i]
            t = fm.tanh(v * (c + c3 * v * v))
            out[i] = dy[i] * (half * (one + t) + half * v * (one - t * t) * (c + dt(3.0) * c3 * v * v))
    elif code == 9:
        for i in range(n):
            v = z[i]
            s = fm.sigmoid(v)
            out[i] = dy[i] * s * (one + v * (one - s))


@jit
def masked_scale(x, mask, scale, out):
    """out[i] = x[i] * (scale if mask[i] else 0), scale in x's dtype (a dropped NaN stays NaN); out may be
    x (read through out alone, as the activations)."""
    if x.ctypes.data == out.ctypes.data:
        _masked_scale(out, mask, scale, out)
    else:
        _masked_scale(x, mask, scale, out)


@jit_inline
def _masked_scale(x, mask, scale, out):
    dt = x.dtype.type
    s, zero = dt(scale), dt(0.0)
    for i in range(x.size):
        out[i] = x[i] * (s if mask[i] else zero)


@jit
def bias_activation_rows(code, alpha, z, bias, out):
    """z[r] += bias, then out[r] = act(z[r]), row by row so the second pass reads from cache; out may be z."""
    fm.prefer_512_bit_vectors()
    if z.ctypes.data == out.ctypes.data:
        _bias_activation_rows(code, alpha, out, bias, out, True)
    else:
        _bias_activation_rows(code, alpha, z, bias, out, False)


# The row loops below inline the activation: a call per row of activation_forward (which checks its
# operands' addresses) cost ~50 ns a row; a linear layer's bias over 768 x 128 took 44 us in place that
# way against 6-7 inlined, GELU's 768 x 512 with its bias 194 against 176 (a flat pass without one: 137).
@jit_inline
def _bias_activation_rows(code, alpha, z, bias, out, in_place):
    cols = z.shape[1]
    for r in range(z.shape[0]):
        zr = z[r]
        for c in range(cols):
            zr[c] += bias[c]
        if code != 0 or not in_place:  # (a linear layer's y is its z: nothing more to do)
            _activation_forward(code, alpha, zr, out[r])


@jit
def activation_backward_bias_rows(code, alpha, dy, z, y, out, dbias):
    """out[r] = dy[r] * act'(z[r]) (as activation_backward), then dbias += out[r]; out may be dy."""
    fm.prefer_512_bit_vectors()
    if dy.ctypes.data == out.ctypes.data:
        _activation_backward_bias_rows(code, alpha, out, z, y, out, dbias)
    else:
        _activation_backward_bias_rows(code, alpha, dy, z, y, out, dbias)


@jit_inline
def _activation_backward_bias_rows(code, alpha, dy, z, y, out, dbias):
    cols = dy.shape[1]
    for r in range(dy.shape[0]):
        _activation_backward(code, alpha, dy[r], z[r], y[r], out[r])
        o = out[r]
        for c in range(cols):
            dbias[c] += o[c]


@jit
def add_column_sums(x, out):
    """out += x summed over rows (bias gradients), without a temporary."""
    cols = x.shape[1]
    for r in range(x.shape[0]):
        for c in range(cols):
            out[c] += x[r, c]


# In place (attention's probabilities overwrite its scores, their gradient its dL/dP) as the activations:
# the char GPT's attention, 3072 rows of 64, one thread: softmax 440 against 198-212 us, its backward 90
# against 15-24 (out of place: 217-229 and 27-30).
@jit
def softmax_rows(z, out, log, scale, causal_t, row_max):
    """Row-wise (log-)softmax of ``scale * z`` (2-D); out may be z; row_max: scratch of z's row count.

    With ``causal_t`` > 0 the rows are (B * causal_t) attention scores and row r (query r % causal_t)
    sees keys 0..r % causal_t only; the masked entries of ``out`` are 0.
    """
    if z.ctypes.data == out.ctypes.data:
        _softmax_rows(out, out, log, scale, causal_t, row_max)
    else:
        _softmax_rows(z, out, log, scale, causal_t, row_max)


# Every row's maximum first, then the exponentials row by row: with the maximum's loop and the exp loop
# in one row's iteration, the char GPT's 48 causal (64, 64) heads took 287 us (one thread), 293 without
# the mask; in two sweeps 180 and 113 (2026-12-07). The maximum keeps 8 partial maxima (one chain of
# dependent max instructions ran at ~3 cycles an element). Float32 rows of unit stride take the masked
# 16-lane passes of vector_rows instead (no scalar tail; log-softmax too): 24 causal (64, 64) heads
# 74 -> 42 us, the same unmasked 73 -> 57, rows of 10 columns 301 -> 127, of 1024 168 -> 134 (one thread).
@jit_inline
def _softmax_rows(z, out, log, scale, causal_t, row_max):
    rows, cols = z.shape
    dt = z.dtype.type
    scale = dt(scale)
    if z.itemsize == 4 and z.strides[1] == 4 and out.strides[1] == 4:
        for r in range(rows):
            row_max[r] = vector_rows.row_max(z[r].ctypes.data, _seen(r, causal_t, cols))
        for r in range(rows):
            zr, o, seen = z[r].ctypes.data, out[r].ctypes.data, _seen(r, causal_t, cols)
            if log:
                vector_rows.log_softmax_row(zr, o, seen, cols, scale, row_max[r])
            else:
                vector_rows.softmax_row(zr, o, seen, cols, scale, row_max[r])
        return
    for r in range(rows):
        row_max[r] = _max8(z[r], _seen(r, causal_t, cols))
    for r in range(rows):
        seen = _seen(r, causal_t, cols)
        zr, o, m = z[r], out[r], row_max[r]
        s = dt(0.0)
        if log:  # o may be zr: read zr in full before writing
            for c in range(seen):
                s += fm.exp((zr[c] - m) * scale)
            lse = m * scale + math.log(s)
            for c in range(seen):
                o[c] = zr[c] * scale - lse
        else:
            for c in range(seen):
                e = fm.exp((zr[c] - m) * scale)
                o[c] = e
                s += e
            inv = dt(1.0) / s
            for c in range(seen):
                o[c] *= inv
        o[seen:] = 0.0  # (a slice: one memset; LLVM made the loop scattered vector stores, 3x slower)


@jit_inline
def _seen(r, causal_t, cols):
    """The columns row r of the softmax's rows sees: its query's keys 0..r % causal_t under a causal mask
    (``causal_t`` > 0), else all ``cols``."""
    return r % causal_t + 1 if causal_t > 0 else cols


@jit_inline
def _max8(x, n):
    """max(x[:n]) (n >= 1) in eight independent chains (a NaN in the row makes the softmax's sum NaN
    whatever this returns)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[0]
    c = 0
    while c + 8 <= n:
        m0, m1, m2, m3 = max(m0, x[c]), max(m1, x[c + 1]), max(m2, x[c + 2]), max(m3, x[c + 3])
        m4, m5, m6, m7 = max(m4, x[c + 4]), max(m5, x[c + 5]), max(m6, x[c + 6]), max(m7, x[c + 7])
        c += 8
    while c < n:
        m0 = max(m0, x[c])
        c += 1
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@jit
def softmax_rows_backward(dy, y, out, log, scale, causal_t=0):
    """d/dz of softmax(scale z): scale y (dy - sum(dy y)); of log_softmax: scale (dy - exp(y) sum(dy)).

    out may be dy. With ``causal_t`` > 0 (softmax_rows's masked rows) row r reads columns 0..r % causal_t
    only (dy may hold anything past them) and writes 0 past them.
    """
    if dy.ctypes.data == out.ctypes.data:
        _softmax_rows_backward(out, y, out, log, scale, causal_t)
    else:
        _softmax_rows_backward(dy, y, out, log, scale, causal_t)


@jit_inline
def _softmax_rows_backward(dy, y, out, log, scale, causal_t):
    rows, cols = dy.shape
    dt = dy.dtype.type
    scale = dt(scale)
    for r in range(rows):
        seen = _seen(r, causal_t, cols)
        s = dt(0.0)
        if log:
            for c in range(seen):
                s += dy[r, c]
            for c in range(seen):
                out[r, c] = scale * (dy[r, c] - fm.exp(y[r, c]) * s)
        else:
            for c in range(seen):
                s += dy[r, c] * y[r, c]
            for c in range(seen):
                out[r, c] = scale * y[r, c] * (dy[r, c] - s)
        out[r, seen:] = 0.0  # (as in _softmax_rows)


# ----------------------------------------------------------------- routing kernels (mixture of experts)
@jit
def topk_rows(x, k, values, indices):
    """The k largest entries of each row of 2-D x, largest first (ties: lower index first)."""
    rows, cols = x.shape
    for r in range(rows):
        for j in range(k):
            best = -1
            for c in range(cols):
                taken = False
                for i in range(j):
                    if indices[r, i] == c:
                        taken = True
                if not taken and (best < 0 or x[r, c] > x[r, best]):
                    best = c
            indices[r, j] = best
            values[r, j] = x[r, best]


@jit
def group_by_key(keys, order, counts):
    """Stable counting sort of the integer keys 0..len(counts)-1: order lists positions grouped by key."""
    counts[:] = 0
    for i in range(keys.size):
        counts[keys[i]] += 1
    start = 0
    for b in range(counts.size):
        n = counts[b]
        counts[b] = start  # temporarily the write cursor of bucket b
        start += n
    for i in range(keys.size):
        b = keys[i]
        order[counts[b]] = i
        counts[b] += 1
    for b in range(counts.size - 1, 0, -1):
        counts[b] -= counts[b - 1]


# ----------------------------------------------------------------- sequence models (norms, attention)
@jit
def norm_rows_forward(x, w, b, eps, center, has_bias, out, mean, rstd):
    """LayerNorm (center) or RMSNorm rows of 2-D x: out = (x - mean) * rstd * w (+ b); saves mean, rstd."""
    fm.prefer_512_bit_vectors()  # (768 rows of 128, one thread: forward 22 -> 21 us, backward 35 -> 31)
    rows, cols = x.shape
    dt = x.dtype.type
    eps, inv_cols = dt(eps), dt(1.0 / cols)
    for r in range(rows):
        xr, o = x[r], out[r]
        mu = dt(0.0)
        if center:
            for c in range(cols):
                mu += xr[c]
            mu *= inv_cols
        var = dt(0.0)
        for c in range(cols):
            d = xr[c] - mu
            var += d * d
        s = dt(1.0) / np.sqrt(var * inv_cols + eps)
        mean[r] = mu
        rstd[r] = s
        if has_bias:
            for c in range(cols):
                o[c] = (xr[c] - mu) * s * w[c] + b[c]
        else:
            for c in range(cols):
                o[c] = (xr[c] - mu) * s * w[c]


@jit
def norm_rows_backward(dy, x, w, mean, rstd, center, has_bias, dx, dw, db):
    """dx = rstd (g - mean(g) [LayerNorm only] - xhat mean(g xhat)), g = dy w.

    ACCUMULATES dw += sum dy xhat and db += sum dy.
    """
    fm.prefer_512_bit_vectors()  # (768 rows of 128, one thread: forward 22 -> 21 us, backward 35 -> 31)
    rows, cols = x.shape
    dt = x.dtype.type
    inv_cols = dt(1.0 / cols)
    for r in range(rows):
        mu, s = mean[r], rstd[r]
        xr, dyr, dxr = x[r], dy[r], dx[r]
        sg = dt(0.0)
        sgx = dt(0.0)
        for c in range(cols):
            xh = (xr[c] - mu) * s
            g = dyr[c] * w[c]
            sg += g
            sgx += g * xh
            dw[c] += dyr[c] * xh
        if has_bias:
            for c in range(cols):
                db[c] += dyr[c]
        mg = sg * inv_cols if center else dt(0.0)
        mgx = sgx * inv_cols
        for c in range(cols):
            dxr[c] = s * (dyr[c] * w[c] - mg - (xr[c] - mu) * s * mgx)


@jit
def scatter_add_rows(table, index, rows):
    """table[index[i]] += rows[i] (repeated indices accumulate)."""
    n, cols = rows.shape
    for i in range(n):
        k = index[i]
        for c in range(cols):
            table[k, c] += rows[i, c]


@jit
def class_labels(t, ignore_index, label, keep):
    """label[i] = t[i] (0 where t[i] == ignore_index), keep[i] = [t[i] != ignore_index]; returns the
    labels' (min, max), (0, -1) for none."""
    lo, hi = 0, -1
    for i in range(t.shape[0]):
        kept = t[i] != ignore_index
        value = t[i] if kept else 0
        label[i] = value
        keep[i] = 1.0 if kept else 0.0
        if i == 0 or value < lo:
            lo = value
        if i == 0 or value > hi:
            hi = value
    return lo, hi


@jit
def class_weights(label, weight, keep, rows, scores, w_row, flat):
    """w_row[i] = keep[i] weight[label[i]] (w_row is keep when weight is None), flat[i] = rows[i] C +
    label[i]; returns (sum w_row, sum_i w_row[i] scores[i, label[i]]) in float64. Labels in [0, C)."""
    c = scores.shape[1]
    total, picked = 0.0, 0.0
    for i in range(label.shape[0]):
        k = label[i]
        if weight is not None:
            w_row[i] = keep[i] * weight[k]
        flat[i] = rows[i] * c + k
        total += w_row[i]
        picked += w_row[i] * scores[i, k]
    return total, picked


@jit
def softmax_target_grad(logp, flat, coef, out):
    """out[i, c] = exp(logp[i, c]) coef[i, 0], then out.flat[flat[i]] -= coef[i, 0] (row i's target)."""
    rows, cols = logp.shape
    for i in range(rows):
        s = coef[i, 0]
        for c in range(cols):
            out[i, c] = fm.exp(logp[i, c]) * s
        out[i, flat[i] - i * cols] -= s


@jit
def batch_norm_stats(x, mean, var, c0, c1):
    """mean[c] and biased var[c] of x (N, C, M) over (N, M) for channels c0..c1-1, two passes each.
    (The BatchNorm kernels take whole arrays and a channel range, so that blocks of channels can run on
    separate threads with loops that still vectorise.)"""
    n, m = x.shape[0], x.shape[2]
    dt = x.dtype.type
    inv_count = dt(1.0 / (n * m))
    for c in range(c0, c1):
        mu = dt(0.0)
        for i in range(n):
            for j in range(m):
                mu += x[i, c, j]
        mu *= inv_count
        sq = dt(0.0)
        for i in range(n):
            for j in range(m):
                d = x[i, c, j] - mu
                sq += d * d
        mean[c] = mu
        var[c] = sq * inv_count


@jit
def batch_norm_forward(x, mean, rstd, w, b, relu, out, c0, c1):
    """out = (x - mean[c]) * rstd[c] * w[c] + b[c] for x (N, C, M), channels c0..c1-1; with ``relu``
    max(that, 0) in the same pass."""
    n, m = x.shape[0], x.shape[2]
    dt = x.dtype.type
    for c in range(c0, c1):
        scale = rstd[c] * w[c]
        shift = b[c] - mean[c] * scale
        for i in range(n):
            if relu:  # (one loop per case: a test inside the inner loop would keep it from vectorising)
                for j in range(m):
                    out[i, c, j] = max(x[i, c, j] * scale + shift, dt(0.0))
            else:
                for j in range(m):
                    out[i, c, j] = x[i, c, j] * scale + shift


@jit
def batch_norm_training_forward(x, w, b, eps, relu, out, mean, var, rstd, c0, c1):
    """``batch_norm_stats``, rstd = 1/sqrt(var + eps), then ``batch_norm_forward`` for channels c0..c1-1:
    a training forward in one call (one region on the row threads instead of two)."""
    batch_norm_stats(x, mean, var, c0, c1)
    for c in range(c0, c1):
        rstd[c] = 1.0 / math.sqrt(var[c] + eps)
    batch_norm_forward(x, mean, rstd, w, b, relu, out, c0, c1)


@jit
def batch_norm_sums(dy, y, x, mean, rstd, dw, db, c0, c1):
    """db[c] = sum g and dw[c] = sum g xhat over (N, M), xhat = (x - mean[c]) rstd[c] (written), for
    channels c0..c1-1; g = dy, or with a ReLU fused in the forward (``y`` its output, not empty)
    g = dy where y > 0, else 0."""
    n, m = x.shape[0], x.shape[2]
    dt = x.dtype.type
    relu = y.size > 0
    for c in range(c0, c1):
        sdy = dt(0.0)
        sdyx = dt(0.0)
        mu = mean[c]
        for i in range(n):
            if relu:
                for j in range(m):
                    g = dy[i, c, j] if y[i, c, j] > 0 else dt(0.0)
                    sdy += g
                    sdyx += g * (x[i, c, j] - mu)
            else:
                for j in range(m):
                    sdy += dy[i, c, j]
                    sdyx += dy[i, c, j] * (x[i, c, j] - mu)
        db[c] = sdy
        dw[c] = sdyx * rstd[c]


@jit
def batch_norm_dx(dy, y, x, mean, rstd, w, dw, db, training, dx, c0, c1):
    """dx = w rstd (g - db/M - xhat dw/M) (batch statistics) or w rstd g (running ones), channels
    c0..c1-1; g as in ``batch_norm_sums``."""
    n, m = x.shape[0], x.shape[2]
    dt = x.dtype.type
    inv_count = dt(1.0 / (n * m)) if training else dt(0.0)
    relu = y.size > 0
    for c in range(c0, c1):
        scale = w[c] * rstd[c]
        # dx = scale g - scale (db/M + (x - mean) rstd dw/M) = scale g + a x + k
        a = -scale * rstd[c] * dw[c] * inv_count
        k = -scale * db[c] * inv_count - a * mean[c]
        for i in range(n):
            if relu:
                for j in range(m):
                    g = dy[i, c, j] if y[i, c, j] > 0 else dt(0.0)
                    dx[i, c, j] = scale * g + a * x[i, c, j] + k
            else:
                for j in range(m):
                    dx[i, c, j] = scale * dy[i, c, j] + a * x[i, c, j] + k


# BatchNorm1D's (N, C) features: the kernels above walk down a column per channel, a cache line a value
# (256 x 512 float32, one thread: statistics 208 us, the forward 261, the sums 182, dx 329); these walk
# along the rows with the channels as the vector lanes, the same sums in the same order per channel. Each
# row's channels c0..c1 are sliced first: indexed as x[i, c] over range(c0, c1) the loops did not vectorise
# (a forward pass 166 against 23 us).
@jit
def batch_norm_rows_training_forward(x, w, b, eps, relu, out, mean, var, rstd, c0, c1):
    """``batch_norm_training_forward`` for x (N, C): the batch statistics over N, then the forward."""
    n, k = x.shape[0], c1 - c0
    dt = x.dtype.type
    inv_count = dt(1.0 / n)
    mu, sq, rs = mean[c0:c1], var[c0:c1], rstd[c0:c1]
    mu[:] = 0.0
    sq[:] = 0.0
    for i in range(n):
        row = x[i, c0:c1]
        for c in range(k):
            mu[c] += row[c]
    for c in range(k):
        mu[c] *= inv_count
    for i in range(n):
        row = x[i, c0:c1]
        for c in range(k):
            d = row[c] - mu[c]
            sq[c] += d * d
    for c in range(k):
        sq[c] *= inv_count
        rs[c] = 1.0 / math.sqrt(sq[c] + eps)
    batch_norm_rows_forward(x, mean, rstd, w, b, relu, out, c0, c1)


@jit
def batch_norm_rows_forward(x, mean, rstd, w, b, relu, out, c0, c1):
    """``batch_norm_forward`` for x (N, C)."""
    dt, k = x.dtype.type, c1 - c0
    mu, rs, ws, bs = mean[c0:c1], rstd[c0:c1], w[c0:c1], b[c0:c1]
    for i in range(x.shape[0]):
        row, into = x[i, c0:c1], out[i, c0:c1]
        if relu:
            for c in range(k):
                into[c] = max((row[c] - mu[c]) * (rs[c] * ws[c]) + bs[c], dt(0.0))
        else:
            for c in range(k):
                into[c] = (row[c] - mu[c]) * (rs[c] * ws[c]) + bs[c]


@jit
def batch_norm_rows_backward(dy, y, x, mean, rstd, w, training, dx, dw, db, c0, c1):
    """``batch_norm_sums`` then, unless dx has no rows, ``batch_norm_dx``, for x (N, C)."""
    n, k = x.shape[0], c1 - c0
    dt = x.dtype.type
    relu = y.size > 0
    mu, rs, ws, dws, dbs = mean[c0:c1], rstd[c0:c1], w[c0:c1], dw[c0:c1], db[c0:c1]
    dbs[:] = 0.0
    dws[:] = 0.0
    for i in range(n):
        g, row = dy[i, c0:c1], x[i, c0:c1]
        if relu:
            kept = y[i, c0:c1]
            for c in range(k):
                gc = g[c] if kept[c] > 0 else dt(0.0)
                dbs[c] += gc
                dws[c] += gc * (row[c] - mu[c])
        else:
            for c in range(k):
                dbs[c] += g[c]
                dws[c] += g[c] * (row[c] - mu[c])
    for c in range(k):
        dws[c] *= rs[c]
    if dx.shape[0] == 0:
        return
    inv_count = dt(1.0 / n) if training else dt(0.0)
    for i in range(n):  # dx = scale g - scale (db/N + xhat dw/N), scale = w rstd
        g, row, into = dy[i, c0:c1], x[i, c0:c1], dx[i, c0:c1]
        if relu:
            kept = y[i, c0:c1]
            for c in range(k):
                gc = g[c] if kept[c] > 0 else dt(0.0)
                into[c] = ws[c] * rs[c] * (gc - (dbs[c] + (row[c] - mu[c]) * rs[c] * dws[c]) * inv_count)
        else:
            for c in range(k):
                into[c] = ws[c] * rs[c] * (g[c] - (dbs[c] + (row[c] - mu[c]) * rs[c] * dws[c]) * inv_count)


@jit
def group_norm_forward(x, w, b, groups, eps, out, mean, rstd):
    """GroupNorm of x (N, C, M): each sample's channels in ``groups`` blocks of C/groups, normalised over
    the block's (C/groups) * M values, then out = xhat * w[c] + b[c]; saves mean, rstd (N * groups)."""
    n, channels, m = x.shape
    per = channels // groups
    dt = x.dtype.type
    eps, inv_count = dt(eps), dt(1.0 / (per * m))
    for i in range(n):
        for g in range(groups):
            block = x[i, g * per:(g + 1) * per]
            mu = dt(0.0)
            for c in range(per):
                for j in range(m):
                    mu += block[c, j]
            mu *= inv_count
            var = dt(0.0)
            for c in range(per):
                for j in range(m):
                    d = block[c, j] - mu
                    var += d * d
            s = dt(1.0) / np.sqrt(var * inv_count + eps)
            mean[i * groups + g] = mu
            rstd[i * groups + g] = s
            for c in range(per):
                k = g * per + c
                scale = s * w[k]
                for j in range(m):
                    out[i, k, j] = (block[c, j] - mu) * scale + b[k]


@jit
def group_norm_backward(dy, x, w, mean, rstd, groups, dx, dw, db):
    """dx = rstd (gy - mean(gy) - xhat mean(gy xhat)) per group, gy = dy w[c];

    ACCUMULATES dw[c] += sum dy xhat and db[c] += sum dy.
    """
    n, channels, m = x.shape
    per = channels // groups
    dt = x.dtype.type
    inv_count = dt(1.0 / (per * m))
    for i in range(n):
        for g in range(groups):
            mu, s = mean[i * groups + g], rstd[i * groups + g]
            sg = dt(0.0)
            sgx = dt(0.0)
            for c in range(per):
                k = g * per + c
                sdy = dt(0.0)
                sdyx = dt(0.0)
                for j in range(m):
                    xh = (x[i, k, j] - mu) * s
                    sdy += dy[i, k, j]
                    sdyx += dy[i, k, j] * xh
                dw[k] += sdyx
                db[k] += sdy
                sg += sdy * w[k]
                sgx += sdyx * w[k]
            mg, mgx = sg * inv_count, sgx * inv_count
            for c in range(per):
                k = g * per + c
                for j in range(m):
                    xh = (x[i, k, j] - mu) * s
                    dx[i, k, j] = s * (dy[i, k, j] * w[k] - mg - xh * mgx)
