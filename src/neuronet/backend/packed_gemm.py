"""A register-blocked GEMM for Numba kernels: c = a @ b or c += a @ b, with b packed once into panels.

OpenBLAS packs both operands on every call and runs a small product's edges slowly: the LSTM's per-step
h @ W_hh^T (32 x 128 @ 128 x 512) ran at 80 GFLOP/s on one core of this host, dgates @ W_hh (32 x 512 @
512 x 128) at 88, where this kernel runs both at 115 (OpenBLAS's square-GEMM rate here: ~104). A recurrent
weight is the same operand for every step of a sequence, so it is packed once (``pack``) and read by
``gemm`` at every step.

Layout: b (K, N) becomes panels (P, K, NR) of NR = two 64-byte vectors of columns (32 float32 or 16
float64); row k of panel p holds b[k, p*NR : (p+1)*NR], zero past b's last column. ``gemm`` walks the
panels and, in each, tiles of up to MR = 8 rows of ``a``: 2 MR vector accumulators stay in registers over
the whole inner dimension, and each k costs one broadcast of a[r, k] per row and two vector loads of the
panel. Eight rows rather than six (2026-12-07, one core, GFLOP/s, MR 6 / 8 / 12 / 14): 64x128 @ 128x512
140 / 147 / 152 / 158, 64x512 @ 512x128 127 / 152 / 149 / 158, 1792x128 @ 128x512 138 / 145 / 131 / 136;
in the steps, one thread, MNIST CNN 21.7-22.1 against 25.2 ms, small ResNet 70.5-70.7 against 71.7-80.4,
the LSTM and char GPT even (two threads: ResNet 41.5-42.9 against 44.3-45.3, the rest even). Twelve or
fourteen rows lost on the tall products; on a machine with 16 vector registers (AVX2) every width spills.
The tile is LLVM IR emitted through a Numba intrinsic (Numba's own loops do not keep accumulators in
registers: measured at 30-50 GFLOP/s); its stores are masked past c's last column, so any N works. ``a`` is
read through its two strides (a transposed view works); c's rows must be unit-stride.

Three implicit GEMMs read an operand where it lies instead: ``gemm_indexed`` the rows of b through a table of
row starts (a convolution's columns are shifted padded planes), ``gemm_rows`` the rows of a (the same
columns as the left operand of a weight gradient), with b packed in panels of two vectors or, where the
last would be at most half full (``narrow_panels``), of one, and ``gemm_gather`` the elements of a through
a table of row starts and one of column offsets (the columns transposed, a row per output pixel).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, register_jitable

from .llvm_vectors import I32, I64, LANES, Float32Vectors, broadcast, declare_intrinsic

SKIP_UPPER, A_LOWER, A_UPPER = 1, 2, 3  # ``gemm(..., triangle)``: what a causal mask makes zero (0: none)
MR = 8  # rows of a tile: 16 accumulators + 2 panel vectors + 1 broadcast of the 32 vector registers
_VECTOR_BYTES = 64  # one AVX-512 register; LLVM splits it where the machine has narrower ones
PANEL_BYTES = 2 * _VECTOR_BYTES
BLOCK = LANES  # float32 lanes of a vector: the side of ``transpose_block``'s square

jit = numba.njit(cache=True, nogil=True)


def panel_width(dtype, narrow: bool = False) -> int:
    """NR: the columns of a panel for ``dtype`` (32 for float32, 16 for float64); ``narrow``: half that
    (one vector: ``gemm_rows`` takes either)."""
    return PANEL_BYTES // (2 if narrow else 1) // np.dtype(dtype).itemsize


def narrow_panels(n: int, dtype) -> bool:
    """Whether n columns waste less in narrow panels: the last full-width panel would be at most half full
    (a convolution's dweight over 16 output channels computed 32 columns: 2x the work)."""
    return (n - 1) % panel_width(dtype) < panel_width(dtype, narrow=True)


def packed_shape(shape: tuple[int, int], dtype, narrow: bool = False) -> tuple[int, int, int]:
    """The (P, K, NR) array ``pack`` fills for a (K, N) matrix of ``dtype``."""
    k, n = shape
    nr = panel_width(dtype, narrow)
    return (n + nr - 1) // nr, k, nr


@jit
def pack(b, out):
    """out (P, K, NR) <- the panels of b (K, N), zero past b's last column (``packed_shape``)."""
    nr = out.shape[2]
    if b.strides[1] == b.itemsize and nr * b.itemsize == PANEL_BYTES and out.strides[2] == out.itemsize \
            and out.strides[1] == PANEL_BYTES:  # b's rows unit-stride: whole panels row by row as vectors
        full = b.shape[1] // nr
        for p in range(full):
            for k in range(b.shape[0]):
                _copy_panel_row(out.ctypes.data + p * out.strides[0] + k * PANEL_BYTES,
                                b.ctypes.data + k * b.strides[0] + p * PANEL_BYTES)
        if 0 < full < out.shape[0]:
            _pack_elements(b[:, full * nr:], out[full:])
        elif full == 0:  # (not a slice of b: Numba's loops over b as it is typed ran ~1.7x faster)
            _pack_elements(b, out)
    elif b.strides[0] == b.itemsize == 4 and out.strides[2] == 4 and nr % BLOCK == 0:
        _pack_transposed(b, out)  # b's columns unit-stride (a transposed view): 16 x 16 blocks in registers
    else:
        _pack_elements(b, out)


@jit
def _pack_transposed(b, out):
    """``pack`` of a float32 b (K, N) whose columns are unit-stride, in 16 x 16 blocks transposed in
    registers (``transpose_block``), one thread, against the element-wise loop: a convolution's dz^T
    (840 x 16) in narrow panels 4.9 -> 2.1 us, (840 x 32) 8.3 -> 4.2, its weight^T (144 x 32) 2.2 -> 0.9,
    attention's k^T (32 x 64) 0.89 -> 0.52."""
    k_size, n = b.shape
    nr = out.shape[2]
    for p in range(out.shape[0]):
        for j0 in range(0, nr, BLOCK):
            col = p * nr + j0
            for k0 in range(0, k_size, BLOCK):
                transpose_block(out.ctypes.data + p * out.strides[0] + k0 * out.strides[1] + j0 * 4,
                                 out.strides[1], b.ctypes.data + col * b.strides[1] + k0 * 4, b.strides[1],
                                 min(BLOCK, n - col), min(BLOCK, k_size - k0))


@jit
def _pack_elements(b, out):
    """``pack`` an element at a time, row by row (a convolution's transposed dz (840 x 16) packed column
    by column took 3x as long: the panel's rows, written a column at a time, leave L1 in between)."""
    k_size, n = b.shape
    nr = out.shape[2]
    zero = out.dtype.type(0.0)
    for p in range(out.shape[0]):
        for k in range(k_size):
            for j in range(nr):
                col = p * nr + j
                out[p, k, j] = b[k, col] if col < n else zero


@intrinsic
def transpose_block(typingctx, dst, dst_stride, src, src_stride, rows, cols):
    """dst[c, r] = src[r, c] for c < cols (rows of dst written) and r < 16, 0 where r >= rows (float32;
    addresses, strides in bytes; rows may be <= 0, cols in 1..16). The 16 source rows, read as vectors
    under a mask of the columns, become the 16 destination rows in four rounds of two-vector shuffles,
    each swapping the off-diagonal blocks of a side half the last one's (8, 4, 2, 1)."""
    def codegen(context, builder, signature, args):
        dst_, dst_stride_, src_, src_stride_, rows_, cols_ = args
        b, vectors, zero = builder, Float32Vectors(builder), ir.Constant(I64, 0)

        def at(base, stride, i):
            return b.add(base, b.mul(stride, ir.Constant(I64, i)))

        rows_v = []
        for r in range(BLOCK):  # row r under the column mask, or no lane at all past ``rows``
            limit = b.select(b.icmp_signed("<", ir.Constant(I64, r), rows_), cols_, zero)
            rows_v.append(vectors.load(at(src_, src_stride_, r), vectors.lanes_below(zero, limit)))
        for step in (8, 4, 2, 1):
            low = ir.Constant(ir.VectorType(I32, BLOCK),
                              [c if c & step == 0 else BLOCK + c - step for c in range(BLOCK)])
            high = ir.Constant(ir.VectorType(I32, BLOCK),
                               [c + step if c & step == 0 else BLOCK + c for c in range(BLOCK)])
            for r in range(BLOCK):
                if r & step == 0:
                    x, y = rows_v[r], rows_v[r + step]
                    rows_v[r], rows_v[r + step] = b.shuffle_vector(x, y, low), b.shuffle_vector(x, y, high)
        every = ir.VectorType(ir.IntType(1), BLOCK)
        for c in range(BLOCK):  # row c of dst, whole or not at all
            write = b.icmp_signed("<", ir.Constant(I64, c), cols_)
            vectors.store(rows_v[c], at(dst_, dst_stride_, c), broadcast(b, write, every))
        return context.get_dummy_value()
    return types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp), codegen


@intrinsic
def _copy_panel_row(typingctx, dst, src):
    """PANEL_BYTES from address ``src`` to address ``dst`` (two vector loads and stores). Numba indexes a
    view whose strides it does not know (a head of the attention's projection rows, ``v[b, h]``) an
    element at a time: 0.69 us to pack a 64 x 32 head against 0.21 for a contiguous array."""
    def codegen(context, builder, signature, args):
        ptr = ir.IntType(8).as_pointer()
        fn = declare_intrinsic(builder.module, "llvm.memcpy.p0.p0.i64", ir.VoidType(),
                               [ptr, ptr, I64, ir.IntType(1)])
        builder.call(fn, [builder.inttoptr(args[0], ptr), builder.inttoptr(args[1], ptr),
                          ir.Constant(I64, PANEL_BYTES), ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()
    return types.void(types.intp, types.intp), codegen


def _make_tile(rows: int, indexed: bool, rows_indexed: bool, vectors: int, cols_indexed: bool = False):
    """The intrinsic computing one tile of ``rows`` rows (1..MR) by one panel of ``vectors`` vectors; with
    ``indexed`` the panel's rows are read where a table says (an implicit GEMM: a convolution's shifted
    planes), with ``rows_indexed`` the rows of ``a``, and with ``cols_indexed`` too its columns."""

    @intrinsic
    def tile(typingctx, zero, a, a_row, a_col, b, b_index, c, ldc, k_size, n_cols, accumulate):
        """c[r, :n_cols] (+)= sum_k a[r a_row + k a_col] * B_k for r < rows, B_k the NR values at
        b + k NR, or with ``indexed`` at b + b_index[k] (b_index: the address of an int64 array); with
        ``rows_indexed`` row r of a starts at a + a_row[r] (a_row: the address of an int64 array), and with
        ``cols_indexed`` its column k is a_col[k] past that (a_col: the address of an int64 array).
        Addresses of elements, strides in elements; ``zero`` (float32 or float64) gives their type."""
        sig = types.void(zero, a, a_row, a_col, b, b_index, c, ldc, k_size, n_cols, accumulate)

        def codegen(context, builder, signature, args):
            real = context.get_value_type(signature.args[0])
            lanes = _VECTOR_BYTES // (4 if isinstance(real, ir.FloatType) else 8)
            vec, mask_t = ir.VectorType(real, lanes), ir.VectorType(ir.IntType(1), lanes)
            vptr = vec.as_pointer()
            _, a_, a_row_, a_col_, b_, b_index_, c_, ldc_, k_, n_cols_, accumulate_ = args
            a_p, b_p, c_p = (builder.inttoptr(x, real.as_pointer()) for x in (a_, b_, c_))
            suffix = f"v{lanes}f{32 if isinstance(real, ir.FloatType) else 64}"
            fma = declare_intrinsic(builder.module, f"llvm.fma.{suffix}", vec, [vec, vec, vec])
            zeros = ir.Constant(vec, [0.0] * lanes)

            def const(v):
                return ir.Constant(I64, v)

            if rows_indexed:  # where each row of a starts, loaded once
                starts = builder.inttoptr(a_row_, I64.as_pointer())
                row_at = [builder.load(builder.gep(starts, [const(r)])) for r in range(rows)]
            else:
                row_at = [builder.mul(const(r), a_row_) for r in range(rows)]

            # the k loop: accumulators as phi nodes, so that they live in registers
            entry = builder.block
            body, done = builder.append_basic_block("tile.k"), builder.append_basic_block("tile.done")
            builder.cbranch(builder.icmp_signed(">", k_, const(0)), body, done)
            builder.position_at_end(body)
            k = builder.phi(I64)
            accs = [builder.phi(vec) for _ in range(vectors * rows)]
            if indexed:
                panel = builder.load(builder.gep(builder.inttoptr(b_index_, I64.as_pointer()), [k]))
            else:
                panel = builder.mul(k, const(vectors * lanes))
            bv = [builder.load(_vector_at(builder, b_p, builder.add(panel, const(v * lanes)), vptr),
                               align=_alignment(real)) for v in range(vectors)]
            if cols_indexed:
                a_k = builder.load(builder.gep(builder.inttoptr(a_col_, I64.as_pointer()), [k]))
            else:
                a_k = builder.mul(k, a_col_)
            sums = []
            for r in range(rows):
                x = builder.load(builder.gep(a_p, [builder.add(a_k, row_at[r])]))
                xs = broadcast(builder, x, vec)
                sums += [builder.call(fma, [xs, bv[v], accs[vectors * r + v]]) for v in range(vectors)]
            k_next, end = builder.add(k, const(1)), builder.block
            builder.cbranch(builder.icmp_signed("<", k_next, k_), body, done)
            k.add_incoming(const(0), entry)
            k.add_incoming(k_next, end)
            for acc, s in zip(accs, sums, strict=True):
                acc.add_incoming(zeros, entry)
                acc.add_incoming(s, end)
            builder.position_at_end(done)
            totals = []  # phi nodes first in their block: the sums, or zeros where the k loop did not run
            for s in sums:
                total = builder.phi(vec)
                total.add_incoming(zeros, entry)
                total.add_incoming(s, end)
                totals.append(total)

            # the stores: masked past column n_cols; with ``accumulate`` added to what c holds
            load = declare_intrinsic(builder.module, f"llvm.masked.load.{suffix}.p0", vec,
                                     [vptr, I32, mask_t, vec])
            store = declare_intrinsic(builder.module, f"llvm.masked.store.{suffix}.p0", ir.VoidType(),
                                      [vec, vptr, I32, mask_t])
            n_splat = broadcast(builder, n_cols_, ir.VectorType(I64, lanes))
            adding = builder.icmp_signed("!=", accumulate_, const(0))
            align = ir.Constant(I32, _alignment(real))
            for v in range(vectors):
                lane_cols = ir.Constant(ir.VectorType(I64, lanes), list(range(v * lanes, (v + 1) * lanes)))
                mask = builder.icmp_signed("<", lane_cols, n_splat)
                for r in range(rows):
                    total = totals[vectors * r + v]
                    at = builder.add(builder.mul(const(r), ldc_), const(v * lanes))
                    ptr = _vector_at(builder, c_p, at, vptr)
                    old = builder.call(load, [ptr, align, mask, zeros])
                    value = builder.select(adding, builder.fadd(old, total), total)
                    builder.call(store, [value, ptr, align, mask])
            return context.get_dummy_value()
        return sig, codegen
    return tile


def _vector_at(builder, base, index, vector_pointer):
    """A pointer to the vector starting at element ``index`` of ``base``."""
    return builder.bitcast(builder.gep(base, [index]), vector_pointer)


def _alignment(real) -> int:
    return 4 if isinstance(real, ir.FloatType) else 8


def _product_of(indexed: bool, rows_indexed: bool, vectors: int, name: str, cols_indexed: bool = False):
    """The GEMM loop over panels of ``vectors`` vectors and tiles of MR rows, its tiles made by
    ``_make_tile``: ``product(a, a_row, a_col, m, k_size, b, panel_bytes, index, c, accumulate, triangle)``,
    c (+)= A @ B, panel p of B at address b + p * panel_bytes, its rows NR apart or with ``indexed`` where
    the int64 table at address ``index`` says; A (m, k_size) at address a with strides a_row, a_col
    (elements), or with ``rows_indexed`` row r at a + the int64 table at address a_row says (and with
    ``cols_indexed`` column k the int64 table at address a_col past that). ``triangle`` (plain A and B
    only) skips work a causal mask makes zero: ``SKIP_UPPER`` leaves the tiles of c above its diagonal
    unwritten, ``A_LOWER`` and ``A_UPPER`` read only the columns of A on and below, or on and above, each
    tile's rows (A is zero elsewhere)."""
    t1, t2, t3, t4, t5, t6, t7, t8 = (_make_tile(r, indexed, rows_indexed, vectors, cols_indexed)
                                      for r in range(1, MR + 1))
    nr_bytes = vectors * _VECTOR_BYTES

    def product(a, a_row, a_col, m, k_size, b, panel_bytes, index, c, accumulate, triangle):
        n = c.shape[1]
        size = c.itemsize
        ldc = c.strides[0] // size
        nr = nr_bytes // size
        zero = c.dtype.type(0.0)
        flag = np.int64(1 if accumulate else 0)
        for p in range((n + nr - 1) // nr):
            n_cols = np.int64(min(nr, n - p * nr))
            panel, out = np.int64(b + p * panel_bytes), c.ctypes.data + p * nr * size
            first = (p * nr) // MR * MR if triangle == SKIP_UPPER else 0  # the tile holding row p * nr
            for r0 in range(first, m, MR):
                rows = min(MR, m - r0)
                k_lo = min(r0, k_size) if triangle == A_UPPER else 0
                k_hi = min(r0 + rows, k_size) if triangle == A_LOWER else k_size
                if rows_indexed:
                    a_at, a_rows = np.int64(a), np.int64(a_row + r0 * 8)
                else:
                    a_at, a_rows = np.int64(a + (r0 * a_row + k_lo * a_col) * size), np.int64(a_row)
                args = (zero, a_at, a_rows, np.int64(a_col), np.int64(panel + k_lo * nr * size),
                        np.int64(index), np.int64(out + r0 * ldc * size), np.int64(ldc),
                        np.int64(k_hi - k_lo), n_cols, flag)
                if rows == 8:
                    t8(*args)
                elif rows == 7:
                    t7(*args)
                elif rows == 6:
                    t6(*args)
                elif rows == 5:
                    t5(*args)
                elif rows == 4:
                    t4(*args)
                elif rows == 3:
                    t3(*args)
                elif rows == 2:
                    t2(*args)
                else:
                    t1(*args)
    # A name of its own per variant: Numba names a compiled function by its qualified name and a counter
    # of the process that compiled it, and a kernel loaded from the disk cache calls its callees by that
    # name. Variants all called ``_product_of.<locals>.product`` made a cached kernel call whichever one
    # the running process had given the same counter (a segmentation fault).
    product.__name__ = product.__qualname__ = name
    return register_jitable(product)


_product = _product_of(False, False, 2, "product_packed")
_product_indexed = _product_of(True, False, 2, "product_indexed")
_product_rows = _product_of(False, True, 2, "product_rows_indexed")
_product_rows_narrow = _product_of(False, True, 1, "product_rows_indexed_narrow")
_product_gather = _product_of(False, True, 2, "product_gather", cols_indexed=True)


@register_jitable
def gemm(a, packed, c, accumulate, triangle=0):
    """c = a @ b, or c += a @ b with ``accumulate``, for a (M, K), b (K, N) packed by ``pack``, c (M, N) with
    unit-stride rows; one dtype (float32 or float64). The caller checks the shapes. ``triangle`` (for
    square causal attention): ``SKIP_UPPER`` computes c on and below its diagonal at least (the tiles wholly
    above it are left as they were), ``A_LOWER`` or ``A_UPPER`` says a is zero above, or below, its
    diagonal, and reads it only where it is not."""
    size = c.itemsize
    _product(a.ctypes.data, a.strides[0] // size, a.strides[1] // size, a.shape[0], a.shape[1],
             packed.ctypes.data, packed.strides[0], 0, c, accumulate, triangle)


@register_jitable
def gemm_indexed(a, b, index, c):
    """c (M, L) = a (M, K) @ B for B (K, L) whose row k is b[index[k] : index[k] + L] (b flat): an
    implicit GEMM, B never written out (a convolution's columns are shifted planes). A panel reads NR
    values from each row start, so b must hold NR - 1 elements past the last row's end."""
    size = c.itemsize
    _product_indexed(a.ctypes.data, a.strides[0] // size, a.strides[1] // size, a.shape[0], a.shape[1],
                     b.ctypes.data, PANEL_BYTES, index.ctypes.data, c, False, 0)


@register_jitable
def gemm_rows(a, index, k_size, packed, c, accumulate):
    """c (+)= A @ b for A (M, K) whose row m is a[index[m] : index[m] + k_size] (a flat; M = len(index)),
    b packed by ``pack`` in panels of either width (``packed_shape``): the other implicit GEMM, its left
    operand read in place (a convolution's weight gradient: the shifted planes times dy^T)."""
    if packed.shape[2] * packed.itemsize == _VECTOR_BYTES:
        _product_rows_narrow(a.ctypes.data, index.ctypes.data, 1, index.shape[0], k_size,
                             packed.ctypes.data, packed.strides[0], 0, c, accumulate, 0)
    else:
        _product_rows(a.ctypes.data, index.ctypes.data, 1, index.shape[0], k_size,
                      packed.ctypes.data, packed.strides[0], 0, c, accumulate, 0)


@register_jitable
def gemm_gather(a, rows, cols, packed, c):
    """c (M, N) = A @ b for A (M, K) with A[m, k] = a[rows[m] + cols[k]] (a flat; M = len(rows), K =
    len(cols)), b packed by ``pack`` in wide panels: the implicit GEMM with the output positions as rows
    (a convolution's columns transposed, each row one output pixel), for a small image whose pixels fill
    panels badly and whose channels fill them well."""
    _product_gather(a.ctypes.data, rows.ctypes.data, cols.ctypes.data, rows.shape[0], cols.shape[0],
                    packed.ctypes.data, packed.strides[0], 0, c, False, 0)
