"""A float32 row split into its even and odd elements, and merged back, as vector shuffles.

A stride-2 convolution lays each image row into two phase planes (conv_layout): the columns w with
(left + w) even go to one, the others to the other; its dx merges them back. Numba's loop over a
stride-2 read runs an element at a time (32 channels of 32x32, one image: 46 us to lay out, 41 us to
merge); here each 32 elements are two masked vector loads, two shuffles and two masked stores, and a row
of any length ends under a mask, nothing scalar.

``split_pairs(source, into, even, odd)``: into[even + q] = source[2q], into[odd + q] = source[2q + 1].
``merge_pairs(source, even, odd, into)``: the inverse, into[2q] = source[even + q], into[2q + 1] =
source[odd + q]. ``into`` / ``source`` (flat, unit-stride) hold both halves at the element offsets given.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .llvm_vectors import I32, I64, LANES, Float32Vectors

jit = numba.njit(cache=True, nogil=True)

_EVENS = ir.Constant(ir.VectorType(I32, LANES), [2 * i for i in range(LANES)])
_ODDS = ir.Constant(ir.VectorType(I32, LANES), [2 * i + 1 for i in range(LANES)])
_FIRST = ir.Constant(ir.VectorType(I32, LANES), [i // 2 + (LANES if i % 2 else 0) for i in range(LANES)])
_SECOND = ir.Constant(ir.VectorType(I32, LANES),
                      [LANES // 2 + i // 2 + (LANES if i % 2 else 0) for i in range(LANES)])
_BYTES = 4 * LANES  # one vector of float32


def _halves(b, vectors, n):
    """The lane masks of the evens (2i < n) and the odds (2i + 1 < n) of 2*LANES elements, n left."""
    zero, one = ir.Constant(I64, 0), ir.Constant(I64, 1)
    return (vectors.lanes_below(zero, b.ashr(b.add(n, one), one)), vectors.lanes_below(zero, b.ashr(n, one)))


@intrinsic
def _split_block(typingctx, source, n, even, odd):
    """The first min(n, 32) float32 at address ``source``: the evens to address ``even``, the odds to
    ``odd``."""
    def codegen(context, builder, signature, args):
        source_, n_, even_, odd_ = args
        b, vectors = builder, Float32Vectors(builder)
        zero, lanes = ir.Constant(I64, 0), ir.Constant(I64, LANES)
        low = vectors.load(source_, vectors.lanes_below(zero, n_))
        high = vectors.load(b.add(source_, ir.Constant(I64, _BYTES)), vectors.lanes_below(lanes, n_))
        evens, odds = _halves(b, vectors, n_)
        vectors.store(b.shuffle_vector(low, high, _EVENS), even_, evens)
        vectors.store(b.shuffle_vector(low, high, _ODDS), odd_, odds)
        return context.get_dummy_value()
    return types.void(types.intp, types.intp, types.intp, types.intp), codegen


@intrinsic
def _merge_block(typingctx, even, odd, n, into):
    """The inverse of ``_split_block``: min(n, 32) float32 to address ``into``, interleaved from the evens
    at ``even`` and the odds at ``odd``."""
    def codegen(context, builder, signature, args):
        even_, odd_, n_, into_ = args
        b, vectors = builder, Float32Vectors(builder)
        zero, lanes = ir.Constant(I64, 0), ir.Constant(I64, LANES)
        evens, odds = _halves(b, vectors, n_)
        e, o = vectors.load(even_, evens), vectors.load(odd_, odds)
        vectors.store(b.shuffle_vector(e, o, _FIRST), into_, vectors.lanes_below(zero, n_))
        vectors.store(b.shuffle_vector(e, o, _SECOND), b.add(into_, ir.Constant(I64, _BYTES)),
                      vectors.lanes_below(lanes, n_))
        return context.get_dummy_value()
    return types.void(types.intp, types.intp, types.intp, types.intp), codegen


@jit
def split_pairs(source, into, even, odd):
    """into[even + q] = source[2q], into[odd + q] = source[2q + 1] (float32, both unit-stride)."""
    n, to = source.shape[0], into.ctypes.data
    for s in range(0, n, 2 * LANES):
        _split_block(source.ctypes.data + 4 * s, n - s, to + 4 * (even + s // 2), to + 4 * (odd + s // 2))


@jit
def merge_pairs(source, even, odd, into):
    """into[2q] = source[even + q], into[2q + 1] = source[odd + q] (float32, both unit-stride)."""
    n, at = into.shape[0], source.ctypes.data
    for s in range(0, n, 2 * LANES):
        _merge_block(at + 4 * (even + s // 2), at + 4 * (odd + s // 2), n - s, into.ctypes.data + 4 * s)
