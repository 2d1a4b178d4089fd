"""Numba kernels for convolution and pooling on NCHW arrays (NumPy backend).

``col2im`` is the adjoint of im2col (NumpyOps.im2col, a strided copy): it adds the columns
``(C, kh, kw, N, OH, OW)`` back into the unpadded image, dropping what fell on the zero padding.
The loops run over the destination in order and need no atomics and no ``np.add.at``.
``fold_shifted`` is the same adjoint for the stride-1 shifted-rows columns (NumpyOps._shifted_columns).
"""

from __future__ import annotations

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True)


@jit
def _valid_range(size, stride, offset, limit):
    """The o in [0, size) with 0 <= o*stride + offset < limit, as [lo, hi)."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = size
    if (size - 1) * stride + offset >= limit:
        hi = (limit - offset + stride - 1) // stride
    if hi < lo:
        hi = lo
    return lo, hi


@jit
def col2im(cols, sh, sw, dh, dw, ph, pw, out):
    """The adjoint of im2col: out[n, c, h, w] = sum of the cols entries that read x[n, c, h, w].

    cols (C, kh, kw, N, OH, OW) read x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw]; ph, pw: the padding
    before (top, left); whatever falls outside out's (H, W) was padding and is dropped.
    """
    n_, c_, h_, w_ = out.shape
    kh, kw, oh_, ow_ = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    out[...] = 0.0
    for c in range(c_):
        for i in range(kh):
            lo_h, hi_h = _valid_range(oh_, sh, i * dh - ph, h_)
            for j in range(kw):
                lo_w, hi_w = _valid_range(ow_, sw, j * dw - pw, w_)
                for n in range(n_):
                    for oh in range(lo_h, hi_h):
                        h = oh * sh + i * dh - ph
                        for ow in range(lo_w, hi_w):
                            out[n, c, h, ow * sw + j * dw - pw] += cols[c, i, j, n, oh, ow]


@jit
def fold_shifted(dcols, wp, dh, dw, planes):
    """The adjoint of NumpyOps._shifted_columns: planes[n, c] (zeroed first) += each entry (c, i, j, n)
    of dcols (C, kh, kw, N, L), a row of L read from the plane at i*dh*wp + j*dw.

    Each row is added through a slice taken from that offset: indexing the plane with ``off + p``
    makes Numba check for a negative index and the loop does not vectorise (3x slower).
    """
    c_, kh, kw, n_, length = dcols.shape
    for n in range(n_):
        for c in range(c_):
            plane = planes[n, c]
            plane[:] = 0.0
            for i in range(kh):
                for j in range(kw):
                    _add_row(dcols[c, i, j, n], plane[i * dh * wp + j * dw:])


@jit
def _add_row(row, into):
    for p in range(row.shape[0]):
        into[p] += row[p]


def max_pool2d(x, kh, kw, sh, sw, ph, pw, out, index):
    """out = the max of each window (padding counts as -inf); index = its flat h*W + w in x's plane.

    Ties keep the first maximum in scan order and a NaN wins (the last one), as in PyTorch's CPU
    kernel. The usual 2x2 / stride 2 pooling has its own unrolled kernel (~20x faster than the
    general loops, whose short variable-length window loops do not pipeline).
    """
    whole = 2 * out.shape[2] <= x.shape[2] and 2 * out.shape[3] <= x.shape[3]  # no partial (ceil_mode) window
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0) and whole:
        _max_pool_2x2(x, out, index)
    else:
        _max_pool_any(x, kh, kw, sh, sw, ph, pw, out, index)


@jit
def _max_pool_2x2(x, out, index):
    w_ = x.shape[3]
    for n in range(out.shape[0]):
        for c in range(out.shape[1]):
            for oh in range(out.shape[2]):
                h = 2 * oh
                for ow in range(out.shape[3]):
                    w = 2 * ow
                    a, b = x[n, c, h, w], x[n, c, h, w + 1]
                    d, e = x[n, c, h + 1, w], x[n, c, h + 1, w + 1]
                    if (a != a) | (b != b) | (d != d) | (e != e):  # rare: leave NaN to the exact loop
                        _max_window(x[n, c], h, h + 2, w, w + 2, out[n, c], index[n, c], oh, ow)
                        continue
                    # Arithmetic selects: no branch to mispredict on random data.
                    best, arg = a, h * w_ + w
                    arg += np.int64(b > best) * (h * w_ + w + 1 - arg)
                    best = max(b, best)
                    arg += np.int64(d > best) * ((h + 1) * w_ + w - arg)
                    best = max(d, best)
                    arg += np.int64(e > best) * ((h + 1) * w_ + w + 1 - arg)
                    out[n, c, oh, ow] = max(e, best)
                    index[n, c, oh, ow] = arg


@jit
def _max_window(plane, h_lo, h_hi, w_lo, w_hi, out, index, oh, ow):
    """One window by PyTorch's rule: take v when v > best or v is NaN."""
    best, arg = -np.inf, h_lo * plane.shape[1] + w_lo
    for h in range(h_lo, h_hi):
        for w in range(w_lo, w_hi):
            v = plane[h, w]
            if v > best or v != v:
                best, arg = v, h * plane.shape[1] + w
    out[oh, ow] = best
    index[oh, ow] = arg


@jit
def _max_pool_any(x, kh, kw, sh, sw, ph, pw, out, index):
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    for n in range(n_):
        for c in range(c_):
            for oh in range(oh_):
                h0 = oh * sh - ph
                h_lo, h_hi = max(h0, 0), min(h0 + kh, h_)
                for ow in range(ow_):
                    w0 = ow * sw - pw
                    w_lo, w_hi = max(w0, 0), min(w0 + kw, w_)
                    best = x[n, c, h_lo, w_lo]
                    arg = h_lo * w_ + w_lo
                    nan = False
                    for h in range(h_lo, h_hi):
                        for w in range(w_lo, w_hi):
                            v = x[n, c, h, w]
                            arg += np.int64(v > best) * (h * w_ + w - arg)
                            best = max(v, best)
                            nan |= v != v
                    if nan:
                        _max_window(x[n, c], h_lo, h_hi, w_lo, w_hi, out[n, c], index[n, c], oh, ow)
                        continue
                    out[n, c, oh, ow] = best
                    index[n, c, oh, ow] = arg


@jit
def max_pool2d_backward(dy, index, out):
    """out[n, c] (flattened plane) = sum of dy at the windows whose max sat there."""
    n_, c_ = out.shape[0], out.shape[1]
    out[...] = 0.0
    for n in range(n_):
        for c in range(c_):
            plane = out[n, c].reshape(-1)
            g = dy[n, c]
            idx = index[n, c]
            for oh in range(g.shape[0]):
                for ow in range(g.shape[1]):
                    plane[idx[oh, ow]] += g[oh, ow]
