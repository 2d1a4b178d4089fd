"""Fused CPU kernels (Numba) behind the NumPy backend: one pass over memory each, no temporaries.

Elementwise kernels take flat (1-D, contiguous) arrays; row kernels take 2-D ``(rows, C)`` arrays
and act on the last axis. Codes for the activations are the positions in ``ACT_CODES``.
Every kernel is compiled on first use per dtype and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

ACT_CODES = {
    "linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "leaky_relu": 4, "elu": 5, "selu": 6,
    "gelu": 7, "gelu_tanh": 8, "silu": 9,
}

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_SQRT_2_OVER_PI = 0.7978845608028654

jit = numba.njit(cache=True, nogil=True, fastmath=False)


@jit
def _sigmoid(v):
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


# GELU on float32 data: libm's erf and exp are scalar calls that stop the loop from vectorising
# (~10 ns/element). These two are plain float32 arithmetic (no raising division, no promotion to
# float64 through Python-float constants), so LLVM vectorises the loop at full float32 width.
f32 = np.float32


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _erf32(x):
    """erf for float32 data, max abs error 4e-7: Eigen's odd/even rational fit on [-4, 4], +-1 beyond."""
    x = min(max(x, -f32(4.0)), f32(4.0))
    x2 = x * x
    p = -f32(2.72614225801306e-10)
    p = p * x2 + f32(2.77068142495902e-08)
    p = p * x2 - f32(2.10102402082508e-06)
    p = p * x2 - f32(5.69250639462346e-05)
    p = p * x2 - f32(7.34990630326855e-04)
    p = p * x2 - f32(2.95459980854025e-03)
    p = p * x2 - f32(1.60960333262415e-02)
    q = -f32(1.45660718464996e-05)
    q = q * x2 - f32(2.13374055278905e-04)
    q = q * x2 - f32(1.68282697438203e-03)
    q = q * x2 - f32(7.37332916720468e-03)
    q = q * x2 - f32(1.42647390514189e-02)
    return x * p / q


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gauss32(v):
    """exp(-v^2 / 2) for float32 data, relative error < 1e-6: exp(u)^32, u = -v^2/64 (Taylor, degree 8)."""
    y = v * v
    u = -min(y, f32(36.0)) * f32(1.0 / 64.0)
    e = f32(1.0 / 5040) + u * f32(1.0 / 40320)  # Horner, innermost term first
    e = f32(1.0 / 720) + u * e
    e = f32(1.0 / 120) + u * e
    e = f32(1.0 / 24) + u * e
    e = f32(1.0 / 6) + u * e
    e = f32(0.5) + u * e
    e = f32(1.0) + u * e
    e = f32(1.0) + u * e
    e *= e
    e *= e
    e *= e
    e *= e
    e *= e
    return f32(0.0) if y > f32(36.0) else e  # below 1.6e-8 * |v|: zero


@jit
def activation_forward(code, alpha, z, out):
    """out[i] = act(z[i]); alpha is LeakyReLU's slope or ELU's alpha."""
    n = z.size
    if code == 0:
        for i in range(n):
            out[i] = z[i]
    elif code == 1:
        for i in range(n):
            v = z[i]
            out[i] = 0.0 if v <= 0 else v  # NaN propagates, as in torch.relu
    elif code == 2:
        for i in range(n):
            out[i] = _sigmoid(z[i])
    elif code == 3:
        for i in range(n):
            out[i] = math.tanh(z[i])
    elif code == 4:
        for i in range(n):
            v = z[i]
            out[i] = v if v > 0 else v * alpha
    elif code == 5:
        for i in range(n):
            v = z[i]
            out[i] = v if v > 0 else alpha * (math.exp(v) - 1.0)
    elif code == 6:
        for i in range(n):
            v = z[i]
            out[i] = _SELU_SCALE * v if v > 0 else _SELU_SCALE * _SELU_ALPHA * (math.exp(v) - 1.0)
    elif code == 7:
        if z.itemsize == 4:  # float32: a rational erf that vectorises (libm's erf does not)
            for i in range(n):
                v = z[i]
                out[i] = f32(0.5) * v * (f32(1.0) + _erf32(v * f32(_INV_SQRT2)))
        else:
            for i in range(n):
                v = z[i]
                out[i] = 0.5 * v * (1.0 + math.erf(v * _INV_SQRT2))
    elif code == 8:
        for i in range(n):
            v = z[i]
            out[i] = 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    elif code == 9:
        for i in range(n):
            v = z[i]
            out[i] = v * _sigmoid(v)


@jit
def activation_backward(code, alpha, dy, z, y, out):
    """out[i] = dy[i] * act'(z[i]); relu/sigmoid/tanh read the output y, the rest read z."""
    n = dy.size
    if code == 0:
        for i in range(n):
            out[i] = dy[i]
    elif code == 1:
        for i in range(n):
            out[i] = dy[i] if y[i] > 0 else 0.0
    elif code == 2:
        for i in range(n):
            s = y[i]
            out[i] = dy[i] * s * (1.0 - s)
    elif code == 3:
        for i in range(n):
            t = y[i]
            out[i] = dy[i] * (1.0 - t * t)
    elif code == 4:
        for i in range(n):
            out[i] = dy[i] if z[i] > 0 else dy[i] * alpha
    elif code == 5:
        for i in range(n):
            v = z[i]
            out[i] = dy[i] if v > 0 else dy[i] * alpha * math.exp(v)
    elif code == 6:
        for i in range(n):
            v = z[i]
            out[i] = dy[i] * _SELU_SCALE if v > 0 else dy[i] * _SELU_SCALE * _SELU_ALPHA * math.exp(v)
    elif code == 7:
        if z.itemsize == 4:
            for i in range(n):
                v = z[i]
                cdf = f32(0.5) * (f32(1.0) + _erf32(v * f32(_INV_SQRT2)))
                out[i] = dy[i] * (cdf + v * f32(_INV_SQRT_2PI) * _gauss32(v))
        else:
            for i in range(n):
                v = z[i]
                cdf = 0.5 * (1.0 + math.erf(v * _INV_SQRT2))
                out[i] = dy[i] * (cdf + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v))
    elif code == 8:
        for i in range(n):
            v = z[i]
            t = math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))
            d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
            out[i] = dy[i] * d
    elif code == 9:
        for i in range(n):
            v = z[i]
            s = _sigmoid(v)
            out[i] = dy[i] * s * (1.0 + v * (1.0 - s))


@jit
def bias_activation_rows(code, alpha, z, bias, out):
    """z[r] += bias, then out[r] = act(z[r]), row by row so the second pass reads from cache; out may be z."""
    cols = z.shape[1]
    for r in range(z.shape[0]):
        zr = z[r]
        for c in range(cols):
            zr[c] += bias[c]
        activation_forward(code, alpha, zr, out[r])


@jit
def activation_backward_bias_rows(code, alpha, dy, z, y, out, dbias):
    """out[r] = dy[r] * act'(z[r]) (as activation_backward), then dbias += out[r]; out may be dy."""
    cols = dy.shape[1]
    for r in range(dy.shape[0]):
        activation_backward(code, alpha, dy[r], z[r], y[r], out[r])
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


@jit
def softmax_rows(z, out, log):
    """Row-wise (log-)softmax of a 2-D array; out may be z."""
    rows, cols = z.shape
    for r in range(rows):
        m = z[r, 0]
        for c in range(1, cols):
            if z[r, c] > m:
                m = z[r, c]
        s = 0.0
        for c in range(cols):
            s += math.exp(z[r, c] - m)
        if log:
            lse = m + math.log(s)
            for c in range(cols):
                out[r, c] = z[r, c] - lse
        else:
            inv = 1.0 / s
            for c in range(cols):
                out[r, c] = math.exp(z[r, c] - m) * inv


@jit
def softmax_rows_backward(dy, y, out, log):
    """softmax: dz = y (dy - sum(dy y));  log_softmax: dz = dy - exp(y) sum(dy). out may be dy."""
    rows, cols = dy.shape
    for r in range(rows):
        s = 0.0
        if log:
            for c in range(cols):
                s += dy[r, c]
            for c in range(cols):
                out[r, c] = dy[r, c] - math.exp(y[r, c]) * s
        else:
            for c in range(cols):
                s += dy[r, c] * y[r, c]
            for c in range(cols):
                out[r, c] = y[r, c] * (dy[r, c] - s)


def warm_up(dtype=np.float32) -> None:
    """Compile (or load from the cache) the activation kernels for one dtype."""
    a = np.zeros(2, dtype)
    for code in ACT_CODES.values():
        activation_forward(code, 0.01, a, a)
        activation_backward(code, 0.01, a, a, a, a)
    m = a.reshape(1, 2)
    softmax_rows(m, m, True)
    softmax_rows_backward(m, m, m, True)


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
    rows, cols = x.shape
    for r in range(rows):
        mu = 0.0
        if center:
            for c in range(cols):
                mu += x[r, c]
            mu /= cols
        var = 0.0
        for c in range(cols):
            d = x[r, c] - mu
            var += d * d
        s = 1.0 / math.sqrt(var / cols + eps)
        mean[r] = mu
        rstd[r] = s
        for c in range(cols):
            v = (x[r, c] - mu) * s * w[c]
            out[r, c] = v + b[c] if has_bias else v


@jit
def norm_rows_backward(dy, x, w, mean, rstd, center, has_bias, dx, dw, db):
    """dx = rstd (g - mean(g) [LayerNorm only] - xhat mean(g xhat)), g = dy w.

    ACCUMULATES dw += sum dy xhat and db += sum dy.
    """
    rows, cols = x.shape
    for r in range(rows):
        mu, s = mean[r], rstd[r]
        sg = 0.0
        sgx = 0.0
        for c in range(cols):
            xh = (x[r, c] - mu) * s
            g = dy[r, c] * w[c]
            sg += g
            sgx += g * xh
            dw[c] += dy[r, c] * xh
            if has_bias:
                db[c] += dy[r, c]
        mg = sg / cols if center else 0.0
        mgx = sgx / cols
        for c in range(cols):
            xh = (x[r, c] - mu) * s
            dx[r, c] = s * (dy[r, c] * w[c] - mg - xh * mgx)


@jit
def causal_softmax_rows(z, out, t):
    """Softmax of the rows of 2-D z = (B*t, t) scores where row r (query r % t) sees keys 0..r % t only."""
    rows, cols = z.shape
    for r in range(rows):
        q = r % t
        m = z[r, 0]
        for c in range(1, q + 1):
            if z[r, c] > m:
                m = z[r, c]
        s = 0.0
        for c in range(q + 1):
            e = math.exp(z[r, c] - m)
            out[r, c] = e
            s += e
        inv = 1.0 / s
        for c in range(q + 1):
            out[r, c] *= inv
        for c in range(q + 1, cols):
            out[r, c] = 0.0


@jit
def scatter_add_rows(table, index, rows):
    """table[index[i]] += rows[i] (repeated indices accumulate)."""
    n, cols = rows.shape
    for i in range(n):
        k = index[i]
        for c in range(cols):
            table[k, c] += rows[i, c]
