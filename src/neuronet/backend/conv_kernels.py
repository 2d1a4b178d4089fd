"""Numba kernels for convolution and pooling on NCHW arrays (NumPy backend).

``im2col`` lays the patches out as ``(C, kh, kw, N, OH, OW)``, i.e. a ``(C*kh*kw, N*OH*OW)`` matrix,
so a convolution is ONE GEMM ``weight (O, C*kh*kw) @ cols``. Zero padding is applied on the fly
(no padded copy of the input). ``col2im`` is its adjoint. Every output element is written by
exactly one iteration, so the loops need no atomics and no ``np.add.at``.
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
def im2col(x, kh, kw, sh, sw, ph, pw, out):
    """out[c, i, j, n, oh, ow] = x[n, c, oh*sh + i - ph, ow*sw + j - pw], 0 outside x."""
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = out.shape[4], out.shape[5]
    for c in range(c_):
        for i in range(kh):
            lo_h, hi_h = _valid_range(oh_, sh, i - ph, h_)
            for j in range(kw):
                lo_w, hi_w = _valid_range(ow_, sw, j - pw, w_)
                for n in range(n_):
                    for oh in range(oh_):
                        if oh < lo_h or oh >= hi_h:
                            for ow in range(ow_):
                                out[c, i, j, n, oh, ow] = 0.0
                            continue
                        h = oh * sh + i - ph
                        for ow in range(lo_w):
                            out[c, i, j, n, oh, ow] = 0.0
                        for ow in range(lo_w, hi_w):
                            out[c, i, j, n, oh, ow] = x[n, c, h, ow * sw + j - pw]
                        for ow in range(hi_w, ow_):
                            out[c, i, j, n, oh, ow] = 0.0


@jit
def col2im(cols, kh, kw, sh, sw, ph, pw, out):
    """The adjoint of im2col: out[n, c, h, w] = sum of the cols entries that read x[n, c, h, w]."""
    n_, c_, h_, w_ = out.shape
    oh_, ow_ = cols.shape[4], cols.shape[5]
    out[...] = 0.0
    for c in range(c_):
        for i in range(kh):
            lo_h, hi_h = _valid_range(oh_, sh, i - ph, h_)
            for j in range(kw):
                lo_w, hi_w = _valid_range(ow_, sw, j - pw, w_)
                for n in range(n_):
                    for oh in range(lo_h, hi_h):
                        h = oh * sh + i - ph
                        for ow in range(lo_w, hi_w):
                            out[n, c, h, ow * sw + j - pw] += cols[c, i, j, n, oh, ow]


@jit
def max_pool2d(x, kh, kw, sh, sw, ph, pw, out, index):
    """out = the max of each window (padding counts as -inf); index = its flat h*W + w in x's plane.

    Ties keep the first maximum in scan order and a NaN wins (the last one), as in PyTorch's CPU
    kernel. The common, NaN-free window takes a branch-free path (random data would mispredict).
    """
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
                        for h in range(h_lo, h_hi):
                            for w in range(w_lo, w_hi):
                                if x[n, c, h, w] != x[n, c, h, w]:
                                    best = x[n, c, h, w]
                                    arg = h * w_ + w
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
