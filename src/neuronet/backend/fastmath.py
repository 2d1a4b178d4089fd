"""exp, erf, tanh and sigmoid for Numba kernels: fast float32 versions that vectorise, libm for float64.

libm's ``expf``/``erff``/``tanhf`` are scalar calls that stop LLVM from vectorising a loop (~3-10 ns an
element here, no SVML). The float32 versions below are branch-free float32 arithmetic (no promotion to
float64 through Python-float constants), accurate to float32 rounding, and run 4-8x faster inside a
loop. Call ``exp(x)``, ``erf(x)``, ``tanh(x)`` or ``sigmoid(x)`` from a jitted kernel: the argument's
type picks the version at compile time, so float64 gradient checks still see the exact functions.

Numba's disk cache tracks only the file of the kernel that is cached, so importing this module drops
the package's cached kernels whenever this file has changed (``jit_cache``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from .jit_cache import announce_if_cold, drop_stale_caches

# the files of compiled code (jitted functions, intrinsics, their IR helpers) that cached kernels in other
# files import and inline (tests/backend/test_jit_cache.py checks the list against the imports)
KERNEL_HELPERS = ("fastmath.py", "llvm_vectors.py", "packed_gemm.py", "vector_rows.py", "pair_rows.py",
                  "kernels.py")
drop_stale_caches(Path(__file__).parent, list(KERNEL_HELPERS))
announce_if_cold(Path(__file__).parent)

f32 = np.float32
_JIT = {"fastmath": {"contract"}, "error_model": "numpy"}  # contract: fuse a*b+c into one FMA


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (how 2**n is built without a call)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def prefer_512_bit_vectors(typingctx):
    """Call first in a kernel whose loops are arithmetic-bound (exp, erf, tanh): LLVM then vectorises
    that kernel's loops 16 floats wide instead of 8. This CPU target prefers 256-bit vectors by default
    (wide ones used to lower the clock); the attribute applies to the one function that calls this,
    where a process-wide ``NUMBA_CPU_FEATURES`` would change every kernel. A CPU without AVX-512
    ignores it. GELU's backward over 196,608 floats, one thread: 136 -> 97 us, the same bits."""
    def codegen(context, builder, signature, args):
        # llvmlite's attribute set accepts only flag attributes; a key="value" one is written as it is
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return types.none(), codegen


# exp32's constants (also vector_rows' 16-lane exponential): the clamp, log2(e), ln 2 as a float32 high
# part and the rest (Cody-Waite), and Cephes' polynomial for e**r - 1 - r, highest degree first.
EXP32_RANGE = (-87.0, 88.0)
LOG2_E = 1.4426950408889634
LN2_HIGH, LN2_LOW = 0.693359375, -2.12194440e-4
EXP32_POLYNOMIAL = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                    5.0000001201e-1)


def exp32(x):
    """e**x, relative error < 1e-7: x = n ln2 + r (Cody-Waite), e**r by Cephes' degree-7 polynomial,
    2**n from its exponent bits. x is clamped to [-87, 88], where float32 stays normal and finite."""
    x = min(max(x, f32(EXP32_RANGE[0])), f32(EXP32_RANGE[1]))
    n = np.floor(x * f32(LOG2_E) + f32(0.5))
    r = x - n * f32(LN2_HIGH) - n * f32(LN2_LOW)
    p = f32(EXP32_POLYNOMIAL[0])
    p = p * r + f32(EXP32_POLYNOMIAL[1])
    p = p * r + f32(EXP32_POLYNOMIAL[2])
    p = p * r + f32(EXP32_POLYNOMIAL[3])
    p = p * r + f32(EXP32_POLYNOMIAL[4])
    p = p * r + f32(EXP32_POLYNOMIAL[5])
    p = p * r * r + r + f32(1.0)
    return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


def erf32(x):
    """erf, max abs error 4e-7: Eigen's odd/even rational fit on [-4, 4], +-1 beyond."""
    x = min(max(x, -f32(4.0)), f32(4.0))
    x2 = x * x
    p = -f32(2.72614225801306e-10)
    p = p * x2 + f32(2.77068142495902e-08)
    p = p * x2 - f32(2.10102402082508e-06)
    p = p * x2 - f32(5.69250639462346e-05)
    p = p * x2 - f32(7.34990630326855e-04)
    p = p * x2 - f32(2.95459980854025e-03)
    p = p * x2 - f32(1.60960333262415e-02)
    q = -f32(1.45660718464996e-05)
    q = q * x2 - f32(2.13374055278905e-04)
    q = q * x2 - f32(1.68282697438203e-03)
    q = q * x2 - f32(7.37332916720468e-03)
    q = q * x2 - f32(1.42647390514189e-02)
    return x * p / q


def tanh32(x):
    """tanh, max abs error 4e-7: Eigen's ``ptanh_float`` rational fit on |x| < 7.9 (0.99999976 at the
    clamp), and exactly +-1 from |x| = 9.01 on, where float32 tanh rounds to +-1 (so 1 - tanh**2 is 0
    there, as in PyTorch)."""
    xc = min(max(x, -f32(7.90531110763549805)), f32(7.90531110763549805))
    x2 = xc * xc
    p = x2 * f32(-2.76076847742355e-16) + f32(2.00018790482477e-13)
    p = p * x2 + f32(-8.60467152213735e-11)
    p = p * x2 + f32(5.12229709037114e-08)
    p = p * x2 + f32(1.48572235717979e-05)
    p = p * x2 + f32(6.37261928875436e-04)
    p = p * x2 + f32(4.89352455891786e-03)
    q = x2 * f32(1.19825839466702e-06) + f32(1.18534705686654e-04)
    q = q * x2 + f32(2.26843463243900e-03)
    q = q * x2 + f32(4.89352518554385e-03)
    saturated = abs(x) >= f32(9.01)  # an arithmetic select: a conditional expression trips Numba's inliner
    return (not saturated) * (p * xc / q) + saturated * math.copysign(f32(1.0), x)


def sigmoid32(x):
    """1 / (1 + e**-x) as 0.5 tanh(x / 2) + 0.5: no division by a number that can overflow."""
    return f32(0.5) * tanh(f32(0.5) * x) + f32(0.5)


def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def exp(x):
    return math.exp(x)


def erf(x):
    return math.erf(x)


def tanh(x):
    return math.tanh(x)


def sigmoid(x):
    return _sigmoid(x)


def _dispatch(generic, fast32, exact):
    """In jitted code ``generic(x)`` is ``fast32`` for a float32 x and ``exact`` (libm) otherwise."""
    @overload(generic, jit_options=_JIT, inline="always")
    def _select(x):
        return fast32 if x == types.float32 else (lambda x: exact(x))


for _generic, _fast32, _exact in ((exp, exp32, math.exp), (erf, erf32, math.erf), (tanh, tanh32, math.tanh),
                                  (sigmoid, sigmoid32, numba.njit(_sigmoid))):
    _dispatch(_generic, _fast32, _exact)
