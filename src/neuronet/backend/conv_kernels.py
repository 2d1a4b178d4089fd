"""Numba kernels for convolution and pooling on NCHW arrays (NumPy backend).

``col2im`` is the adjoint of im2col (NumpyOps.im2col, a strided copy): it adds the columns
``(C, kh, kw, N, OH, OW)`` back into the unpadded image, dropping what fell on the zero padding.
The loops run over the destination in order and need no atomics and no ``np.add.at``.
A convolution runs on each image's padded planes (``_pad_image``; a strided one's split into phases, see
conv_layout) without columns: ``implicit_conv2d`` and ``implicit_conv2d_backward`` as implicit GEMMs
(packed_gemm), and a stride-1 first layer's weight gradient, with too few rows for a GEMM, in
``direct_conv2d_backward``.
"""

from __future__ import annotations

import numba
import numpy as np

from .packed_gemm import BLOCK, gemm_gather, gemm_indexed, gemm_rows, pack, transpose_block
from .pair_rows import merge_pairs, split_pairs

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


# The implicit GEMM: per image and group one product weight (O/g, C/g*kh*kw) @ B whose row (c, k) is plane
# (n, c) from offsets[k], read where it lies (packed_gemm.gemm_indexed), no columns written: the MNIST CNN's
# 32 -> 64 layer at 14x14, 64 images on two threads, 2.78 against 3.59 ms for columns + OpenBLAS; 16 -> 16 at
# 28x28 1.57 against 3.14 ms; 3 -> 32 at 32x32 0.87 against 1.68 ms for the direct loops it replaced.
# A small image fills the product's 32-column panels badly (7x7: 49 pixels in 64 columns) where its channels
# fill them well: with ``pixels`` the product runs transposed, B^T @ weight^T, one row per output pixel
# (packed_gemm.gemm_gather) and one panel per 32 channels (32 -> 32 at 7x7, 64 images, one thread: 0.51
# against 0.70 ms for the products; see numpy_ops._pixel_rows for the choice).
@jit
def implicit_conv2d(x, top, left, plane, planes, weight, index, bias, wp, pixels, weight_t, z, out, sh, sw,
                    phases):
    """out (b, O, OH, OW) = bias[o] + sum over (c, k) of o's group of weight[o, c k] * the planes from
    index[c, k].

    x (b, C, H, W), each image laid into ``planes`` (C*S*P + slack,), P = ``plane``, S = sh*sw phases
    (the stride), in turn, but those no tap reads (``phases``: conv_layout.phase_table's); index
    (C*kh*kw,) (conv_layout.plane_index); weight (O, C/g*kh*kw), the groups
    one after another; bias (O,); z: a scratch (O, OH*Wp). With ``pixels`` (OH*OW,) not empty (stride 1),
    where output pixel (r, q) reads the planes (r*Wp + q), the products run with the pixels as rows from
    ``weight_t`` (g, ...): each group's weight^T packed (packed_gemm.pack), and z is (OH*OW, O).
    """
    b, o_, oh, ow = out.shape
    rows = weight.shape[1]
    groups = index.shape[0] // rows
    og = o_ // groups
    planes[...] = 0.0
    for n in range(b):
        _pad_image(x[n], top, left, wp, plane, planes, sh, sw, phases)
        for g in range(groups):
            if pixels.shape[0]:
                gemm_gather(planes, pixels, index[g * rows:(g + 1) * rows], weight_t[g],
                            z[:, g * og:(g + 1) * og])
            else:
                gemm_indexed(weight[g * og:(g + 1) * og], planes, index[g * rows:(g + 1) * rows],
                             z[g * og:(g + 1) * og])
        if pixels.shape[0]:
            _copy_pixels(z, bias, out[n])
        else:
            for o in range(o_):
                for r in range(oh):
                    _copy_row(z[o, r * wp:r * wp + ow], out[n, o, r], bias[o])


# Its backward, per image, from dz (O, Z): dy laid out as z (zero past OW in each row) after M zeros, M the
# largest tap offset, and zeros after it. dx is the convolution of dz with the transposed kernel, again an
# implicit GEMM per phase: dplanes[c, q] = sum over (o, k) of the phase's taps of weight[o, c, k] *
# dz[o, M + q - offsets[k]], computed for the plane rows that hold image rows and cropped. dweight^T
# (C/g*K, O/g) of a group is the GEMM of its columns, read where they lie as rows of the planes (gemm_rows,
# the forward's table), with its dz^T packed.
# A group with fewer output channels than this (depthwise: one) takes its weight gradient as dot products:
# packing its dz^T would fill 32-column panels with zeros (64 channels of 14x14, 64 images, two threads:
# 0.9 against 16.4 ms).
# dx, the forward's product over dz, takes the pixels as rows for a small image as the forward does.
# (The groups are not an argument: Numba 0.68 on CPython 3.11 keeps ~200 bytes per call of a function of
# exactly 20 arguments, and a steady-state step must allocate nothing.)
DOTS_BELOW = 8


@jit
def implicit_conv2d_backward(x, top, left, plane, planes, dy, w_t, index_t, index, front, wp, dz, packed,
                             dx_pixels, w_t_packed, dxz, dw_t, dx, dbias, sh, sw, phases):
    """The gradients of implicit_conv2d from dy (b, O, OH, OW); each is skipped when it has no rows.

    dx (b, C, H, W): per image, group and phase p, w_t (C, O/g*K) (row c: weight[o, c, k] over the o of
    c's group, phase by phase, conv_layout.phase_table's order) @ the rows of dz from index_t (O*K,),
    into dxz (S, C, R*Wp), then written back through the phase split (``_unphase``). ``phases`` (S, 4):
    per phase its first and end tap, first plane row and rows (conv_layout.phase_table). dw_t
    (C*K, O/g) += per image and group the rows of its planes (x (b, C, H, W) laid into ``planes`` as
    implicit_conv2d's) from index (C*K,) @ the group's dz^T, through ``packed``
    (packed_shape((OH*Wp, O/g))). With ``dx_pixels`` (H*W,) not empty (stride 1), where input pixel (h, w)
    reads dz (h*Wp + left + w), dx's products run with the pixels as rows from ``w_t_packed`` (g, ...):
    each group's w_t^T packed, and dxz is (1, H*W, C).
    dbias (O,) += dy's sums, taken as dy is copied into dz.
    dz: a scratch (O, Z) (conv_layout.gradient_index's Z; zeroed here, only the data columns written)."""
    b, o_, oh, ow = dy.shape
    length, groups = oh * wp, index_t.shape[0] // w_t.shape[1]  # w_t: (C, O/g*K), index_t: (O*K,)
    og, cg, rows = o_ // groups, w_t.shape[0] // groups, index.shape[0] // groups  # per group: o, c, (c, k)
    taps, zero = rows // cg, dz.dtype.type(0.0)
    dz[...] = 0.0
    if dw_t.shape[0]:
        planes[...] = 0.0
    for n in range(b):
        if dw_t.shape[0]:
            _pad_image(x[n], top, left, wp, plane, planes, sh, sw, phases)
        for o in range(o_):
            total = zero
            for r in range(oh):
                total += _copy_row_sum(dy[n, o, r], dz[o, front + r * wp:front + r * wp + ow])
            if dbias.shape[0]:
                dbias[o] += total
        for g in range(groups):
            if dw_t.shape[0] and og >= DOTS_BELOW:
                pack(dz[g * og:(g + 1) * og, front:front + length].T, packed)
                gemm_rows(planes, index[g * rows:(g + 1) * rows], length, packed,
                          dw_t[g * rows:(g + 1) * rows], True)
            elif dw_t.shape[0]:
                for row in range(g * rows, (g + 1) * rows):
                    at = index[row]
                    for o in range(og):
                        dw_t[row, o] += _dot(dz[g * og + o, front:front + length], planes[at:at + length])
            if dx.shape[0] and dx_pixels.shape[0]:
                gemm_gather(dz, dx_pixels, index_t[g * og * taps:(g + 1) * og * taps], w_t_packed[g],
                            dxz[0, :, g * cg:(g + 1) * cg])
            elif dx.shape[0] and phases.shape[0] == 1:  # stride 1: one product over every tap
                gemm_indexed(w_t[g * cg:(g + 1) * cg], dz, index_t[g * og * taps:(g + 1) * og * taps],
                             dxz[0, g * cg:(g + 1) * cg])
            elif dx.shape[0]:
                for p in range(phases.shape[0]):
                    k0, k1, rows_p = phases[p, 0], phases[p, 1], phases[p, 3]
                    if k1 > k0 and rows_p > 0:
                        at, end = g * og * taps + og * k0, g * og * taps + og * k1
                        gemm_indexed(w_t[g * cg:(g + 1) * cg, og * k0:og * k1], dz, index_t[at:end],
                                     dxz[p, g * cg:(g + 1) * cg, :rows_p * wp])
        if dx.shape[0] and dx_pixels.shape[0]:
            _copy_pixels(dxz[0], dz[0, :0], dx[n])
        elif dx.shape[0]:
            _unphase(dxz, phases, top, left, wp, sh, sw, dx[n])


@jit
def order_taps(weight, order, phases, w_t):
    """w_t (C, O/g*K), row c: weight (O, C/g, K)[o, c's index in its group, order[k]] over the o of c's group,
    phase by phase (``phases``: each one's taps order[k0:k1]), o by o within a phase: dx's left operand."""
    o_, cg, _ = weight.shape
    groups = w_t.shape[0] // cg
    og = o_ // groups
    for g in range(groups):
        for local in range(cg):
            row = w_t[g * cg + local]
            for p in range(phases.shape[0]):
                k0, k1 = phases[p, 0], phases[p, 1]
                for o in range(og):
                    for k in range(k0, k1):
                        row[og * k0 + o * (k1 - k0) + k - k0] = weight[g * og + o, local, order[k]]


@jit
def _unphase(dxz, phases, top, left, wp, sh, sw, dx):
    """dx (C, H, W) from the phases' products dxz (S, C, R*Wp): pixel (h, w) from phase ((top + h) % sh,
    (left + w) % sw), its row (top + h) // sh less the phase's first, column (left + w) // sw; zero where
    the phase has no taps (no window reads the pixel). Stride 1: row h, columns from ``left``."""
    c_, h_, w_ = dx.shape
    zero = dx.dtype.type(0.0)
    if sh == 1 and sw == 1:
        for c in range(c_):
            for h in range(h_):
                _copy_row(dxz[0, c, h * wp + left:h * wp + left + w_], dx[c, h], zero)
        return
    pairs = sw == 2 and dx.itemsize == 4 and dx.strides[2] == 4 and dxz.flags.c_contiguous
    flat, per_phase = dxz.reshape(-1), dxz.shape[1] * dxz.shape[2]
    for c in range(c_):
        for h in range(h_):
            a, row, into = (top + h) % sh, (top + h) // sh, dx[c, h]
            if pairs and _read(phases, a * 2) and _read(phases, a * 2 + 1):  # (pair_rows: 7x as fast)
                even, odd = a * 2 + left % 2, a * 2 + (left + 1) % 2  # the phases of even and odd w
                at = c * dxz.shape[2] + (row - phases[even, 2]) * wp
                merge_pairs(flat, even * per_phase + at + left // 2, odd * per_phase + at + (left + 1) // 2,
                            into)
                continue
            for b in range(sw):
                p, w0 = a * sw + b, (b - left) % sw
                count = (w_ - w0 + sw - 1) // sw
                if not _read(phases, p):
                    for q in range(count):
                        into[w0 + q * sw] = zero
                    continue
                source, at = dxz[p, c], (row - phases[p, 2]) * wp + (w0 + left) // sw
                for q in range(count):
                    into[w0 + q * sw] = source[at + q]


@jit
def _pad_image(x, top, left, wp, plane, planes, sh, sw, phases):
    """The image x (C, H, W) into its padded planes (C*S*P + slack,), P = ``plane``, rows wp apart, from row
    ``top``, column ``left``, each channel's S = sh*sw phase planes in turn (conv_layout; stride 1: one
    plane), but those no tap reads (``phases``: conv_layout.phase_table's): only the image is written (the
    padding is whatever the caller zeroed)."""
    c_, h_, w_ = x.shape
    zero = planes.dtype.type(0.0)
    if sh == 1 and sw == 1:  # (the divisions below cost 3-5 % of a stride-1 backward)
        for c in range(c_):
            for h in range(h_):
                at = c * plane + (top + h) * wp + left
                _copy_row(x[c, h], planes[at:at + w_], zero)
        return
    # Phase row by phase row, each row's phases as slices: 2.3x as fast as each row's phase and position
    # found from h (divisions and indexes Numba cannot prove positive); stride 2 in float32 as pair_rows'
    # vector shuffles, 2.7x faster again (32 channels of 32x32: 46 -> 19 -> 7 us an image).
    pairs = sw == 2 and planes.itemsize == 4 and x.strides[2] == 4
    for c in range(c_):
        for a in range(sh):
            h0 = (a - top) % sh  # the first image row in phase row a
            first = (c * sh * sw + a * sw) * plane + (top + h0) // sh * wp  # its row of phase (a, 0)
            both = pairs and _read(phases, a * 2) and _read(phases, a * 2 + 1)
            for h in range(h0, h_, sh):
                at = first + (h - h0) // sh * wp
                if both:
                    split_pairs(x[c, h], planes, at + left % 2 * plane + left // 2,
                                at + (left + 1) % 2 * plane + (left + 1) // 2)
                    continue
                source = x[c, h]
                for b in range(sw):
                    w0 = (b - left) % sw
                    if w0 >= w_ or not _read(phases, a * sw + b):
                        continue
                    into = planes[at + b * plane + (w0 + left) // sw:]
                    for q in range((w_ - w0 + sw - 1) // sw):
                        into[q] = source[w0 + q * sw]


@jit
def _read(phases, p):
    """Whether a tap reads phase p (conv_layout.phase_table's rows: first and end tap)."""
    return phases[p, 1] > phases[p, 0]


_ONE_PHASE = np.array([[0, 1, 0, 0]], dtype=np.int64)  # a stride-1 first layer's (direct_conv2d_backward)


# In 16 x 16 blocks transposed in registers (packed_gemm.transpose_block), each block's bias added while
# its rows are in L1 (float32; the ragged pixels and float64 element by element, row by row of z). Written
# element by element, a pixel's channels a plane apart, planes of 1 KiB (16x16) or 4 KiB (32x32) fell in
# a few L1 sets and evicted each other: 256 pixels x 64 channels 36.9 -> 7.7 us, 1024 x 32 98 -> 17 us
# (and 3.2 -> 2.8 us at 256 x 32, 4.7 -> 4.7 at 784 x 16, where they did not).
@jit
def _copy_pixels(z, bias, out):
    """out (O, OH, OW)[o, p] = z[p, o] + bias[o] for the pixels p (z (OH*OW, O): a product with the pixels
    as rows); no bias where it is empty."""
    o_ = out.shape[0]
    flat = out.reshape(o_, -1)
    pixels = flat.shape[1]
    blocks = pixels // BLOCK * BLOCK if z.itemsize == 4 and z.strides[1] == 4 and flat.strides[1] == 4 else 0
    for p0 in range(0, blocks, BLOCK):
        for o0 in range(0, o_, BLOCK):
            transpose_block(flat.ctypes.data + o0 * flat.strides[0] + p0 * 4, flat.strides[0],
                            z.ctypes.data + p0 * z.strides[0] + o0 * 4, z.strides[0], BLOCK,
                            min(BLOCK, o_ - o0))
        if bias.shape[0]:
            for o in range(o_):
                row, plus = flat[o], bias[o]
                for p in range(p0, p0 + BLOCK):
                    row[p] += plus
    for p in range(blocks, pixels):
        source = z[p]
        if bias.shape[0]:
            for o in range(o_):
                flat[o, p] = source[o] + bias[o]
        else:
            for o in range(o_):
                flat[o, p] = source[o]


# An explicit loop: a slice assignment (``a[:] = b``) in a kernel takes Numba's general broadcasting path,
# 4x slower on these rows of 14-28 floats (0.78 against 0.19 ms for the 57 344 output rows of the MNIST
# CNN's first layer).
@jit
def _copy_row(source, into, plus):
    """into = source + plus (a scalar of their dtype)."""
    for p in range(source.shape[0]):
        into[p] = source[p] + plus


# The weight and bias gradients of a first layer (one to three channels, no dx wanted) straight from the
# padded planes: the implicit GEMM's dweight has too few rows (C*K = 9 for one channel) to pay for packing
# dy^T (64 images of 28x28, one channel in and 32 out, two threads: 0.70 against 1.15 ms). dy is copied
# into rows laid out as z (Wp apart, zero past OW), and each pass over a tap's inputs takes four output
# channels' dot products.
@jit_sums
def direct_conv2d_backward(x, top, left, plane, planes, dy, offsets, wp, rows, dweight, dbias):
    """From dy (b, O, OH, OW) and x (b, C, H, W), each image laid into ``planes`` (C*P,), P = ``plane``, in
    turn: dbias (O,) += dy's sums, dweight (O, C, K) += dy . each tap's inputs (dbias skipped when it has
    no rows). rows: scratch (4, OH*Wp) for four channels of dy laid out as z (zero past OW)."""
    b, o_, oh, ow = dy.shape
    c_, k_, length = dweight.shape[1], dweight.shape[2], rows.shape[1]
    rows[...] = 0.0
    planes[...] = 0.0
    for n in range(b):
        _pad_image(x[n], top, left, wp, plane, planes, 1, 1, _ONE_PHASE)
        for o0 in range(0, o_, 4):
            m = min(4, o_ - o0)
            for j in range(m):
                total = rows.dtype.type(0.0)
                for r in range(oh):
                    total += _copy_row_sum(dy[n, o0 + j, r], rows[j, r * wp:r * wp + ow])
                if dbias.shape[0]:
                    dbias[o0 + j] += total
            for j in range(m, 4):  # a last group of fewer than four: the other rows add nothing
                rows[j] = 0.0
            for c in range(c_):
                for k in range(k_):
                    at = c * plane + offsets[k]
                    sums = _dot4(rows, planes[at:at + length])
                    for j in range(m):
                        dweight[o0 + j, c, k] += sums[j]


# A sum in the copy's pass (both backward kernels lay dy out this way): for the implicit one 0.1-0.4 ms
# less per backward than NumPy's sum over dy before it (64 images, 16 -> 32 channels at 28x28, one thread:
# 0.41 ms).
@jit_sums
def _copy_row_sum(source, into):
    """into = source; returns source's sum."""
    total = source.dtype.type(0.0)
    for p in range(source.shape[0]):
        into[p] = source[p]
        total += source[p]
    return total


@jit_sums
def _dot(a, b):
    total = a.dtype.type(0.0)
    for p in range(a.shape[0]):
        total += a[p] * b[p]
    return total


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


@jit
def max_pool2d(x, kh, kw, sh, sw, ph, pw, out, index):
    """out = the max of each window (padding counts as -inf); index = its flat h*W + w in x's plane, or
    None: the maxima alone (inference; each ``index is not None`` branch is pruned when Numba compiles that
    version, so it neither computes nor writes the positions).

    Ties keep the first maximum in scan order and a NaN wins (the last one), as in PyTorch's CPU
    kernel. The usual 2x2 / stride 2 pooling has its own unrolled kernel (~20x faster than the
    general loops, whose short variable-length window loops do not pipeline). (Compiled, the choice
    included: a region of compiled calls has the row workers' short grace, row_threads.QUICK_GRACE_NS.)
    """
    whole = 2 * out.shape[2] <= x.shape[2] and 2 * out.shape[3] <= x.shape[3]  # no partial (ceil_mode) window
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0) and whole:
        if index is None:
            _max_pool_2x2_values(x, out)
        else:
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
                        _max_window(x, n, c, h, h + 2, 2 * ow, 2 * ow + 2, out, index, oh, ow)


@jit
def _max_pool_2x2_values(x, out):
    """_max_pool_2x2's maxima without their positions (inference): 330 against 850 us over 64x32 planes of
    28x28 on one core, what the selects and the int64 stores (twice the float32 output's bytes) cost."""
    for n in range(out.shape[0]):
        for c in range(out.shape[1]):
            for oh in range(out.shape[2]):
                top, bottom, best_row = x[n, c, 2 * oh], x[n, c, 2 * oh + 1], out[n, c, oh]
                nan = False
                for ow in range(out.shape[3]):
                    a, b, d, e = top[2 * ow], top[2 * ow + 1], bottom[2 * ow], bottom[2 * ow + 1]
                    nan |= (a != a) | (b != b) | (d != d) | (e != e)
                    best_row[ow] = max(max(a, b), max(d, e))
                if nan:
                    for ow in range(out.shape[3]):
                        _max_window(x, n, c, 2 * oh, 2 * oh + 2, 2 * ow, 2 * ow + 2, out, None, oh, ow)


@jit
def _max_window(x, n, c, h_lo, h_hi, w_lo, w_hi, out, index, oh, ow):
    """Window (oh, ow) of plane (n, c) by PyTorch's rule: take v when v > best or v is NaN."""
    best, arg = -np.inf, h_lo * x.shape[3] + w_lo
    for h in range(h_lo, h_hi):
        for w in range(w_lo, w_hi):
            v = x[n, c, h, w]
            if v > best or v != v:
                best, arg = v, h * x.shape[3] + w
    out[n, c, oh, ow] = best
    if index is not None:
        index[n, c, oh, ow] = arg


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
                        _max_window(x, n, c, h_lo, h_hi, w_lo, w_hi, out, index, oh, ow)
                        continue
                    out[n, c, oh, ow] = best
                    if index is not None:
                        index[n, c, oh, ow] = arg


# Average pooling: each window's sum (in the reference's order, window offset by offset) times its
# 1/divisor from the layer's table; the usual 2x2 / stride 2 one unrolled (32 images of 32 channels at
# 32x32, two threads: forward + backward 3.1 ms as strided NumPy views against PyTorch's 2.0; 0.48-0.52
# unrolled against 0.93-0.95 through the offset-by-offset path that other tiling windows take).
@jit
def avg_pool2d(x, kh, kw, sh, sw, ph, pw, inverse, out):
    """out (b, C, OH, OW) = the sum of each window of x (b, C, H, W), padding as zeros, times inverse
    (OH, OW)."""
    h_, w_ = x.shape[2], x.shape[3]
    halves = _halving(kh, kw, sh, sw, ph, pw, out.shape[2], out.shape[3], h_, w_)
    tiled = _tiling(kh, kw, sh, sw, ph, pw, out.shape[2], out.shape[3], h_, w_)
    for n in range(out.shape[0]):
        for c in range(out.shape[1]):
            for oh in range(out.shape[2]):
                row, inv = out[n, c, oh], inverse[oh]
                if halves:
                    top, bottom = x[n, c, 2 * oh], x[n, c, 2 * oh + 1]
                    for ow in range(row.shape[0]):
                        w = 2 * ow
                        row[ow] = (top[w] + top[w + 1] + bottom[w] + bottom[w + 1]) * inv[ow]
                    continue
                if tiled:  # window offset by offset along the row (AvgPool1D(4): 4x the per-window loops)
                    row[:] = 0.0
                    for i in range(kh):
                        source = x[n, c, oh * sh + i]
                        for j in range(kw):
                            for ow in range(row.shape[0]):
                                row[ow] += source[ow * sw + j]
                    for ow in range(row.shape[0]):
                        row[ow] *= inv[ow]
                    continue
                h_lo, h_hi = _span(oh, sh, ph, kh, h_)
                for ow in range(row.shape[0]):
                    w_lo, w_hi = _span(ow, sw, pw, kw, w_)
                    total = out.dtype.type(0.0)
                    for h in range(h_lo, h_hi):
                        for w in range(w_lo, w_hi):
                            total += x[n, c, h, w]
                    row[ow] = total * inv[ow]


@jit
def avg_pool2d_backward(dy, kh, kw, sh, sw, ph, pw, inverse, out):
    """out (b, C, H, W) = dy (b, C, OH, OW) times inverse, added to every input position of its window."""
    h_, w_ = out.shape[2], out.shape[3]
    halves = _halving(kh, kw, sh, sw, ph, pw, dy.shape[2], dy.shape[3], h_, w_)
    tiled = _tiling(kh, kw, sh, sw, ph, pw, dy.shape[2], dy.shape[3], h_, w_)
    out[...] = 0.0
    for n in range(dy.shape[0]):
        for c in range(dy.shape[1]):
            plane = out[n, c]
            for oh in range(dy.shape[2]):
                g, inv = dy[n, c, oh], inverse[oh]
                if halves:  # each input in one window: stored, not added
                    for i in range(2):
                        into = plane[2 * oh + i]
                        for ow in range(g.shape[0]):
                            into[2 * ow] = into[2 * ow + 1] = g[ow] * inv[ow]
                    continue
                if tiled:
                    for i in range(kh):
                        into = plane[oh * sh + i]
                        for j in range(kw):
                            for ow in range(g.shape[0]):
                                into[ow * sw + j] = g[ow] * inv[ow]
                    continue
                h_lo, h_hi = _span(oh, sh, ph, kh, h_)
                for ow in range(g.shape[0]):
                    w_lo, w_hi = _span(ow, sw, pw, kw, w_)
                    v = g[ow] * inv[ow]
                    for h in range(h_lo, h_hi):
                        for w in range(w_lo, w_hi):
                            plane[h, w] += v


@jit
def _halving(kh, kw, sh, sw, ph, pw, oh_, ow_, h_, w_):
    """Whether a pooling is 2x2 / stride 2 without padding or partial windows."""
    return (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0) and 2 * oh_ <= h_ and 2 * ow_ <= w_


@jit
def _tiling(kh, kw, sh, sw, ph, pw, oh_, ow_, h_, w_):
    """Whether a pooling's windows tile the input: none overlaps another (stride >= kernel), no padding, none
    partial (each input is in at most one window: its gradient is stored, not added)."""
    return sh >= kh and sw >= kw and ph == 0 and pw == 0 and (oh_ - 1) * sh + kh <= h_ and \
        (ow_ - 1) * sw + kw <= w_


@numba.njit(cache=True, nogil=True, inline="always")  # (called per window)
def _span(o, stride, pad, kernel, size):
    """The input positions [lo, hi) of window o that are not padding."""
    lo = o * stride - pad
    return max(lo, 0), min(lo + kernel, size)


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
