"""The default backend: NumPy arrays on the CPU, with Numba kernels for the fused passes of ``Ops``."""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import blas_threads, conv_kernels, kernels, optim_kernels, packed_gemm, rnn_kernels, row_threads
from .conv_geometry import ConvGeometry
from .ops import DEFAULT_ALPHA, Ops, _groups

CONV_CHUNK_BYTES = 1 << 22  # the columns of one chunk of images (see NumpyOps.conv2d)
# Multiply-adds of a stacked product from which the row threads share its matrices. A region costs 75 us
# (median, 2 cores): (12, 4, 128, 32) @ (.., 32, 128), 25M, took as long split as not (570 us); nanoGPT's
# (16, 6, 256, 64) @ (.., 64, 256), 400M, 5.9 against 11.2 ms.
STACK_SPLIT_WORK = 1 << 25
PASS_SPLIT_WORK = 1 << 19  # elements of a pooling, activation or mask pass from which it runs in blocks
DRAW_CHUNK = 1 << 18  # uniforms drawn at a time for a dropout mask (a 1 MiB float32 temporary)
# A stride-1 convolution with one group runs direct (no columns) with at most this many input channels
# and (C/groups)*kh*kw inputs per output (measured: 3x3 over 1-3 channels and 5x5 over one 1.1-2.6x
# faster; 3x3 over 4 or more, 5x5 over 3 and 1x1 over 16 slower; see benchmarks/README.md).
DIRECT_MAX_CHANNELS, DIRECT_MAX_INPUTS = 3, 27


def _flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous array (kernels write through it)."""
    if not a.flags.c_contiguous:
        raise ValueError("internal: kernel output must be C-contiguous")
    return a.reshape(-1)


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def _conv_chunks(n: int, bytes_per_image: int, threads: int) -> list[tuple[int, int]]:
    """(first image, count) of the chunks of n images whose columns stay within CONV_CHUNK_BYTES (at
    least one image each), as many as it takes rounded up to a multiple of ``threads`` (when there are
    more images than threads), near-equal in size."""
    count = -(-n * bytes_per_image // CONV_CHUNK_BYTES)
    if n >= threads and 4 * n * bytes_per_image >= CONV_CHUNK_BYTES:  # enough work for every thread
        count = -(-count // threads) * threads
    return [(b.start, b.stop - b.start) for b in row_threads.split(n, min(n, max(1, count)))]


def _shifted(geom: ConvGeometry) -> bool:
    """Whether the shifted-rows path runs this convolution: stride 1, every padded row and column read."""
    return geom.stride == (1, 1) and geom.reach == geom.padded_size


def _row_stride(geom: ConvGeometry) -> int:
    """Wp, the distance between two rows of a padded plane in the shifted-rows layout: the image's width
    and the wider of its two side paddings. The zeros after one row's data serve as its right padding
    and, read on from the row before, as the next row's left padding; a window reaching past the end of
    a row reads at most min(left, right) zeros of the next, which must be padding too. For a 3x3 "same"
    convolution at 14x14: rows 15 apart instead of 16, 7 % less GEMM and columns (MNIST CNN step 1.04-1.06x).
    Where the narrower padding is wider than the kernel reaches, the full padded width."""
    (left, right), w, (kw, dw) = geom.padding[1], geom.in_size[1], (geom.kernel[1], geom.dilation[1])
    return w + max(left, right) if min(left, right) <= (kw - 1) * dw else w + left + right


def _plane_length(geom: ConvGeometry) -> int:
    """The length of a padded plane in the shifted-rows layout: Hp*Wp and what the last tap reads past it."""
    hp, wp, (kw, dw) = geom.padded_size[0], _row_stride(geom), (geom.kernel[1], geom.dilation[1])
    return hp * wp + (kw - 1) * dw


def _interior(planes: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """The view (b, C, H, W) of padded planes (b, C, _plane_length) where the unpadded images lie."""
    (b, c), (h, w), (hp, wp) = planes.shape[:2], geom.in_size, (geom.padded_size[0], _row_stride(geom))
    (top, _), (left, _) = geom.padding
    return planes[:, :, :hp * wp].reshape(b, c, hp, wp)[:, :, top:top + h, left:left + w]


def _direct(geom: ConvGeometry, weight: np.ndarray) -> bool:
    """Whether the direct path runs this convolution: stride 1, one group, few inputs per output."""
    return (_shifted(geom) and geom.groups == 1 and weight.shape[1] <= DIRECT_MAX_CHANNELS
            and weight[0].size <= DIRECT_MAX_INPUTS)


@functools.lru_cache(maxsize=64)
def _plane_index(c: int, geom: ConvGeometry) -> np.ndarray:
    """Where row (c, k) of a convolution's columns starts in an image's planes, laid one after another:
    c * _plane_length + the tap's offset (the implicit GEMM's table)."""
    offsets = _tap_offsets(*geom.kernel, *geom.dilation, _row_stride(geom))
    index = (np.arange(c, dtype=np.int64)[:, None] * _plane_length(geom) + offsets).reshape(-1)
    index.flags.writeable = False
    return index


@functools.lru_cache(maxsize=64)
def _gradient_index(o: int, geom: ConvGeometry, nr: int) -> tuple[int, np.ndarray]:
    """The implicit GEMM of a convolution's dx (conv_kernels.implicit_conv2d_backward): Z, the length of a
    row of dz (the M = last tap's offset zeros, a padded plane, a panel's slack of nr), and where row
    (o, k) starts reading dz: o*Z + M + top*Wp - the tap's offset."""
    wp = _row_stride(geom)
    offsets = _tap_offsets(*geom.kernel, *geom.dilation, wp)
    front = int(offsets[-1])
    z_length = front + geom.padded_size[0] * wp + nr
    start = front + geom.padding[0][0] * wp
    index = (np.arange(o, dtype=np.int64)[:, None] * z_length + start - offsets).reshape(-1)
    index.flags.writeable = False
    return z_length, index


@functools.lru_cache(maxsize=64)
def _tap_offsets(kh: int, kw: int, dh: int, dw: int, wp: int) -> np.ndarray:
    """Where tap (i, j) of the kernel starts reading a padded plane with rows wp apart: i*dh*wp + j*dw."""
    offsets = np.array([i * dh * wp + j * dw for i in range(kh) for j in range(kw)], dtype=np.int64)
    offsets.flags.writeable = False
    return offsets


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
        super().matmul_acc(a, b, out, scratch)

    # ----------------------------------------------------------------- primitives
    def where(self, cond, a, b, out):
        np.copyto(out, b)
        np.copyto(out, a, where=cond)
        return out

    def dropout_mask(self, keep, rng, out, dtype):
        # The uniforms go through a small float buffer, DRAW_CHUNK at a time (the generator's stream
        # does not depend on how its draws are split).
        flat, dtype = _flat(out), np.dtype(dtype)
        u = self.temporary("dropout.u", (min(flat.size, DRAW_CHUNK),), dtype)
        for start in range(0, flat.size, DRAW_CHUNK):
            part = u[:min(DRAW_CHUNK, flat.size - start)]
            rng.random(out=part, dtype=dtype)
            np.less(part, keep, out=flat[start:start + part.size])
        return out

    def apply_mask(self, x, mask, scale, out):
        x, mask, out_flat = np.ascontiguousarray(x).reshape(-1), _flat(mask), _flat(out)
        in_place = np.may_share_memory(x, out_flat)
        self.run_blocks([functools.partial(kernels.masked_scale, x[part], mask[part], scale, out_flat[part],
                                           in_place)
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

    # ----------------------------------------------------------------- convolution and pooling
    # Stride-1 convolutions (the usual 3x3 "same" and 1x1 ones) run in the shifted-rows layout: with one
    # group the forward as an implicit GEMM over the padded planes (_implicit_conv2d, no columns); the
    # backward (and a grouped forward) over chunks of images that stay in the cache, dweight as one GEMM
    # with the columns of x, dx as weight^T @ dy folded back onto the planes (the adjoint of the
    # columns). With few inputs per output (a first layer's 1 or 3 channels) a GEMM has too little to
    # multiply and the columns cost more than it: those run direct, from the planes
    # (conv_kernels.direct_conv2d). Other geometries run the reference's whole-batch im2col + GEMM. See
    # _shifted_columns and benchmarks/README.md for the numbers.
    def conv2d(self, x, weight, bias, geom, out, scratch):
        if _direct(geom, weight):
            return self._direct_conv2d(x, weight, bias, geom, out)
        if not _shifted(geom):
            return super().conv2d(x, weight, bias, geom, out, scratch)
        if geom.groups == 1:
            return self._implicit_conv2d(x, weight, bias, geom, out)
        (n, c), (o, g), (oh, ow) = x.shape[:2], (weight.shape[0], geom.groups), geom.out_size
        length = oh * _row_stride(geom)
        w = _groups(weight, g, weight[0].size)

        def run(block: str, chunks) -> None:
            """For each chunk: its columns, one GEMM per group into z (O, b, OH, Wp), and z's first OW
            columns of each row copied to out (b, O, OH, OW)."""
            for n0, b in chunks:
                cols = self._shifted_columns(x[n0:n0 + b], geom)
                z = self.temporary("conv.gemm", (o, b, oh, _row_stride(geom)), x.dtype)
                np.matmul(w, _groups(cols, g, b * length), out=_groups(z, g, b * length))
                if bias is not None:  # here, where rows are contiguous
                    z += bias.reshape(o, 1, 1, 1)
                np.copyto(out[n0:n0 + b], z[..., :ow].transpose(1, 0, 2, 3))
        self._in_chunk_blocks(n, c * math.prod(geom.kernel) * length * x.itemsize, run)
        return out

    def conv2d_backward(self, dy, x, weight, geom, dx, dweight, dbias, scratch):
        if _direct(geom, weight):
            return self._direct_conv2d_backward(dy, x, weight, geom, dx, dweight, dbias)
        if not _shifted(geom):
            return super().conv2d_backward(dy, x, weight, geom, dx, dweight, dbias, scratch)
        if geom.groups == 1:
            return self._implicit_conv2d_backward(dy, x, weight, geom, dx, dweight, dbias)
        (n, o), g, (oh, ow) = dy.shape[:2], geom.groups, geom.out_size
        wp, (kh, kw) = _row_stride(geom), geom.kernel
        c, length = (x if x is not None else dx).shape[1], oh * wp
        if dbias is not None:
            db = scratch("conv.db", (o,))
            np.sum(dy.reshape(n, o, oh * ow), axis=(0, 2), out=db)
            dbias += db
        if dweight is None and dx is None:
            return dx
        w_t = _groups(weight, g, weight[0].size).swapaxes(-1, -2)
        if dweight is not None:
            dweight = _groups(dweight, g, dweight[0].size)
        sums = []

        def run(block: str, chunks) -> None:
            """For each chunk: dy_t (O, b, OH, Wp), zero past OW (the extra outputs of each row
            contribute nothing); dweight^T += columns of x @ dy_t^T into this block's own dw_t (added
            to dweight at the end); dcols = weight^T @ dy_t, folded into the chunk's dx."""
            if dweight is not None:
                dw_t = self.temporary("conv.dw_t" + block, dweight.swapaxes(-1, -2).shape, dy.dtype)
                product = self.temporary("conv.dw_chunk", dw_t.shape, dy.dtype) if len(chunks) > 1 else dw_t
            for k, (n0, b) in enumerate(chunks):
                dy_t = self.temporary("conv.dy_t", (o, b, oh, wp), dy.dtype)
                np.copyto(dy_t[..., :ow], dy[n0:n0 + b].transpose(1, 0, 2, 3))
                dy_t[..., ow:] = 0.0
                rows = _groups(dy_t, g, b * length)
                if dweight is not None:
                    # cols @ dy_t^T: OpenBLAS ran this orientation 1.3-1.9x faster than dy_t @ cols^T
                    cols = self._shifted_columns(x[n0:n0 + b], geom)
                    np.matmul(_groups(cols, g, b * length), rows.swapaxes(-1, -2),
                              out=dw_t if k == 0 else product)
                    if k > 0:
                        dw_t += product
                if dx is not None:
                    dcols = self.temporary("conv.dcols", (c, kh, kw, b, length), dy.dtype)
                    np.matmul(w_t, rows, out=_groups(dcols, g, b * length))
                    self._fold_shifted(dcols, geom, dx[n0:n0 + b])
            if dweight is not None:
                sums.append(dw_t)
        columns = (dweight is not None) + (dx is not None)  # of x and of dx, per image
        self._in_chunk_blocks(n, columns * c * kh * kw * length * dy.itemsize, run)
        for dw_t in sums:
            dweight += dw_t.swapaxes(-1, -2)
        return dx

    def _direct_conv2d(self, x, weight, bias, geom, out):
        """The forward straight from the padded planes, the images in blocks on the row threads."""
        o, (oh, wp) = weight.shape[0], (geom.out_size[0], _row_stride(geom))
        w, offsets = weight.reshape(o, weight.shape[1], -1), _tap_offsets(*geom.kernel, *geom.dilation, wp)
        bias = self._bias_or_zeros(bias, o, x.dtype)

        def run(rows: slice) -> None:
            z = self.temporary("conv.z_row", (oh * wp,), x.dtype)
            conv_kernels.direct_conv2d(self._padded_planes(x[rows], geom), w, offsets, bias, wp, z, out[rows])
        self.run_blocks([functools.partial(run, rows) for rows in self.row_blocks(x.shape[0], min_rows=1)])
        return out

    def _implicit_conv2d(self, x, weight, bias, geom, out):
        """The forward as one implicit GEMM per image over its padded planes (conv_kernels.implicit_conv2d),
        the images in blocks on the row threads."""
        (c, o), (oh, wp) = (x.shape[1], weight.shape[0]), (geom.out_size[0], _row_stride(geom))
        w, index = weight.reshape(o, -1), _plane_index(c, geom)
        bias = self._bias_or_zeros(bias, o, x.dtype)
        slack = packed_gemm.panel_width(x.dtype)  # a panel's last columns read up to NR - 1 past a plane

        def run(rows: slice) -> None:
            planes = self._padded_planes(x[rows], geom, slack)
            z = self.temporary("conv.z", (o, oh * wp), x.dtype)
            conv_kernels.implicit_conv2d(planes, w, index, bias, wp, z, out[rows])
        self.run_blocks([functools.partial(run, rows) for rows in self.row_blocks(x.shape[0], min_rows=1)])
        return out

    def _implicit_conv2d_backward(self, dy, x, weight, geom, dx, dweight, dbias):
        """The gradients as implicit GEMMs over dy and x's padded planes
        (conv_kernels.implicit_conv2d_backward), the images in blocks on the row threads, each block's
        weight gradient apart (C, K, O), added after."""
        (n, o), c, dtype = dy.shape[:2], weight.shape[1], dy.dtype
        (oh, ow), wp, taps = geom.out_size, _row_stride(geom), math.prod(geom.kernel)
        if dbias is not None:
            db = self.temporary("conv.db", (o,), dtype)
            np.sum(dy.reshape(n, o, oh * ow), axis=(0, 2), out=db)
            dbias += db
        if dweight is None and dx is None:
            return dx
        slack = packed_gemm.panel_width(dtype)
        z_length, index = _gradient_index(o, geom, slack)
        offsets = _tap_offsets(*geom.kernel, *geom.dilation, wp)
        w_t = self.temporary("conv.w_t", (c, o * taps), dtype)
        np.copyto(w_t.reshape(c, o, taps), weight.reshape(o, c, taps).transpose(1, 0, 2))
        blocks, absent = self.row_blocks(n, min_rows=1), _EMPTY_3D[dtype]
        dws = [absent] * len(blocks)
        if dweight is not None:
            dws = [self.temporary(f"conv.dw_t{k}", (c, taps, o), dtype) for k in range(len(blocks))]
            for dw_t in dws:
                dw_t[...] = 0.0

        def run(rows: slice, dw_t) -> None:
            planes = self._padded_planes(x[rows], geom, slack) if dweight is not None else _EMPTY_2D[dtype]
            packed = self.temporary("conv.dz_packed", packed_gemm.packed_shape((oh * wp, o), dtype), dtype)
            dxz = self.temporary("conv.dxz", (c, geom.in_size[0] * wp), dtype) if dx is not None else \
                _EMPTY_2D[dtype]
            conv_kernels.implicit_conv2d_backward(
                planes, _plane_length(geom), dy[rows], w_t, index, offsets, wp, geom.padding[1][0],
                self.temporary("conv.dz", (o, z_length), dtype), packed, dxz, dw_t,
                dx[rows] if dx is not None else _EMPTY_4D[dtype])
        self.run_blocks([functools.partial(run, *args) for args in zip(blocks, dws, strict=True)])
        if dweight is not None:
            grad = _flat(dweight).reshape(o, c, taps)
            for dw_t in dws:
                grad += dw_t.transpose(2, 0, 1)
        return dx

    def _bias_or_zeros(self, bias, o: int, dtype):
        """``bias``, or where there is none a zero one (o,): one kernel serves both."""
        if bias is None:
            bias = self.temporary("conv.no_bias", (o,), dtype)
            bias[...] = 0.0
        return bias

    def _direct_conv2d_backward(self, dy, x, weight, geom, dx, dweight, dbias):
        """The gradients straight from the padded planes, the images in blocks on the row threads (each
        block's weight and bias gradients apart, added after: ``_block_partials``)."""
        (n, o), c, wp = dy.shape[:2], weight.shape[1], _row_stride(geom)
        w, offsets = weight.reshape(o, c, -1), _tap_offsets(*geom.kernel, *geom.dilation, wp)
        blocks, absent = self.row_blocks(n, min_rows=1), _EMPTY_3D[dy.dtype]
        dws = self._block_partials("conv.dw", _flat(dweight).reshape(w.shape), len(blocks)) \
            if dweight is not None else [absent] * len(blocks)
        dbs = self._block_partials("conv.db", dbias, len(blocks)) if dbias is not None else \
            [_EMPTY[dy.dtype]] * len(blocks)

        def run(rows: slice, dw, db) -> None:
            planes = self._padded_planes(x[rows], geom) if dweight is not None else absent
            dplanes = self.temporary("conv.dx_padded", (len(range(n)[rows]), c, _plane_length(geom)),
                                     dy.dtype) if dx is not None else absent
            dy_rows = self.temporary("conv.dy_rows", (4, geom.out_size[0] * wp), dy.dtype)
            conv_kernels.direct_conv2d_backward(planes, dy[rows], w, offsets, wp, dy_rows, dw, db, dplanes)
            if dx is not None:
                np.copyto(dx[rows], _interior(dplanes, geom))
        self.run_blocks([functools.partial(run, *args) for args in zip(blocks, dws, dbs, strict=True)])
        for grad, partials in ((dweight, dws), (dbias, dbs)):
            if grad is not None:
                self._add_block_partials(partials)
        return dx

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

    def _in_chunk_blocks(self, n: int, bytes_per_image: int, run) -> None:
        """Call run(block, chunks) for the (first image, count) chunks of n images, dealt out in
        contiguous blocks to the row threads, one block per thread; ``block`` ("", "1", ...) tells
        each block's scratch buffers apart. A single block's products use every BLAS thread."""
        chunks = _conv_chunks(n, bytes_per_image, blas_threads.threads())
        blas_threads.use_all_threads()
        self.run_blocks([functools.partial(run, str(k) if k else "", chunks[rows])
                         for k, rows in enumerate(self.row_blocks(len(chunks), min_rows=1))])

    def _shifted_columns(self, x, geom):
        """The columns (C, kh, kw, b, OH*Wp) of the b images x (b, C, H, W), Wp = _row_stride: x is
        copied inside zeros as planes (_padded_planes), and entry (c, i, j, m) is the slice of plane (m, c)
        from i*dh*Wp + j*dw, OH*Wp long (over whole rows: the GEMM computes Wp - OW outputs per row that
        are dropped). One strided copy reads them all."""
        (b, c), (kh, kw), (dh, dw) = x.shape[:2], geom.kernel, geom.dilation
        wp, oh = _row_stride(geom), geom.out_size[0]
        planes = self._padded_planes(x, geom)
        cols = self.temporary("conv.cols", (c, kh, kw, b, oh * wp), x.dtype)
        s = planes.strides
        np.copyto(cols, as_strided(planes, cols.shape, (s[1], dh * wp * s[2], dw * s[2], s[0], s[2])))
        return cols

    def _padded_planes(self, x, geom, slack: int = 0):
        """x (b, C, H, W) copied inside zeros as planes (b, C, _plane_length): the padded images; with
        ``slack``, flat per image (b, C*_plane_length + slack), the slack's contents undefined."""
        (b, c), length = x.shape[:2], _plane_length(geom)
        if not slack:
            planes = self.temporary("conv.padded", (b, c, length), x.dtype)
        else:
            flat = self.temporary("conv.padded_slack", (b, c * length + slack), x.dtype)
            planes = flat[:, :c * length].reshape(b, c, length)
        planes[...] = 0.0
        np.copyto(_interior(planes, geom), x)
        return planes if not slack else flat

    def _fold_shifted(self, dcols, geom, dx):
        """dx (b, C, H, W) = the adjoint of _shifted_columns applied to dcols (C, kh, kw, b, OH*Wp):
        every entry added back onto the padded planes it was read from, the padding dropped."""
        planes = self.temporary("conv.padded", (*dx.shape[:2], _plane_length(geom)), dx.dtype)
        conv_kernels.fold_shifted(dcols, _row_stride(geom), *geom.dilation, planes)
        np.copyto(dx, _interior(planes, geom))

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
                                           out[rows], index[rows])
                         for rows in self._blocks(x.shape[0], x.size, PASS_SPLIT_WORK)])
        return out

    def max_pool2d_backward(self, dy, index, out):
        dy = np.ascontiguousarray(dy)
        self.run_blocks([functools.partial(conv_kernels.max_pool2d_backward, dy[rows], index[rows], out[rows])
                         for rows in self._blocks(out.shape[0], out.size, PASS_SPLIT_WORK)])
        return out

    # ----------------------------------------------------------------- activations
    def activation(self, name, z, out, alpha=None, *, bias=None):
        if name in ("softmax", "log_softmax"):
            if bias is not None:
                z += bias
            kernels.softmax_rows(_rows(z), _rows(out), name == "log_softmax", 1.0, 0)
            return out
        code, a = kernels.ACT_CODES[name], DEFAULT_ALPHA.get(name, 0.0) if alpha is None else alpha
        if bias is not None:  # rows in blocks on the threads
            z_rows, out_rows = _rows(z), _rows(out)
            self.run_blocks([functools.partial(kernels.bias_activation_rows, code, a, z_rows[part], bias,
                                               out_rows[part])
                             for part in self._blocks(len(z_rows), z.size, PASS_SPLIT_WORK)])
            return out
        z, out_flat = np.ascontiguousarray(z).reshape(-1), _flat(out)  # elementwise: blocks on the threads
        self.run_blocks([functools.partial(kernels.activation_forward, code, a, z[part], out_flat[part])
                         for part in self._blocks(z.size, z.size, PASS_SPLIT_WORK)])
        return out

    def activation_backward(self, name, dy, z, y, out, alpha=None, *, bias_grad=None):
        if name in ("softmax", "log_softmax"):
            kernels.softmax_rows_backward(_rows(dy), _rows(y), _rows(out), name == "log_softmax", 1.0)
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

    def lstm_steps(self, gates, h, c, tanh_c, w_hh_t, bias, gh, reverse, rows):
        self._in_one_kernel(rnn_kernels.lstm_forward_steps, (gates, h, c, tanh_c, w_hh_t, bias, gh), reverse,
                            rows)

    def lstm_steps_backward(self, gates, c, tanh_c, dh, dc, dgates, w_hh, dout, reverse, rows):
        self._in_one_kernel(rnn_kernels.lstm_backward_steps, (gates, c, tanh_c, dh, dc, dgates, w_hh, dout),
                            reverse, rows)

    def gru_steps(self, gates, h, hn, w_hh_t, b_ih, b_hh, gh, reverse, rows):
        self._in_one_kernel(rnn_kernels.gru_forward_steps, (gates, h, hn, w_hh_t, b_ih, b_hh, gh), reverse,
                            rows)

    def gru_steps_backward(self, gates, h, hn, dh, dgx, dgh, w_hh, dout, dh_direct, reverse, rows):
        self._in_one_kernel(rnn_kernels.gru_backward_steps,
                            (gates, h, hn, dh, dgx, dgh, w_hh, dout, dh_direct), reverse, rows)

    @staticmethod
    def _in_one_kernel(kernel, arrays: tuple, reverse, rows) -> None:
        """``kernel(*arrays, reverse, first row, end row)``; a None (the absent dL/dh_t from above) goes in
        as an array of no steps."""
        rows = range(arrays[0].shape[1])[rows]
        kernel(*(_EMPTY_3D[arrays[0].dtype] if a is None else a for a in arrays), bool(reverse), rows.start,
               rows.stop)

    def lstm_cell(self, gates, gh, bias, c_prev, c, tanh_c, h):
        rnn_kernels.lstm_cell_forward(gates, gh, bias, c_prev, c, tanh_c, h)

    def lstm_cell_backward(self, gates, c_prev, tanh_c, dh, dc, dgates):
        rnn_kernels.lstm_cell_backward(gates, c_prev, tanh_c, dh, dc, dgates)

    def gru_cell(self, gates, gh, b_ih, b_hh, h_prev, hn, h):
        rnn_kernels.gru_cell_forward(gates, gh, b_ih, b_hh, h_prev, hn, h)

    def gru_cell_backward(self, gates, hn, h_prev, dh, dgx, dgh, dh_direct):
        rnn_kernels.gru_cell_backward(gates, hn, h_prev, dh, dgx, dgh, dh_direct)

    # ----------------------------------------------------------------- sequence models (norms, attention)
    def norm_rows(self, x, weight, bias, eps, center, out, mean, rstd):
        b = weight if bias is None else bias
        kernels.norm_rows_forward(_rows(x), weight, b, eps, center, bias is not None, _rows(out), mean, rstd)
        return out

    def norm_rows_backward(self, dy, x, weight, mean, rstd, center, dx, dweight, dbias):
        db = dweight if dbias is None else dbias
        kernels.norm_rows_backward(_rows(dy), _rows(x), weight, mean, rstd, center, dbias is not None,
                                   _rows(dx), dweight, db)
        return dx

    # BatchNorm's channels are independent: blocks of them run on the row threads.
    def batch_norm_stats(self, x, mean, var):
        self._in_channel_blocks(x, kernels.batch_norm_stats, x, mean, var)

    def batch_norm(self, x, mean, rstd, weight, bias, out):
        self._in_channel_blocks(x, kernels.batch_norm_forward, x, mean, rstd, weight, bias, out)
        return out

    def batch_norm_backward(self, dy, x, mean, rstd, weight, training, dx, dweight, dbias):
        dy = np.ascontiguousarray(dy)

        def both(c0: int, c1: int) -> None:
            kernels.batch_norm_sums(dy, x, mean, rstd, dweight, dbias, c0, c1)
            if dx is not None:
                kernels.batch_norm_dx(dy, x, mean, rstd, weight, dweight, dbias, training, dx, c0, c1)
        self._in_channel_blocks(x, both)
        return dx

    def _in_channel_blocks(self, x, kernel, *args) -> None:
        """kernel(*args, first channel, end channel) over blocks of x's (N, C, M) channels, on the row
        threads when the pass is large enough."""
        channels = range(x.shape[1])
        self.run_blocks([functools.partial(kernel, *args, channels[rows].start, channels[rows].stop)
                         for rows in self._blocks(len(channels), x.size, PASS_SPLIT_WORK)])

    def group_norm(self, x, weight, bias, groups, eps, out, mean, rstd):
        kernels.group_norm_forward(x, weight, bias, groups, eps, out, mean, rstd)
        return out

    def group_norm_backward(self, dy, x, weight, mean, rstd, groups, dx, dweight, dbias):
        kernels.group_norm_backward(np.ascontiguousarray(dy), x, weight, mean, rstd, groups, dx, dweight,
                                    dbias)
        return dx

    def attention_softmax(self, scores, out, causal, scale=1.0):
        kernels.softmax_rows(_rows(scores), _rows(out), False, scale, scores.shape[-1] if causal else 0)
        return out

    def attention_softmax_backward(self, dprobs, probs, out, scale=1.0):
        kernels.softmax_rows_backward(_rows(dprobs), _rows(probs), _rows(out), False, scale)
        return out

    # ----------------------------------------------------------------- optimizer updates (Numba, one pass)
    update_scratch = 0

    def sum_of_squares(self, x):
        return float(np.dot(x, x))

    def adam_step(self, p, g, m, v, scratch, spans, *, lr, weight_decay, beta1, beta2, eps, step, decoupled):
        t, bc1 = p.dtype.type, 1.0 - beta1 ** step
        coef = [(1.0 - r * wd, 0.0, r / bc1) if decoupled else (1.0, wd, r / bc1)
                for r, wd in zip(lr, weight_decay, strict=True)]
        optim_kernels.adam_update(p, g, m, v, *_table(spans, coef, p.dtype), t(beta2), t(1.0 - beta1),
                                  t(1.0 - beta2), t(math.sqrt(1.0 - beta2 ** step)), t(eps))

    def sgd_step(self, p, g, buf, scratch, spans, *, lr, weight_decay, momentum, dampening, nesterov, first):
        t = p.dtype.type
        optim_kernels.sgd_update(p, g, _EMPTY[p.dtype] if buf is None else buf,
                                 *_table(spans, zip(lr, weight_decay, strict=True), p.dtype), t(momentum),
                                 t(1.0 - dampening), bool(nesterov), bool(first))

    def rmsprop_step(self, p, g, square_avg, grad_avg, buf, scratch, spans, *, lr, weight_decay, alpha, eps,
                     momentum, centered):
        t, empty = p.dtype.type, _EMPTY[p.dtype]
        optim_kernels.rmsprop_update(p, g, square_avg, empty if grad_avg is None else grad_avg,
                                     empty if buf is None else buf,
                                     *_table(spans, zip(lr, weight_decay, strict=True), p.dtype), t(alpha),
                                     t(1.0 - alpha), t(eps), t(momentum), bool(centered))

    def adagrad_step(self, p, g, state_sum, scratch, spans, *, lr, weight_decay, eps):
        table = _table(spans, zip(lr, weight_decay, strict=True), p.dtype)
        optim_kernels.adagrad_update(p, g, state_sum, *table, p.dtype.type(eps))

    def nadam_step(self, p, g, m, v, scratch, spans, *, lr, weight_decay, beta1, beta2, eps, step, mu,
                   mu_next, mu_product):
        t = p.dtype.type
        coef = [(wd, r * (1.0 - mu) / (1.0 - mu_product), r * mu_next / (1.0 - mu_product * mu_next))
                for r, wd in zip(lr, weight_decay, strict=True)]
        optim_kernels.nadam_update(p, g, m, v, *_table(spans, coef, p.dtype), t(beta2), t(1.0 - beta1),
                                   t(1.0 - beta2), t(1.0 - beta2 ** step), t(eps))


def _table(spans, coef, dtype) -> tuple:
    """The kernels' span arguments: starts, stops, group, and the per-group scalars (one row of ``coef``
    per group) in the parameters' dtype."""
    return spans.starts, spans.stops, spans.group, np.array(list(coef), dtype)


# Stand-ins for absent optimizer state (no momentum buffer, not centered), one per float dtype.
_EMPTY = {np.dtype(d): np.zeros(0, d) for d in ("float32", "float64")}
# 3-D stand-ins with no rows: no dL/dh_t from above (the recurrent loops), a gradient or input the direct
# convolution's backward is not asked for or does not need.
_EMPTY_3D = {np.dtype(d): np.zeros((0, 1, 1), d) for d in ("float32", "float64")}
_EMPTY_2D = {np.dtype(d): np.zeros((0, 1), d) for d in ("float32", "float64")}
_EMPTY_4D = {np.dtype(d): np.zeros((0, 1, 1, 1), d) for d in ("float32", "float64")}

