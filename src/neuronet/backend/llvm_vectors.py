"""LLVM IR helpers for the Numba intrinsics that write their vectors themselves.

``packed_gemm`` (the GEMM tile, the in-register transpose of its packing) and ``vector_rows`` (softmax
rows) emit IR through ``numba.extending.intrinsic``; this module holds what they share: declaring an
LLVM intrinsic once per module, splatting a scalar, and ``Float32Vectors``, masked loads and stores of 16
float32 lanes at byte addresses (``llvm.masked.load`` / ``store``: a lane outside the mask is neither read
nor written, so a vector may run past the end of a row or an array).
"""

from __future__ import annotations

from llvmlite import ir

LANES = 16  # float32 lanes of an AVX-512 register; LLVM splits the vectors where registers are narrower
F32 = ir.FloatType()
VEC = ir.VectorType(F32, LANES)
I32, I64 = ir.IntType(32), ir.IntType(64)
_ALIGN = ir.Constant(I32, 4)


def declare_intrinsic(module, name: str, result, params: list) -> ir.Function:
    """The LLVM intrinsic ``name`` in ``module``, declared once."""
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, ir.FunctionType(result, params), name)


def broadcast(builder, value, vector_type):
    """``value`` in every lane of ``vector_type``."""
    undef = ir.Constant(vector_type, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(I32, 0))
    lanes = vector_type.count
    return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def splat(value: float) -> ir.Constant:
    """A float32 constant in every lane."""
    return ir.Constant(VEC, [value] * LANES)


class Float32Vectors:
    """Masked loads and stores of LANES float32 values at an i64 byte address."""

    def __init__(self, builder: ir.IRBuilder):
        self.b = builder
        module, vptr, mask_t = builder.module, VEC.as_pointer(), ir.VectorType(ir.IntType(1), LANES)
        self._load = declare_intrinsic(module, "llvm.masked.load.v16f32.p0", VEC, [vptr, I32, mask_t, VEC])
        self._store = declare_intrinsic(module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                                        [VEC, vptr, I32, mask_t])
        self._lanes = ir.Constant(ir.VectorType(I64, LANES), list(range(LANES)))

    def lanes_below(self, start, n):
        """The mask of lanes i with start + i < n (i64 values)."""
        b = self.b
        return b.icmp_signed("<", b.add(broadcast(b, start, self._lanes.type), self._lanes),
                             broadcast(b, n, self._lanes.type))

    def load(self, address, mask, fill: float = 0.0):
        """The lanes under ``mask`` from ``address``, ``fill`` in the others."""
        return self.b.call(self._load, [self._pointer(address), _ALIGN, mask, splat(fill)])

    def store(self, value, address, mask) -> None:
        self.b.call(self._store, [value, self._pointer(address), _ALIGN, mask])

    def _pointer(self, address):
        return self.b.inttoptr(address, VEC.as_pointer())
