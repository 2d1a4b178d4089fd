"""Numba kernels for convolution and pooling on NCHW arrays (NumPy backend).

``col2im`` is the adjoint of im2col (NumpyOps.im2col, a strided copy): it adds the columns
``(C, kh, kw, N, OH, OW)`` back into the unpadded image, dropping what fell on the zero padding.
The loops run over the destination in order and need no atomics and no ``np.add.at``.
``fold_shifted`` is the same adjoint for the stride-1 shifted-rows columns (NumpyOps._shifted_columns).
``direct_conv2d`` and ``direct_conv2d_backward`` compute a stride-1 convolution with few inputs per output
(the first layer's one or three channels) straight from the padded planes, without columns;
``implicit_conv2d`` the forward of one with more, as an implicit GEMM over those planes.
"""

from __future__ import annotations

import numba
import numpy as np

from .packed_gemm import gemm, gemm_indexed, pack

jit = numba.njit(cache=True, nogil=True)
# The direct convolution's sums may be reassociated (vectorised dot products), as a GEMM's are.
jit_sums = numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"}, error_model="numpy")


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
            _fill(plane, 0.0)
            for i in range(kh):
                for j in range(kw):
                    _add_row(dcols[c, i, j, n], plane[i * dh * wp + j * dw:])


@jit
def _add_row(row, into):
    for p in range(row.shape[0]):
        into[p] += row[p]


# The implicit GEMM: for four or more input channels the forward is per image one product weight (O, C*kh*kw)
# @ B whose row (c, k) is plane (n, c) from offsets[k], read where it lies (packed_gemm.gemm_indexed), no
# columns written: the MNIST CNN's 32 -> 64 layer at 14x14, 64 images on two threads, 2.78 against 3.59 ms
# for columns + OpenBLAS; 16 -> 16 at 28x28 1.57 against 3.14 ms.
@jit
def implicit_conv2d(planes, weight, index, bias, wp, z, out):
    """out (b, O, OH, OW) = bias[o] + sum over (c, k) of weight[o, c k] * plane (n, c) from offsets[k].

    planes (b, C*P + slack): each image's padded planes one after another, index (C*kh*kw,) = c*P +
    offsets[k]; weight (O, C*kh*kw); bias (O,); z: a scratch (O, OH*Wp).
    """
    b, o_, oh, ow = out.shape
    for n in range(b):
        gemm_indexed(weight, planes[n], index, z)
        for o in range(o_):
            for r in range(oh):
                _copy_row_plus(z[o, r * wp:r * wp + ow], bias[o], out[n, o, r])


# Its backward, per image, from dz (O, Z): dy laid out as z (zero past OW in each row) after M zeros, M the
# last tap's offset, and zeros after it. dx is the convolution of dz with the transposed kernel, again an
# implicit GEMM: dplanes[c, q] = sum over (o, k) of weight[o, c, k] * dz[o, M + q - offsets[k]], computed
# for the rows of the image (q from top*Wp, H*Wp long) and cropped. dweight, per tap k, is one GEMM of
# the planes read from offsets[k] (C, OH*Wp: two strides) with dz^T packed once per image.
@jit
def implicit_conv2d_backward(planes, plane_length, dy, w_t, index_t, offsets, wp, left, dz, packed, dxz,
                             dw_t, dx):
    """The gradients of implicit_conv2d from dy (b, O, OH, OW); either is skipped when it has no rows:
    dx (b, C, H, W) = per image w_t (C, O*K) @ the rows of dz from index_t (O*K,) = o*Z + M + top*Wp -
    offsets[k], cropped from dxz (C, H*Wp) at column ``left``; dw_t (C, K, O) += per tap k the planes
    (b, C*P + slack) of x from offsets[k] @ dz^T, through ``packed`` (packed_shape((OH*Wp, O))).
    dz: a scratch (O, Z) with Z >= M + Hp*Wp + NR (zeroed here; only the data columns are written)."""
    b, o_, oh, ow = dy.shape
    front, length = offsets[offsets.shape[0] - 1], oh * wp
    dz[...] = 0.0
    for n in range(b):
        for o in range(o_):
            for r in range(oh):
                _copy_row(dy[n, o, r], dz[o, front + r * wp:front + r * wp + ow])
        if dw_t.shape[0]:
            c_ = dw_t.shape[0]
            pack(dz[:, front:front + length].T, packed)
            image = planes[n, :c_ * plane_length].reshape(c_, plane_length)
            for k in range(offsets.shape[0]):
                gemm(image[:, offsets[k]:offsets[k] + length], packed, dw_t[:, k], True)
        if dx.shape[0]:
            gemm_indexed(w_t, dz, index_t, dxz)
            c_, h_, w_ = dx.shape[1], dx.shape[2], dx.shape[3]
            for c in range(c_):
                for h in range(h_):
                    _copy_row(dxz[c, h * wp + left:h * wp + left + w_], dx[n, c, h])


# Explicit loops: a slice assignment (``a[:] = b``) in a kernel takes Numba's general broadcasting path,
# 4x slower on these rows of 14-28 floats (0.78 against 0.19 ms for the 57 344 output rows of the MNIST
# CNN's first layer).
@jit
def _fill(row, value):
    for p in range(row.shape[0]):
        row[p] = value


@jit
def _copy_row(source, into):
    for p in range(source.shape[0]):
        into[p] = source[p]


@jit
def _copy_row_plus(source, value, into):
    for p in range(source.shape[0]):
        into[p] = source[p] + value


# The direct convolution. Plane (n, c) holds image n's channel c inside its zero padding, rows Wp apart
# (NumpyOps._padded_planes, _row_stride); tap k of the kernel, (i, j), reads it from offsets[k] =
# i*dh*Wp + j*dw. A row of z, OH*Wp long, is an output plane over whole rows (its last Wp - OW columns of each
# row are dropped), so every tap is one contiguous multiply-add over the row. Each pass adds three taps
# to one output row (loads of z and stores cut by three), and the weight gradient takes four output
# channels' dot products per pass over a tap's inputs: at one thread, 64 images of 28x28, one channel in
# and 32 out, 0.96 ms forward and 1.2 ms for dweight + dbias, against 1.7 and 2.7 ms for columns + GEMM.
@jit_sums
def direct_conv2d(planes, weight, offsets, bias, wp, z, out):
    """out (b, O, OH, OW) = bias[o] + sum over c, k of weight[o, c, k] * plane (n, c) from offsets[k].

    planes (b, C, P); weight (O, C, kh*kw); bias (O,); z: a scratch row (OH*Wp,).
    """
    b, o_, oh, ow = out.shape
    c_, k_, length = weight.shape[1], weight.shape[2], z.shape[0]
    for n in range(b):
        for o in range(o_):
            _fill(z, bias[o])
            for c in range(c_):
                for k in range(0, k_ - 2, 3):
                    _add_taps(z, planes[n, c, offsets[k]:offsets[k] + length], weight[o, c, k],
                              planes[n, c, offsets[k + 1]:offsets[k + 1] + length], weight[o, c, k + 1],
                              planes[n, c, offsets[k + 2]:offsets[k + 2] + length], weight[o, c, k + 2])
                for k in range(k_ - k_ % 3, k_):
                    _add_tap(z, planes[n, c, offsets[k]:offsets[k] + length], weight[o, c, k])
            for r in range(oh):
                _copy_row(z[r * wp:r * wp + ow], out[n, o, r])


@jit_sums
def _add_taps(z, s0, w0, s1, w1, s2, w2):
    for p in range(z.shape[0]):
        z[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p]


@jit_sums
def _add_tap(z, s0, w0):
    for p in range(z.shape[0]):
        z[p] += w0 * s0[p]


@jit_sums
def direct_conv2d_backward(planes, dy, weight, offsets, wp, rows, dweight, dbias, dplanes):
    """The gradients of direct_conv2d from dy (b, O, OH, OW): dbias (O,) += dy's sums, dweight (O, C, K)
    += dy . each tap's inputs, dplanes (b, C, P) = the adjoint (zeroed first); each is skipped when it
    has no rows. rows: scratch (4, OH*Wp) for four channels of dy laid out as z (zero past OW)."""
    b, o_, oh, ow = dy.shape
    c_, k_, length = weight.shape[1], weight.shape[2], rows.shape[1]
    rows[...] = 0.0
    if dplanes.shape[0]:
        dplanes[...] = 0.0
    for n in range(b):
        for o0 in range(0, o_, 4):
            m = min(4, o_ - o0)
            for j in range(m):
                total = rows.dtype.type(0.0)
                for r in range(oh):
                    source, row = dy[n, o0 + j, r], rows[j, r * wp:r * wp + ow]
                    for q in range(ow):
                        row[q] = source[q]
                        total += source[q]
                if dbias.shape[0]:
                    dbias[o0 + j] += total
            for j in range(m, 4):  # a last group of fewer than four: the other rows add nothing
                rows[j] = 0.0
            for c in range(c_):
                for k in range(k_):
                    if dweight.shape[0]:
                        sums = _dot4(rows, planes[n, c, offsets[k]:offsets[k] + length])
                        for j in range(m):
                            dweight[o0 + j, c, k] += sums[j]
                    if dplanes.shape[0]:
                        into = dplanes[n, c, offsets[k]:offsets[k] + length]
                        _add_rows4(rows, weight[o0:o0 + m, c, k], into)


@jit_sums
def _dot4(rows, taps):
    """The four dot products rows[j] . taps, in one pass over taps."""
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    a0 = a1 = a2 = a3 = rows.dtype.type(0.0)
    for p in range(taps.shape[0]):
        v = taps[p]
        a0 += r0[p] * v
        a1 += r1[p] * v
        a2 += r2[p] * v
        a3 += r3[p] * v
    return a0, a1, a2, a3


@jit_sums
def _add_rows4(rows, weights, into):
    """into += sum over j of weights[j] * rows[j] (up to four rows; the rest are zero)."""
    m, zero = weights.shape[0], rows.dtype.type(0.0)
    w0, w1 = weights[0], weights[1] if m > 1 else zero
    w2, w3 = weights[2] if m > 2 else zero, weights[3] if m > 3 else zero
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    for p in range(into.shape[0]):
        into[p] += w0 * r0[p] + w1 * r1[p] + w2 * r2[p] + w3 * r3[p]


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
    """Branch-free over a row of windows, so that the loop vectorises (0.44 against 0.82 ms with a NaN
    test per window, 64x32 planes of 28x28, one thread); a row with a NaN is redone by the exact rule."""
    w_ = x.shape[3]
    for n in range(out.shape[0]):
        for c in range(out.shape[1]):
            for oh in range(out.shape[2]):
                h = 2 * oh
                top, bottom, best_row, arg_row = x[n, c, h], x[n, c, h + 1], out[n, c, oh], index[n, c, oh]
                nan = False
                for ow in range(out.shape[3]):
                    w = 2 * ow
                    a, b, d, e = top[w], top[w + 1], bottom[w], bottom[w + 1]
                    nan |= (a != a) | (b != b) | (d != d) | (e != e)
                    # Arithmetic selects: no branch to mispredict on random data.
                    best, arg = a, h * w_ + w
                    arg += np.int64(b > best) * (h * w_ + w + 1 - arg)
                    best = max(b, best)
                    arg += np.int64(d > best) * ((h + 1) * w_ + w - arg)
                    best = max(d, best)
                    arg += np.int64(e > best) * ((h + 1) * w_ + w + 1 - arg)
                    best_row[ow] = max(e, best)
                    arg_row[ow] = arg
                if nan:  # rare: PyTorch's rule for NaN (see _max_window) on this row's windows
                    for ow in range(out.shape[3]):
                        _max_window(x[n, c], h, h + 2, 2 * ow, 2 * ow + 2, out[n, c], index[n, c], oh, ow)


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
