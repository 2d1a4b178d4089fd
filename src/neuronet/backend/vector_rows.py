"""Softmax rows as explicit 16-lane vector code with masked tails, for float32 rows of any length.

LLVM vectorises a Numba loop over a row 8 floats wide, unrolled 4 times, and finishes it with a scalar
loop of up to 31 elements. A causal attention row of 64 scores sees 1..64 of them (33 on average), so
most of its exponentials ran in that scalar loop: the char GPT's 24 (64, 64) heads of a 6-sample block
took 74 us in ``kernels.softmax_rows``, as long as the same heads without the mask. Here each pass over a
row reads and writes whole vectors of 16 under a mask of the columns it covers (``llvm.masked.load`` /
``store``), so a row of n columns costs ceil(n / 16) vector steps and nothing scalar: 42 us.

``row_max(z, seen)``: max(z[:seen]). ``softmax_row(z, out, seen, cols, scale, high)``: out[:seen] =
softmax(scale z[:seen]) given high = max(z[:seen]), out[seen:cols] = 0; ``log_softmax_row`` the same
with log_softmax (the char GPT's loss, 768 rows of 65: 43 -> 39 us). Arguments are addresses of
float32 elements (out may be z); the exponential is ``fastmath.exp32``'s, step for step. The maxima
come first, in a sweep of their own (``kernels.softmax_rows``): a row's maximum, exponentials, sum and
division in one call wait on each other (71 against 42 us).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import fastmath as fm
from .llvm_vectors import F32, I32, I64, LANES, VEC, Float32Vectors, broadcast, declare_intrinsic, splat


class _Row(Float32Vectors):
    """IR helpers over one row: masked vector loads and stores at column ``c`` under
    ``lanes_below(c, n)``."""

    def fn(self, name: str, n_args: int = 1) -> ir.Function:
        return declare_intrinsic(self.b.module, f"llvm.{name}.v16f32", VEC, [VEC] * n_args)

    def load(self, address, c, mask, fill: float):
        return super().load(self._column(address, c), mask, fill)

    def store(self, value, address, c, mask) -> None:
        super().store(value, self._column(address, c), mask)

    def _column(self, address, c):
        """The byte address of float32 column c of the row at ``address``."""
        return self.b.add(address, self.b.mul(c, ir.Constant(I64, 4)))

    def chunks(self, start, end):
        """A loop over the columns c = start, start + 16, ... < end (``with``: c)."""
        return _Chunks(self.b, start, end)

    def max(self, x, y):
        """x if x > y else y, lane by lane (x86's max: a NaN may be dropped)."""
        return self.b.select(self.b.fcmp_ordered(">", x, y), x, y)

    def exp(self, x):
        """e**x as ``fastmath.exp32``: x clamped, x = n ln2 + r, Cephes' polynomial, times 2**n."""
        b, fma = self.b, self.fn("fma", 3)
        low, high = (splat(v) for v in fm.EXP32_RANGE)  # (selects keep a NaN; minnum and maxnum drop it)
        x = b.select(b.fcmp_ordered("<", x, low), low, x)
        x = b.select(b.fcmp_ordered(">", x, high), high, x)
        n = b.call(self.fn("floor"), [b.fadd(b.fmul(x, splat(fm.LOG2_E)), splat(0.5))])
        r = b.fsub(b.fsub(x, b.fmul(n, splat(fm.LN2_HIGH))), b.fmul(n, splat(fm.LN2_LOW)))
        p = splat(fm.EXP32_POLYNOMIAL[0])
        for coefficient in fm.EXP32_POLYNOMIAL[1:]:
            p = b.call(fma, [p, r, splat(coefficient)])
        p = b.fadd(b.call(fma, [b.fmul(p, r), r, r]), splat(1.0))
        ints = ir.VectorType(I32, LANES)
        exponent = b.add(b.fptosi(n, ints), ir.Constant(ints, 127))
        return b.fmul(p, b.bitcast(b.shl(exponent, ir.Constant(ints, 23)), VEC))  # p 2**n

    def sum(self, vector):
        """The lanes' sum, in any order."""
        fn = declare_intrinsic(self.b.module, "llvm.vector.reduce.fadd.v16f32", F32, [F32, VEC])
        return self.b.call(fn, [ir.Constant(F32, 0.0), vector], fastmath=("reassoc",))


class _Chunks:
    def __init__(self, builder, start, end):
        self.b, self.start = builder, start
        self.count = _vectors_over(builder, builder.sub(end, start))

    def __enter__(self):
        self._range = cgutils.for_range(self.b, self.count)
        loop = self._range.__enter__()
        return self.b.add(self.start, self.b.mul(loop.index, ir.Constant(I64, LANES)))

    def __exit__(self, *exc):
        return self._range.__exit__(*exc)


def _vectors_over(builder, n):
    """ceil(n / LANES): the vectors that cover n columns (i64 values)."""
    return builder.sdiv(builder.add(n, ir.Constant(I64, LANES - 1)), ir.Constant(I64, LANES))


@intrinsic
def row_max(typingctx, z, seen):
    """max(z[:seen]) (z: a float32 address, seen >= 1)."""
    def codegen(context, builder, signature, args):
        z_, seen_ = args
        row, b = _Row(builder), builder
        high = cgutils.alloca_once_value(b, splat(float("-inf")))
        with row.chunks(ir.Constant(I64, 0), seen_) as c:
            b.store(row.max(b.load(high), row.load(z_, c, row.lanes_below(c, seen_), float("-inf"))), high)
        vector, width = b.load(high), LANES
        while width > 1:  # halves folded onto each other: 16 -> 1 lanes in 4 steps
            width //= 2
            order = ir.Constant(ir.VectorType(I32, LANES), [(i + width) % LANES for i in range(LANES)])
            vector = row.max(vector, b.shuffle_vector(vector, vector, order))
        return b.extract_element(vector, ir.Constant(I32, 0))
    return types.float32(types.intp, types.intp), codegen


def _softmax_codegen(log: bool):
    """The code of ``softmax_row`` (``log``: ``log_softmax_row``)."""
    def codegen(context, builder, signature, args):
        z_, out_, seen_, cols_, scale_, high_ = args
        row, b, zero = _Row(builder), builder, ir.Constant(I64, 0)
        m, s = broadcast(b, high_, VEC), broadcast(b, scale_, VEC)
        total = cgutils.alloca_once_value(b, splat(0.0))
        with row.chunks(zero, seen_) as c:  # e = exp(scale (z - max)), its sum; softmax keeps e in out
            mask = row.lanes_below(c, seen_)
            e = b.select(mask, row.exp(b.fmul(b.fsub(row.load(z_, c, mask, 0.0), m), s)), splat(0.0))
            if not log:
                row.store(e, out_, c, row.lanes_below(c, cols_))  # zeros past seen within the vector
            b.store(b.fadd(b.load(total), e), total)
        total = row.sum(b.load(total))
        if log:  # scale (z - max) - log(sum e), zeros past seen within the vector (as PyTorch: scale z -
            # (scale max + log(sum e)) cancels in float32 where z is large)
            log_of = declare_intrinsic(b.module, "llvm.log.f32", F32, [F32])
            log_total = broadcast(b, b.call(log_of, [total]), VEC)
            with row.chunks(zero, seen_) as c:
                mask = row.lanes_below(c, seen_)
                value = b.fsub(b.fmul(b.fsub(row.load(z_, c, mask, 0.0), m), s), log_total)
                row.store(b.select(mask, value, splat(0.0)), out_, c, row.lanes_below(c, cols_))
        else:  # e / sum e
            inv = broadcast(b, b.fdiv(ir.Constant(F32, 1.0), total), VEC)
            with row.chunks(zero, seen_) as c:
                mask = row.lanes_below(c, seen_)
                row.store(b.fmul(row.load(out_, c, mask, 0.0), inv), out_, c, mask)
        covered = b.mul(_vectors_over(b, seen_), ir.Constant(I64, LANES))
        with row.chunks(covered, cols_) as c:  # the columns past the vectors the passes above wrote
            row.store(splat(0.0), out_, c, row.lanes_below(c, cols_))
        return context.get_dummy_value()
    return codegen


_ROW_SIGNATURE = types.void(types.intp, types.intp, types.intp, types.intp, types.float32, types.float32)


@intrinsic
def softmax_row(typingctx, z, out, seen, cols, scale, high):
    """out[:seen] = softmax(scale z[:seen]) and out[seen:cols] = 0 (z, out: float32 addresses), ``high``
    being max(z[:seen]) (``row_max``)."""
    return _ROW_SIGNATURE, _softmax_codegen(log=False)


@intrinsic
def log_softmax_row(typingctx, z, out, seen, cols, scale, high):
    """out[:seen] = log_softmax(scale z[:seen]) and out[seen:cols] = 0, as ``softmax_row``."""
    return _ROW_SIGNATURE, _softmax_codegen(log=True)
