"""OpenBLAS's GEMM callable from Numba kernels, so that a recurrent time loop can run whole in one kernel.

NumPy's bundled OpenBLAS (the library ``blas_threads`` finds) exports ``cblas_sgemm``/``cblas_dgemm``
with 64-bit integers. A Numba kernel cannot hold a ctypes function and still be cached on disk, so the
kernel takes the function's address as an integer argument (``gemm_address``) and ``gemm`` calls it
through an LLVM intrinsic: c = a @ b for C-contiguous row-major matrices, no GIL held.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, register_jitable

from . import blas_threads

_ROW_MAJOR, _NO_TRANS = 101, 111


@functools.cache
def gemm_address(dtype) -> int:
    """The address of OpenBLAS's ``cblas_?gemm`` for float32/float64 ``dtype``, or 0 where there is none."""
    lib = blas_threads._openblas_library()
    kind = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(np.dtype(dtype))
    if lib is None or kind is None:
        return 0
    for name in (f"scipy_cblas_{kind}gemm64_", f"cblas_{kind}gemm64_"):
        fn = getattr(lib[0], name, None)
        if fn is not None:
            return ctypes.cast(fn, ctypes.c_void_p).value or 0
    return 0


@intrinsic
def _cblas_gemm(typingctx, address, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """cblas_?gemm(RowMajor, NoTrans, NoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) at ``address``
    (sizes int64; a, b, c: data addresses; alpha, beta in the matrices' float type)."""
    sig = types.void(address, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        real = context.get_value_type(signature.args[4])
        ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real,
                                               ptr, i64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        m_, n_, k_, alpha_, a_, lda_, b_, ldb_, beta_, c_, ldc_ = args[1:]
        order = [ir.Constant(i32, flag) for flag in (_ROW_MAJOR, _NO_TRANS, _NO_TRANS)]
        a_, b_, c_ = (builder.inttoptr(address, ptr) for address in (a_, b_, c_))
        builder.call(fn, [*order, m_, n_, k_, alpha_, a_, lda_, b_, ldb_, beta_, c_, ldc_])
        return context.get_dummy_value()
    return sig, codegen


@register_jitable
def gemm(address, a, b, c):
    """c = a @ b for C-contiguous 2-D arrays of one float dtype (the caller checks shapes and layout)."""
    one, zero = c.dtype.type(1.0), c.dtype.type(0.0)
    _cblas_gemm(address, np.int64(a.shape[0]), np.int64(b.shape[1]), np.int64(a.shape[1]), one, a.ctypes.data,
                np.int64(a.shape[1]), b.ctypes.data, np.int64(b.shape[1]), zero, c.ctypes.data,
                np.int64(c.shape[1]))
