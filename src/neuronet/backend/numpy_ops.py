"""The default backend: NumPy arrays on the CPU, with Numba kernels for the fused passes of ``Ops``."""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import (
    attention_kernels,
    blas_gemm,
    blas_threads,
    conv_kernels,
    conv_layout,
    kernels,
    optim_kernels,
    packed_gemm,
    rnn_kernels,
    row_threads,
)
from .conv_geometry import ConvGeometry
from .ops import DEFAULT_ALPHA, Ops, Spans

# Multiply-adds of a stacked product from which the row threads share its matrices. A region costs 75 us
# (median, 2 cores): (12, 4, 128, 32) @ (.., 32, 128), 25M, took as long split as not (570 us); nanoGPT's
# (16, 6, 256, 64) @ (.., 64, 256), 400M, 5.9 against 11.2 ms.
STACK_SPLIT_WORK = 1 << 25
# Elements of a pooling, activation or mask pass from which it runs in blocks. Inside a training step a
# pass runs ~2x slower than alone (its operands come from other cores' caches or memory): the char GPT's
# GELU backward (768 x 512) took 890 us there against 383 us in a loop, so the split pays from fewer
# elements than a loop says. 2^17 against 2^19 (before), alternating processes, median ms/step: char GPT
# 37.2-35.3 vs 39.2-40.0, CNN train 14.3-14.8 vs 14.3-16.2, CNN predict 20.4-21.2 vs 21.9-22.5, ResNet
# 47.0-48.3 vs 48.8-50.2, MLP and MoE even (no pass that large).
PASS_SPLIT_WORK = 1 << 17
# ... and of a linear layer's bias pass (an add, ~0.07 ns an element in cache): 768 x 384 took 21 us on the
# calling thread against 45 in two blocks (a region's start costs ~30 us), so it splits from 2^20.
BIAS_SPLIT_WORK = 1 << 20
# Multiply-adds of each of a linear map's two backward products (dW += dz^T x, dx = dz W) from which they run
# at once, each on its own core in one OpenBLAS thread, instead of one after the other on OpenBLAS's threads
# (inside a step its woken workers and split products ran 768x512x128 at ~190 GFLOP/s on two cores where
# one core alone reaches ~140). Alternating processes, two threads, ms/step: MLP 2.67-2.75 against
# 2.81-2.95, char GPT 35.7-37.5 (median 36.1) against 35.8-37.2 (36.7), MoE 2.53-2.79 against 2.63-2.95,
# CNN even; 2^21 and 2^23 read the same as 2^22 within the host's noise.
PAIR_WORK = 1 << 22
# Elements of a memory-bound pass over a whole buffer (an optimizer update, the gradients' zeroing) from which
# it runs in blocks on the row threads: Adam over 804K float32 (the char GPT), one thread 460 us in a loop and
# 840-950 with cold caches, two 305 and 560-610; the char GPT's step with its 3.2 MB of gradients zeroed in
# two blocks 33.2-36.0 ms against 33.5-36.1 (lower in each of four alternating pairs).
BULK_SPLIT_WORK = 1 << 18
DRAW_CHUNK = 1 << 18  # uniforms drawn at a time for a dropout mask (a 1 MiB float32 temporary)
# A stride-1 convolution with one group whose dx is not wanted (a first layer) takes its weight gradient
# direct (conv_kernels.direct_conv2d_backward) with at most this many input channels and C*kh*kw inputs
# per output (the implicit GEMM's is faster from 3 channels with dx; see benchmarks/README.md).
DIRECT_MAX_CHANNELS, DIRECT_MAX_INPUTS = 3, 27


def _flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous array (kernels write through it)."""
    if not a.flags.c_contiguous:
        raise ValueError("internal: kernel output must be C-contiguous")
    return a.reshape(-1)


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def _cols(a: np.ndarray) -> np.ndarray:
    """(N, C, 1) as (N, C)."""
    return a.reshape(a.shape[0], a.shape[1])


def _direct(geom: ConvGeometry, weight: np.ndarray) -> bool:
    """Whether a convolution is a first layer's for the direct weight gradient: stride 1, one group, few
    inputs per output."""
    return (geom.stride == (1, 1) and conv_layout.implicit(geom) and geom.groups == 1
            and weight.shape[1] <= DIRECT_MAX_CHANNELS and weight[0].size <= DIRECT_MAX_INPUTS)


# The implicit GEMM of a convolution (or of its dx) runs with the pixels as rows (conv_kernels, gemm_gather)
# for an image of at most PIXEL_ROWS_MAX pixels where that computes less by more than PIXEL_ROWS_GAIN: its
# rows go in tiles of MR, its columns in panels of NR, and the other way round copies its result out across
# the channels. 64 images, one thread, forward / backward against the channels as rows: 32 -> 32 at 7x7
# 1.32x / 1.09x, 128 -> 128 at 7x7 1.22x / 1.08x, 64 -> 64 at 14x14 1.16x / 1.09x, 32 -> 32 at 16x16
# 1.05x / 1.16x; at 20x20 1.00x / 1.03x, and 16 -> 32 at 28x28 0.96x forward, 32 -> 32 at 32x32 0.82x (0.69x
# before the copy-out went through register transposes: conv_kernels._copy_pixels).
PIXEL_ROWS_MAX, PIXEL_ROWS_GAIN = 256, 1.1


def _pixel_rows(channels: int, rows: int, row_stride: int, pixels: int, dtype) -> bool:
    """Whether a product for ``channels`` channels (a group's) over ``rows`` rows of an image, Wp =
    ``row_stride`` apart, ``pixels`` of them wanted, runs with the pixels as rows: each way counted in whole
    tiles of MR rows (a last, shorter tile runs below a full one's rate) and whole panels of NR columns (a
    panel's masked columns are computed). 32 channels at 7x7 fill one 32-column panel, their 49 pixels (56
    columns with the padding) two."""
    mr, nr = packed_gemm.MR, packed_gemm.panel_width(dtype)

    def up(n: int, k: int) -> int:
        return -(-n // k) * k
    return pixels <= PIXEL_ROWS_MAX and \
        up(pixels, mr) * up(channels, nr) * PIXEL_ROWS_GAIN < up(channels, mr) * up(rows * row_stride, nr)


class NumpyOps(Ops):
    """The reference ``Ops`` (creation and conversion as written there) with one Numba pass per fused
    kernel and in-place NumPy where the reference allocates."""

    xp = np
    name = "numpy"
    device = "cpu"

    # ----------------------------------------------------------------- matrix products
    # Small 2-D products run on one OpenBLAS thread (see blas_threads: the LSTM step 4-10x faster on 2
    # loaded cores). Stacked products (attention heads: NumPy runs one small GEMM per matrix, each on
    # one thread) are split on their leading axis over the row threads.
    def matmul(self, a, b, out):
        if a.ndim == 2 and b.ndim == 2:
            blas_threads.before_product(a.shape[0], a.shape[1], b.shape[1])
            return np.matmul(a, b, out=out)
        blocks = self._stack_blocks(a, b, out)
        if len(blocks) == 1:
            return np.matmul(a, b, out=out)
        self.run_blocks([functools.partial(np.matmul, a[rows], b[rows], out=out[rows]) for rows in blocks])
        return out

    def _stack_blocks(self, a, b, out) -> tuple[slice, ...]:
        """Ranges of the leading axis of a stacked product with as many matrices in a, b and out."""
        stacked = a.ndim == b.ndim == out.ndim > 2 and a.shape[0] == b.shape[0] == out.shape[0]
        return self._blocks(out.shape[0], out.size * a.shape[-1] if stacked else 0, STACK_SPLIT_WORK)

    def _blocks(self, n: int, work: int, least: int) -> tuple[slice, ...]:
        """``row_blocks`` of n independent rows (any number per block) when ``work`` reaches ``least``;
        else one."""
        return self.row_blocks(n, min_rows=1) if work >= least else (slice(None),)

    def matmul_acc(self, a, b, out, scratch=None):
        blas_threads.before_product(a.shape[0], a.shape[1], b.shape[1])
        if not blas_gemm.accumulate(a, b, out):  # (one cblas call with beta = 1: no scratch, no sum)
            super().matmul_acc(a, b, out, scratch)

    def linear_grads(self, dz, x, weight, dweight, dx, scratch=None):
        if dweight is None or dx is None or blas_threads.threads() < 2 or \
                dz.shape[0] * dz.shape[1] * x.shape[1] < PAIR_WORK:
            return super().linear_grads(dz, x, weight, dweight, dx, scratch)
        self.run_blocks([functools.partial(self.matmul_acc, dz.T, x, dweight, scratch),
                         functools.partial(self.matmul, dz, weight, dx)])
        return None

    # ----------------------------------------------------------------- primitives
    # A whole-buffer add in blocks on the row threads (np.add releases the GIL), as fill_: the small
    # ResNet's residual sums (64 x 16 x 28 x 28, 3.2 MB a tensor) took ~580 us each inside its step on one
    # core; split from BULK_SPLIT_WORK elements its step ran 35.9 against 38.1 ms (5 of 6 alternating pairs).
    def add(self, a, b, out):
        if a.size < BULK_SPLIT_WORK or not a.shape == b.shape == out.shape or \
                not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
            return np.add(a, b, out=out)
        a, b, flat = a.reshape(-1), b.reshape(-1), out.reshape(-1)
        self.run_blocks([functools.partial(np.add, a[part], b[part], out=flat[part])
                         for part in self._blocks(flat.size, flat.size, BULK_SPLIT_WORK)])
        return out

    # A large copy in blocks of its leading axis, as fill_ (np.copyto releases the GIL; a source overlapping
    # the destination as assignment does, its one buffered pass): MeanPooling's broadcast gradient
    # (32 x 128 x 256) 0.18 -> 0.16 ms, a plain copy of it 0.31 -> 0.23.
    def copy_(self, dst, src):
        if dst.size < BULK_SPLIT_WORK or dst.ndim == 0 or not dst.flags.c_contiguous or \
                np.may_share_memory(dst, src):
            return super().copy_(dst, src)
        src = np.broadcast_to(src, dst.shape)  # (as dst[...] = src: ValueError where it does not broadcast)
        self.run_blocks([functools.partial(np.copyto, dst[part], src[part], casting="unsafe")
                         for part in self._blocks(dst.shape[0], dst.size, BULK_SPLIT_WORK)])
        return None

    def fill_(self, x, value):
        if x.size < BULK_SPLIT_WORK or not x.flags.c_contiguous:
            return super().fill_(x, value)
        flat = x.reshape(-1)  # (ndarray.fill releases the GIL: the blocks run at once)
        self.run_blocks([functools.partial(flat[part].fill, value)
                         for part in self._blocks(flat.size, flat.size, BULK_SPLIT_WORK)])
        return None

    def where(self, cond, a, b, out):
        np.copyto(out, b)
        np.copyto(out, a, where=cond)
        return out

    def dropout_mask(self, keep, rng, out, dtype):
        # The uniforms go through a small float buffer, DRAW_CHUNK at a time (the generator's stream
        # does not depend on how its draws are split). From PASS_SPLIT_WORK elements the mask is cut into
        # row blocks drawn at once, each from a copy of a PCG64 generator advanced to where its part of
        # the same stream begins: the same mask as one thread draws (nanoGPT at batch 8 spent 12 % of
        # its step drawing masks on one core).
        flat, dtype = _flat(out), np.dtype(dtype)
        parts = _stream_parts(rng, flat.size, dtype, self._blocks(flat.size, flat.size, PASS_SPLIT_WORK))
        self.run_blocks([functools.partial(self._draw_mask, keep, part_rng, flat[part], dtype)
                         for part, part_rng in parts])
        if len(parts) > 1:
            rng.bit_generator.state = parts[-1][1].bit_generator.state  # (the stream after the last draw)
        return out

    def _draw_mask(self, keep, rng, flat, dtype) -> None:
        u = self.temporary("dropout.u", (min(flat.size, DRAW_CHUNK),), dtype)
        for start in range(0, flat.size, DRAW_CHUNK):
            part = u[:min(DRAW_CHUNK, flat.size - start)]
            rng.random(out=part, dtype=dtype)
            np.less(part, keep, out=flat[start:start + part.size])

    def apply_mask(self, x, mask, scale, out):
        x, mask, out_flat = np.ascontiguousarray(x).reshape(-1), _flat(mask), _flat(out)
        self.run_blocks([functools.partial(kernels.masked_scale, x[part], mask[part], scale, out_flat[part])
                         for part in self._blocks(x.size, x.size, PASS_SPLIT_WORK)])
        return out

    def topk(self, x, k, values, indices):
        kernels.topk_rows(x, k, values, indices)

    def group_by_key(self, keys, order, counts):
        kernels.group_by_key(keys, order, counts)

    def bincount(self, keys, out):
        out[...] = np.bincount(keys, minlength=len(out))

    def gather_rows(self, table, index, out):
        # mode='raise' would buffer the whole output (a temporary per call); callers check the range.
        return np.take(table, index, axis=0, out=out, mode='clip')

    def scatter_add_rows(self, table, index, rows):
        kernels.scatter_add_rows(_rows(table), index.reshape(-1), _rows(np.ascontiguousarray(rows)))

    # One pass each instead of a dozen NumPy calls: the MLP's cross-entropy (128 x 10) forward inside its
    # training step 172-187 -> 85-87 us.
    def class_labels(self, t, ignore_index, label, keep, bounds=True):
        found = kernels.class_labels(t, ignore_index, label, keep)
        return found if bounds else None

    def class_weights(self, label, weight, keep, rows, scores, w_row, flat):
        return kernels.class_weights(label, weight, keep, rows, scores, w_row, flat)

    def softmax_target_grad(self, logp, flat, coef, out):
        kernels.softmax_target_grad(logp, flat, coef, out)
        return out

    # ----------------------------------------------------------------- convolution and pooling
    # Convolutions run as implicit GEMMs over the padded planes (no columns; conv_layout): the forward and
    # dx (_implicit_conv2d, ..._backward), and dweight but for a stride-1 first layer's
    # (_direct_conv2d_backward). A stride-1 geometry whose windows leave padded rows unread (a transposed
    # convolution's output_padding with dilation) runs the reference's whole-batch im2col + GEMM. See
    # benchmarks/README.md for the numbers.
    def conv2d(self, x, weight, bias, geom, out, scratch):
        if not conv_layout.implicit(geom):
            return super().conv2d(x, weight, bias, geom, out, scratch)
        return self._implicit_conv2d(x, weight, bias, geom, self._conv_output(out, x, weight, geom))

    def conv2d_backward(self, dy, x, weight, geom, dx, dweight, dbias, scratch):
        dx = self._conv_input_grad(dx, dy, weight, geom)
        if not conv_layout.implicit(geom):
            return super().conv2d_backward(dy, x, weight, geom, dx, dweight, dbias, scratch)
        if dx is None and dweight is not None and _direct(geom, weight):
            return self._direct_conv2d_backward(dy, x, weight, geom, dweight, dbias)
        return self._implicit_conv2d_backward(dy, x, weight, geom, dx, dweight, dbias)

    def _implicit_conv2d(self, x, weight, bias, geom, out):
        """The forward as implicit GEMMs over each image's padded planes (conv_kernels.implicit_conv2d),
        the images in blocks on the row threads."""
        (c, o), (oh, ow), g = (x.shape[1], weight.shape[0]), geom.out_size, geom.groups
        lay, w = conv_layout.layout(c, geom), weight.reshape(o, -1)
        wp = lay.row_stride
        bias = self._bias_or_zeros(bias, o, x.dtype)
        slack = packed_gemm.panel_width(x.dtype)  # a panel's last columns read up to NR - 1 past a plane
        pixels, w_t = _NO_PIXELS, _EMPTY_4D[x.dtype]
        if _pixel_rows(o // g, oh, wp, oh * ow, x.dtype):
            pixels, w_t = conv_layout.pixel_index(geom, False), self._packed_groups("conv.w_packed", w, g)

        def run(rows: slice) -> None:
            z = self.temporary("conv.z", (oh * ow, o) if pixels.size else (o, oh * wp), x.dtype)
            conv_kernels.implicit_conv2d(x[rows], *self._image_planes(lay, geom, x.dtype, slack), w,
                                         lay.index, bias, wp, pixels, w_t, z, out[rows], *geom.stride,
                                         lay.phases)
        self.run_blocks([functools.partial(run, rows) for rows in self.row_blocks(x.shape[0], min_rows=1)])
        return out

    def _implicit_conv2d_backward(self, dy, x, weight, geom, dx, dweight, dbias):
        """The gradients as implicit GEMMs over dy and x's padded planes
        (conv_kernels.implicit_conv2d_backward), the images in blocks on the row threads, each block's
        weight and bias gradients apart (C*K, O/g), added after."""
        if dweight is None and dx is None and dbias is None:
            return None
        (n, o), c, dtype = dy.shape[:2], (x if x is not None else dx).shape[1], dy.dtype
        lay, g, taps = conv_layout.layout(c, geom), geom.groups, math.prod(geom.kernel)
        oh, wp, slack = geom.out_size[0], lay.row_stride, packed_gemm.panel_width(dtype)
        front, z_length, index_t = conv_layout.gradient_index(o, geom, slack)
        w_t = self.temporary("conv.w_t", (c, o // g * taps), dtype)  # row c: weight[o, c, k] over c's group
        conv_kernels.order_taps(weight.reshape(o, c // g, taps), lay.order, lay.phases, w_t)
        blocks, absent = self.row_blocks(n, min_rows=1), _EMPTY_3D[dtype]
        h, w = geom.in_size
        pixels, w_t_packed = _NO_PIXELS, _EMPTY_4D[dtype]
        if dx is not None and geom.stride == (1, 1) and _pixel_rows(c // g, h, wp, h * w, dtype):
            pixels = conv_layout.pixel_index(geom, True)
            w_t_packed = self._packed_groups("conv.w_t_packed", w_t, g)
        dws = [_EMPTY_2D[dtype]] * len(blocks)
        if dweight is not None:  # in the kernel's layout (C*K, O/g), each block's apart
            dw_t = self.temporary("conv.dw_t", (c * taps, o // g), dtype)
            dw_t[...] = 0.0
            dws = self._block_partials("conv.dw_t", dw_t, len(blocks))
        dbs = self._block_partials("conv.db", dbias, len(blocks)) if dbias is not None else \
            [_EMPTY[dtype]] * len(blocks)

        def run(rows: slice, dw_t, db) -> None:
            packed = self.temporary("conv.dz_packed", packed_gemm.packed_shape(
                (oh * wp, o // g), dtype, packed_gemm.narrow_panels(o // g, dtype)), dtype)
            dxz = absent if dx is None else self.temporary(
                "conv.dxz", (1, h * w, c) if pixels.size else (len(lay.phases), c, lay.rows * wp), dtype)
            conv_kernels.implicit_conv2d_backward(
                x[rows] if x is not None else _EMPTY_4D[dtype], *self._image_planes(lay, geom, dtype, slack),
                dy[rows], w_t, index_t, lay.index, front, wp, self.temporary("conv.dz", (o, z_length), dtype),
                packed, pixels, w_t_packed, dxz, dw_t, dx[rows] if dx is not None else _EMPTY_4D[dtype], db,
                *geom.stride, lay.phases)
        self.run_blocks([functools.partial(run, *args) for args in zip(blocks, dws, dbs, strict=True)])
        if dbias is not None:
            self._add_block_partials(dbs)
        if dweight is not None:
            self._add_block_partials(dws)
            grad = _flat(dweight).reshape(g, o // g, c // g, taps)
            grad += dws[0].reshape(g, c // g, taps, o // g).transpose(0, 3, 1, 2)
        return dx

    def _packed_groups(self, name: str, w, groups: int):
        """The transpose of each group's rows of w (groups*M, K), packed for packed_gemm (groups, P, K, NR):
        the right operand of a product with the pixels as rows."""
        m = w.shape[0] // groups
        packed = self.temporary(name, (groups,) + packed_gemm.packed_shape((w.shape[1], m), w.dtype), w.dtype)
        for g in range(groups):
            packed_gemm.pack(w[g * m:(g + 1) * m].T, packed[g])
        return packed

    def _bias_or_zeros(self, bias, o: int, dtype):
        """``bias``, or where there is none a zero one (o,): one kernel serves both."""
        if bias is None:
            bias = self.temporary("conv.no_bias", (o,), dtype)
            bias[...] = 0.0
        return bias

    def _direct_conv2d_backward(self, dy, x, weight, geom, dweight, dbias):
        """The weight and bias gradients straight from the padded planes, the images in blocks on the row
        threads (each block's apart, added after: ``_block_partials``)."""
        (n, o), lay = dy.shape[:2], conv_layout.layout(weight.shape[1], geom)
        wp, offsets = lay.row_stride, conv_layout.taps(geom)[1]
        blocks = self.row_blocks(n, min_rows=1)
        dws = self._block_partials("conv.dw", _flat(dweight).reshape(o, weight.shape[1], -1), len(blocks))
        dbs = self._block_partials("conv.db", dbias, len(blocks)) if dbias is not None else \
            [_EMPTY[dy.dtype]] * len(blocks)

        def run(rows: slice, dw, db) -> None:
            dy_rows = self.temporary("conv.dy_rows", (4, geom.out_size[0] * wp), dy.dtype)
            conv_kernels.direct_conv2d_backward(x[rows], *self._image_planes(lay, geom, dy.dtype),
                                                dy[rows], offsets, wp, dy_rows, dw, db)
        self.run_blocks([functools.partial(run, *args) for args in zip(blocks, dws, dbs, strict=True)])
        for grad, partials in ((dweight, dws), (dbias, dbs)):
            if grad is not None:
                self._add_block_partials(partials)
        return None

    def _block_partials(self, name: str, grad, blocks: int) -> list:
        """Where each of ``blocks`` row blocks adds its share of the gradient ``grad``: grad itself for the
        first, a zeroed temporary for each other (added into grad after the region, in block order, by
        ``_add_block_partials``: the sum does not depend on which thread finishes first)."""
        partials = [grad]
        for k in range(1, blocks):
            part = self.temporary(f"{name}{k}", tuple(grad.shape), grad.dtype)
            part[...] = 0.0
            partials.append(part)
        return partials

    @staticmethod
    def _add_block_partials(partials: list) -> None:
        for part in partials[1:]:
            partials[0] += part

    def _image_planes(self, lay, geom, dtype, slack: int = 0) -> tuple:
        """What a kernel needs to lay one image into its padded planes (``lay``: conv_layout.layout) in turn:
        (top, left, the plane's length, this thread's buffer (lay.size + slack,))."""
        return (geom.padding[0][0], geom.padding[1][0], lay.plane,
                self.temporary("conv.padded_image", (lay.size + slack,), dtype))

    def im2col(self, x, geom, out):
        # One strided copy (NumPy's copy loop beats a Numba gather on these short rows).
        (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
        (n, c), s = x.shape[:2], x.strides
        strides = (s[1], s[2] * dh, s[3] * dw, s[0], s[2] * sh, s[3] * sw)
        patches = as_strided(x, (c, kh, kw, n, *out.shape[4:]), strides)
        np.copyto(out, patches)
        return out

    def col2im(self, cols, geom, out):
        ((top, _), (left, _)) = geom.padding
        conv_kernels.col2im(cols, *geom.stride, *geom.dilation, top, left, out)
        return out

    # Pooling runs its images in blocks on the row threads (each image's windows are its own).
    def max_pool2d(self, x, kernel, stride, padding, out, index):
        self.run_blocks([functools.partial(conv_kernels.max_pool2d, x[rows], *kernel, *stride, *padding,
                                           out[rows], None if index is None else index[rows])
                         for rows in self._blocks(x.shape[0], x.size, PASS_SPLIT_WORK)])
        return out

    def max_pool2d_backward(self, dy, index, out):
        dy = np.ascontiguousarray(dy)
        self.run_blocks([functools.partial(conv_kernels.max_pool2d_backward, dy[rows], index[rows], out[rows])
                         for rows in self._blocks(out.shape[0], out.size, PASS_SPLIT_WORK)])
        return out

    def avg_pool2d(self, x, kernel, stride, padding, inverse, out):
        self.run_blocks([functools.partial(conv_kernels.avg_pool2d, x[rows], *kernel, *stride, *padding,
                                           inverse, out[rows])
                         for rows in self._blocks(out.shape[0], x.size, PASS_SPLIT_WORK)])
        return out

    def avg_pool2d_backward(self, dy, kernel, stride, padding, inverse, out):
        dy = np.ascontiguousarray(dy)
        self.run_blocks([functools.partial(conv_kernels.avg_pool2d_backward, dy[rows], *kernel, *stride,
                                           *padding, inverse, out[rows])
                         for rows in self._blocks(out.shape[0], out.size, PASS_SPLIT_WORK)])
        return out

    # ----------------------------------------------------------------- activations
    def activation(self, name, z, out, alpha=None, *, bias=None):
        if name in ("softmax", "log_softmax"):  # rows in blocks on the threads (256 x 1024: 157 -> 95 us)
            if bias is not None:
                z += bias
            rows, out_rows = _rows(z), _rows(out)
            row_max = self._row_max(len(rows), z.dtype)
            self.run_blocks([functools.partial(kernels.softmax_rows, rows[part], out_rows[part],
                                               name == "log_softmax", 1.0, 0, row_max[part])
                             for part in self._blocks(len(rows), z.size, PASS_SPLIT_WORK)])
            return out
        code, a = kernels.ACT_CODES[name], DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha
        if bias is not None:  # rows in blocks on the threads
            z_rows, out_rows = _rows(z), _rows(out)
            least = BIAS_SPLIT_WORK if code == kernels.ACT_CODES["linear"] else PASS_SPLIT_WORK
            self.run_blocks([functools.partial(kernels.bias_activation_rows, code, a, z_rows[part], bias,
                                               out_rows[part])
                             for part in self._blocks(len(z_rows), z.size, least)])
            return out
        z, out_flat = np.ascontiguousarray(z).reshape(-1), _flat(out)  # elementwise: blocks on the threads
        self.run_blocks([functools.partial(kernels.activation_forward, code, a, z[part], out_flat[part])
                         for part in self._blocks(z.size, z.size, PASS_SPLIT_WORK)])
        return out

    def activation_backward(self, name, dy, z, y, out, alpha=None, *, bias_grad=None):
        if name in ("softmax", "log_softmax"):
            dy_rows, y_rows, out_rows = _rows(dy), _rows(y), _rows(out)
            self.run_blocks([functools.partial(kernels.softmax_rows_backward, dy_rows[part], y_rows[part],
                                               out_rows[part], name == "log_softmax", 1.0)
                             for part in self._blocks(len(dy_rows), dy.size, PASS_SPLIT_WORK)])
            if bias_grad is not None:
                kernels.add_column_sums(_rows(out), bias_grad)
            return out
        code, a = kernels.ACT_CODES[name], DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha
        dy = np.ascontiguousarray(dy)
        z = dy if z is None else np.ascontiguousarray(z)  # a stand-in where the derivative does not read it
        y = z if y is None else np.ascontiguousarray(y)
        if bias_grad is not None:  # rows in blocks, each block's share of bias_grad apart
            dy_rows, z_rows, y_rows, out_rows = _rows(dy), _rows(z), _rows(y), _rows(out)
            blocks = self._blocks(len(dy_rows), dy.size, PASS_SPLIT_WORK)
            partials = self._block_partials("act.dbias", bias_grad, len(blocks))
            self.run_blocks([functools.partial(kernels.activation_backward_bias_rows, code, a, dy_rows[part],
                                               z_rows[part], y_rows[part], out_rows[part], into)
                             for part, into in zip(blocks, partials, strict=True)])
            self._add_block_partials(partials)
            return out
        dy, z, y, out_flat = dy.reshape(-1), z.reshape(-1), y.reshape(-1), _flat(out)
        self.run_blocks([functools.partial(kernels.activation_backward, code, a, dy[part], z[part], y[part],
                                           out_flat[part])
                         for part in self._blocks(dy.size, dy.size, PASS_SPLIT_WORK)])
        return out

    def sum_rows_acc(self, x, out):
        kernels.add_column_sums(_rows(np.ascontiguousarray(x)), out)

    # ----------------------------------------------------------------- recurrent cells (one Numba pass each)
    # The recurrent loops run their rows in blocks on separate cores (row_threads): on 2 cores the
    # LSTM's per-step products and cells then use both, where OpenBLAS alone split them badly.
    def row_blocks(self, n, min_rows=None):
        least = row_threads.MIN_ROWS if min_rows is None else max(1, min_rows)
        return row_threads.split(n, max(1, min(blas_threads.threads(), n // least)))

    def run_blocks(self, tasks):
        row_threads.run(tasks)

    # A block's whole time loop runs in one Numba kernel (no Python between the steps), its per-step
    # products by packed_gemm from the weight packed once per pass (``prepack``).
    def prepacked_shape(self, shape, dtype):
        return packed_gemm.packed_shape(tuple(shape), dtype)

    def prepack(self, w, out):
        packed_gemm.pack(w, out)
        return out

    def lstm_steps(self, seq, w_ih_t, gates, h, c, tanh_c, w_hh_t, bias, gh, reverse, rows):
        scale = rnn_kernels.gate_scale(h.shape[2], gates.dtype)
        self._in_one_kernel(rnn_kernels.lstm_forward_steps,
                            (seq, w_ih_t, gates, h, c, tanh_c, w_hh_t, bias, scale, gh), reverse, rows)

    def lstm_steps_backward(self, seq, h, gates, c, tanh_c, dh, dc, dgates, w_hh, dout, reverse, rows,
                            dw_ih=None, dw_hh=None, dbias=None):
        self._in_one_kernel(rnn_kernels.lstm_backward_steps,
                            (seq, h, gates, c, tanh_c, dh, dc, dgates, w_hh, dout,
                             *self._step_grads(seq, h, rows, dw_ih, dw_hh, dbias)), reverse, rows)

    def gru_steps(self, seq, w_ih_t, gates, h, hn, w_hh_t, b_ih, b_hh, gh, reverse, rows):
        self._in_one_kernel(rnn_kernels.gru_forward_steps,
                            (seq, w_ih_t, gates, h, hn, w_hh_t, b_ih, b_hh, gh), reverse, rows)

    def gru_steps_backward(self, seq, h, gates, hn, dh, dgx, dgh, w_hh, dout, dh_direct, reverse, rows,
                           dw_ih=None, dw_hh=None, db_ih=None, db_hh=None):
        self._in_one_kernel(rnn_kernels.gru_backward_steps,
                            (seq, h, gates, hn, dh, dgx, dgh, w_hh, dout, dh_direct,
                             *self._step_grads(seq, h, rows, dw_ih, dw_hh, db_ih, db_hh)), reverse, rows)

    def _step_grads(self, seq, h, rows, dw_ih, dw_hh, *dbiases) -> tuple:
        """The backward kernels' weight-gradient arguments: where to add (stand-ins of no elements when
        dw_ih is None: the layer is frozen) and this thread's buffers for a step's x_t and h_prev packed."""
        dtype, block = h.dtype, len(range(h.shape[1])[rows])
        packed = (self.temporary(f"rnn.{name}_packed", packed_gemm.packed_shape((block, width), dtype), dtype)
                  for name, width in (("x", seq.shape[2]), ("h", h.shape[2])))
        if dw_ih is None:
            return (_EMPTY_2D[dtype], _EMPTY_2D[dtype], *(_EMPTY[dtype] for _ in dbiases), *packed)
        return (dw_ih, dw_hh, *dbiases, *packed)

    @staticmethod
    def _in_one_kernel(kernel, arrays: tuple, reverse, rows) -> None:
        """``kernel(*arrays, reverse, first row, end row)``; a None (the absent dL/dh_t from above) goes in
        as an array of no steps."""
        rows = range(arrays[0].shape[1])[rows]
        kernel(*(_EMPTY_3D[arrays[0].dtype] if a is None else a for a in arrays), bool(reverse), rows.start,
               rows.stop)

    def lstm_cell(self, gates, gh, bias, c_prev, c, tanh_c, h):
        rnn_kernels.lstm_cell_forward(gates, gh, bias, rnn_kernels.gate_scale(c.shape[1], gates.dtype), True,
                                      c_prev, c, tanh_c, h)

    def lstm_cell_backward(self, gates, c_prev, tanh_c, dh, dc, dgates):
        rnn_kernels.lstm_cell_backward(gates, c_prev, tanh_c, dh, dc, dgates)

    def gru_cell(self, gates, gh, b_ih, b_hh, h_prev, hn, h):
        rnn_kernels.gru_cell_forward(gates, gh, b_ih, b_hh, h_prev, hn, h)

    def gru_cell_backward(self, gates, hn, h_prev, dh, dgx, dgh, dh_direct):
        rnn_kernels.gru_cell_backward(gates, hn, h_prev, dh, dgx, dgh, dh_direct)

    # ----------------------------------------------------------------- sequence models (norms, attention)
    def norm_rows(self, x, weight, bias, eps, center, out, mean, rstd):
        out, b = self._new_like(out, x), weight if bias is None else bias
        kernels.norm_rows_forward(_rows(x), weight, b, eps, center, bias is not None, _rows(out), mean, rstd)
        return out

    def norm_rows_backward(self, dy, x, weight, mean, rstd, center, dx, dweight, dbias):
        dx, db = self._new_like(dx, dy), dweight if dbias is None else dbias
        kernels.norm_rows_backward(_rows(dy), _rows(x), weight, mean, rstd, center, dbias is not None,
                                   _rows(dx), dweight, db)
        return dx

    # BatchNorm's channels are independent: blocks of them run on the row threads.
    # (N, C, 1) features (BatchNorm1D's (N, C)) run the kernels along the rows (kernels.batch_norm_rows_*),
    # in blocks from BULK_SPLIT_WORK elements (~0.4 ns an element: 256 x 512 takes 50 us, about what a
    # region's hand-off costs).
    def batch_norm_training(self, x, weight, bias, eps, out, mean, var, rstd, relu=False):
        if x.shape[2] == 1:
            self._in_channel_blocks(x, kernels.batch_norm_rows_training_forward, _cols(x), weight, bias,
                                    x.dtype.type(eps), bool(relu), _cols(out), mean, var, rstd,
                                    work=BULK_SPLIT_WORK)
            return out
        self._in_channel_blocks(x, kernels.batch_norm_training_forward, x, weight, bias, x.dtype.type(eps),
                                bool(relu), out, mean, var, rstd)
        return out

    def batch_norm(self, x, mean, rstd, weight, bias, out, relu=False):
        if x.shape[2] == 1:
            self._in_channel_blocks(x, kernels.batch_norm_rows_forward, _cols(x), mean, rstd, weight, bias,
                                    bool(relu), _cols(out), work=BULK_SPLIT_WORK)
            return out
        self._in_channel_blocks(x, kernels.batch_norm_forward, x, mean, rstd, weight, bias, bool(relu), out)
        return out

    def batch_norm_backward(self, dy, x, mean, rstd, weight, training, dx, dweight, dbias, relu_out=None):
        dy = np.ascontiguousarray(dy)
        if x.shape[2] == 1:
            absent = _EMPTY_2D[x.dtype]
            self._in_channel_blocks(x, kernels.batch_norm_rows_backward, _cols(dy),
                                    absent if relu_out is None else _cols(relu_out), _cols(x), mean, rstd,
                                    weight, bool(training), absent if dx is None else _cols(dx), dweight,
                                    dbias, work=BULK_SPLIT_WORK)
            return dx
        y = _EMPTY_3D[x.dtype] if relu_out is None else relu_out

        def both(c0: int, c1: int) -> None:
            kernels.batch_norm_sums(dy, y, x, mean, rstd, dweight, dbias, c0, c1)
            if dx is not None:
                kernels.batch_norm_dx(dy, y, x, mean, rstd, weight, dweight, dbias, training, dx, c0, c1)
        self._in_channel_blocks(x, both)
        return dx

    def _in_channel_blocks(self, x, kernel, *args, work: int = PASS_SPLIT_WORK) -> None:
        """kernel(*args, first channel, end channel) over blocks of x's (N, C, M) channels, on the row
        threads when the pass has ``work`` elements or more."""
        channels = range(x.shape[1])
        self.run_blocks([functools.partial(kernel, *args, channels[rows].start, channels[rows].stop)
                         for rows in self._blocks(len(channels), x.size, work)])

    def group_norm(self, x, weight, bias, groups, eps, out, mean, rstd):
        kernels.group_norm_forward(x, weight, bias, groups, eps, out, mean, rstd)
        return out

    def group_norm_backward(self, dy, x, weight, mean, rstd, groups, dx, dweight, dbias):
        kernels.group_norm_backward(np.ascontiguousarray(dy), x, weight, mean, rstd, groups, dx, dweight,
                                    dbias)
        return dx

    def attention_softmax(self, scores, out, causal, scale=1.0):
        rows, causal_t = _rows(scores), scores.shape[-1] if causal else 0
        kernels.softmax_rows(rows, _rows(out), False, scale, causal_t, self._row_max(len(rows), rows.dtype))
        return out

    def _row_max(self, rows: int, dtype):
        """softmax_rows's scratch for ``rows`` rows."""
        return self.temporary("softmax.row_max", (rows,), dtype)

    def attention_softmax_backward(self, dprobs, probs, out, scale=1.0):
        kernels.softmax_rows_backward(_rows(dprobs), _rows(probs), _rows(out), False, scale)
        return out

    # The fused kernels (attention_kernels) for float32/float64 heads whose rows are unit-stride (the
    # layer's views of its projections); anything else takes the generic products.
    def attention(self, q, k, v, probs, out, causal, scale, mask, keep_scale, scratch):
        if not fused_heads(*(a for a in (q, k, v, probs, out) if a is not None)):  # (probs None: not kept)
            return super().attention(q, k, v, probs, out, causal, scale, mask, keep_scale, scratch)
        if probs is None:  # one head's probabilities at a time, in this thread's (Tq, Tk) buffer
            probs = self.temporary("attention.probs", (1, 1, q.shape[2], k.shape[2]), q.dtype)
        attention_kernels.attention_forward(q, k, v, probs, out, causal, scale,
                                            _EMPTY_MASK if mask is None else mask, keep_scale,
                                            *self._attention_scratch(q, k, mask is not None),
                                            self._row_max(q.shape[2], q.dtype))

    def attention_backward(self, do, probs, q, k, v, dq, dk, dv, causal, scale, mask, keep_scale, scratch):
        if not fused_heads(q, k, v, probs, do, dq, dk, dv):
            return super().attention_backward(do, probs, q, k, v, dq, dk, dv, causal, scale, mask, keep_scale,
                                              scratch)
        attention_kernels.attention_backward(do, probs, q, k, v, dq, dk, dv, causal, scale,
                                             _EMPTY_MASK if mask is None else mask, keep_scale,
                                             *self._attention_scratch(q, k, True))

    def _attention_scratch(self, q, k, weights: bool) -> tuple:
        """This thread's scratch of attention_kernels: k^T packed, a packed (max(Tq, Tk), hd) operand, and a
        (Tq, Tk) buffer where ``weights`` (dropout's weights in forward, dW in backward), else none."""
        (tq, hd), tk, dtype = q.shape[2:], k.shape[2], q.dtype
        return (self.temporary("attention.keys", packed_gemm.packed_shape((hd, tk), dtype), dtype),
                self.temporary("attention.rows", packed_gemm.packed_shape((max(tq, tk), hd), dtype), dtype),
                self.temporary("attention.weights", (tq, tk) if weights else (0, 0), dtype))

    # ----------------------------------------------------------------- optimizer updates (Numba, one pass)
    update_scratch = 0

    def sum_of_squares(self, x):
        return float(np.dot(x, x))

    def adam_step(self, p, g, m, v, scratch, spans, *, lr, weight_decay, beta1, beta2, eps, step, decoupled):
        t, bc1 = p.dtype.type, 1.0 - beta1 ** step
        coef = [(1.0 - r * wd, 0.0, r / bc1) if decoupled else (1.0, wd, r / bc1)
                for r, wd in zip(lr, weight_decay, strict=True)]
        self._update(optim_kernels.adam_update, (p, g, m, v), spans, coef, t(beta2), t(1.0 - beta1),
                     t(1.0 - beta2), t(math.sqrt(1.0 - beta2 ** step)), t(eps), _tiny(p))

    def sgd_step(self, p, g, buf, scratch, spans, *, lr, weight_decay, momentum, dampening, nesterov, first):
        t = p.dtype.type
        self._update(optim_kernels.sgd_update, (p, g, _EMPTY[p.dtype] if buf is None else buf), spans,
                     zip(lr, weight_decay, strict=True), t(momentum), t(1.0 - dampening), bool(nesterov),
                     bool(first), _tiny(p))

    def rmsprop_step(self, p, g, square_avg, grad_avg, buf, scratch, spans, *, lr, weight_decay, alpha, eps,
                     momentum, centered):
        t, empty = p.dtype.type, _EMPTY[p.dtype]
        self._update(optim_kernels.rmsprop_update, (p, g, square_avg, empty if grad_avg is None else grad_avg,
                                                    empty if buf is None else buf),
                     spans, zip(lr, weight_decay, strict=True), t(alpha), t(1.0 - alpha), t(eps), t(momentum),
                     bool(centered), _tiny(p))

    def adagrad_step(self, p, g, state_sum, scratch, spans, *, lr, weight_decay, eps):
        self._update(optim_kernels.adagrad_update, (p, g, state_sum), spans,
                     zip(lr, weight_decay, strict=True), p.dtype.type(eps))

    def nadam_step(self, p, g, m, v, scratch, spans, *, lr, weight_decay, beta1, beta2, eps, step, mu,
                   mu_next, mu_product):
        t = p.dtype.type
        coef = [(wd, r * (1.0 - mu) / (1.0 - mu_product), r * mu_next / (1.0 - mu_product * mu_next))
                for r, wd in zip(lr, weight_decay, strict=True)]
        self._update(optim_kernels.nadam_update, (p, g, m, v), spans, coef, t(beta2), t(1.0 - beta1),
                     t(1.0 - beta2), t(1.0 - beta2 ** step), t(eps), _tiny(p))

    def _update(self, kernel, arrays: tuple, spans, coef, *scalars) -> None:
        """``kernel(*arrays, starts, stops, group, coef, *scalars)`` over the spans, the per-group scalars
        ``coef`` (one row per group) in the parameters' dtype; from BULK_SPLIT_WORK elements, its spans
        cut into as many blocks of near-equal elements as ``row_blocks`` gives, the blocks at once
        (memory-bound: two cores move more bytes than one)."""
        table = np.array(list(coef), arrays[0].dtype)
        total = sum(b - a for a, b, _ in spans.items)
        count = len(self.row_blocks(total, min_rows=1)) if total >= BULK_SPLIT_WORK else 1
        parts = (spans,) if count < 2 else _split_spans(spans.items, count)
        self.run_blocks([functools.partial(kernel, *arrays, part.starts, part.stops, part.group, table,
                                           *scalars) for part in parts])


@functools.lru_cache(maxsize=16)
def _split_spans(items: tuple, parts: int) -> tuple[Spans, ...]:
    """The spans ``items`` ((start, stop, group) triples) cut into ``parts`` tables of near-equal elements."""
    total = sum(b - a for a, b, _ in items)
    cuts = [total * k // parts for k in range(1, parts)]
    tables, current, seen = [], [], 0
    for a, b, group in items:
        while cuts and seen + (b - a) > cuts[0]:  # the span crosses a cut: the part before it ends a table
            at = a + cuts.pop(0) - seen
            current.append((a, at, group))
            tables.append(current)
            current, seen, a = [], seen + at - a, at
        current.append((a, b, group))
        seen += b - a
    tables.append(current)
    return tuple(Spans.of([(a, b, k) for a, b, k in table if b > a]) for table in tables)


# Stand-ins for absent optimizer state (no momentum buffer, not centered), one per float dtype.
_EMPTY = {np.dtype(d): np.zeros(0, d) for d in ("float32", "float64")}
# Stand-ins with no rows, 2-, 3- and 4-D: no dL/dh_t from above (the recurrent loops), a gradient or input
# the implicit convolution's backward is not asked for or does not need, no ReLU output (BatchNorm).
_EMPTY_2D, _EMPTY_3D, _EMPTY_4D = ({np.dtype(d): np.zeros((0,) + (1,) * (ndim - 1), d)
                                    for d in ("float32", "float64")} for ndim in (2, 3, 4))
_EMPTY_MASK = np.zeros((0, 1, 1, 1), bool)  # attention without dropout


def _stream_parts(rng: np.random.Generator, n: int, dtype: np.dtype, blocks: tuple) -> list:
    """(slice, generator) per part of n uniform draws of ``dtype`` such that the parts drawn at once give
    what ``rng`` drawing all n in order gives: part j from a copy of rng's PCG64 state advanced past the
    parts before it (a float64 draw takes one 64-bit output, a float32 draw half of one: float32 parts
    start at even offsets). One part, ``rng`` itself, for fewer blocks, another bit generator, or a
    PCG64 holding half an output (``advance`` would drop it)."""
    state = rng.bit_generator.state
    if len(blocks) < 2 or state.get("bit_generator") != "PCG64" or state.get("has_uint32"):
        return [(slice(0, n), rng)]
    per_output = 2 if dtype == np.float32 else 1
    bounds = [0] + [(k * n // len(blocks)) // per_output * per_output for k in range(1, len(blocks))] + [n]
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        bits = np.random.PCG64()
        bits.state = state
        bits.advance(a // per_output)
        parts.append((slice(a, b), np.random.Generator(bits)))
    return parts


def _tiny(x: np.ndarray):
    """The smallest normal number of x's dtype, as that dtype (the optimizer kernels flush state below it)."""
    return _TINY[x.dtype]


_TINY = {np.dtype(t): np.dtype(t).type(np.finfo(t).tiny) for t in (np.float32, np.float64)}


def fused_heads(*heads: np.ndarray) -> bool:
    """Whether attention_kernels takes these (B, H, T, hd) head stacks: one float dtype, rows unit-stride."""
    dtype = heads[0].dtype
    return dtype in _EMPTY and all(h.ndim == 4 and h.dtype == dtype and h.strides[3] == dtype.itemsize
                                   for h in heads)


_NO_PIXELS = np.zeros(0, np.int64)  # a convolution's products with the channels as rows (conv_kernels)
_NO_PIXELS.flags.writeable = False  # read-only as the tables are: one compiled kernel serves both

