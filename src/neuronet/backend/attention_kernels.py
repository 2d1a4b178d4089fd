"""Scaled dot-product attention, one (sample, head) at a time, in one Numba call per block of samples.

For each (sample, head) with q (Tq, hd), k and v (Tk, hd):

    forward:   P = softmax(scale q k^T)  (causal: query i sees keys j <= i)      saved (the layer's workspace;
                                                                   under no_grad one (Tq, Tk) scratch)
               W = P, or P * mask * keep_scale with dropout
               o = W v
    backward:  dv = W^T do,  dW = do v^T (* mask * keep_scale),  dS = scale P (dW - rowsum(dW P)),
               dq = dS k,  dk = dS^T q

Each product is the register-tiled ``packed_gemm.gemm`` with its right operand packed into a small
per-thread buffer (a few KiB): NumPy's stacked ``matmul`` calls OpenBLAS once per matrix, which packs both
operands every time and runs these 64 x 32 x 64 products at ~30 GFLOP/s on one core. Under a causal mask
the products skip what the mask makes zero (``packed_gemm.SKIP_UPPER``, ``A_LOWER``, ``A_UPPER``): about
a quarter of the work at T = 64, nearly half at T = 256. The scores, their softmax and dW live in one
(Tq, Tk) buffer while their head is in cache; no (N, H, Tq, Tk) temporary is needed in backward.

Inside a training step the heads are cold: q, k, v were written by the projection (on both cores) and the
saved probs a whole forward pass earlier, and a head's rows are 128-byte pieces 1.5 KB apart (the layer's
(N*T, 3*dim) projection rows), which the hardware prefetcher follows badly. While one sample's head runs,
the kernels prefetch the same head of the next sample (every operand, the outputs too). Measured
2026-12-07 in the char GPT's step, 2 cores, a 6-sample block's first call against the same call again
(warm): forward 469 -> 406-418 us (warm 337), backward 610 -> 469-475 us (warm 327); reading the sample's
rows in one pass before it instead gave 436-445 and 490-517 (and cost the warm call ~25 us). The step, ten
alternating pairs of processes: 35.1 against 35.8 ms (8 of 10 faster).
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import literal_unroll, types
from numba.extending import intrinsic

from . import kernels
from .llvm_vectors import declare_intrinsic
from .packed_gemm import A_LOWER, A_UPPER, SKIP_UPPER, gemm, pack

jit = numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"}, error_model="numpy")
_LINE_BYTES = 64


@jit
def _dropped(probs, mask, keep_scale, out):
    """out = probs * (keep_scale where mask else 0), (Tq, Tk) arrays."""
    dt = out.dtype.type
    keep, zero = dt(keep_scale), dt(0.0)
    for i in range(probs.shape[0]):
        for j in range(probs.shape[1]):
            out[i, j] = probs[i, j] * (keep if mask[i, j] else zero)


@intrinsic
def _prefetch(typingctx, address):
    """llvm.prefetch (read, keep in all levels) of the cache line at ``address`` (an int)."""
    def codegen(context, builder, signature, args):
        ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = declare_intrinsic(builder.module, "llvm.prefetch.p0", ir.VoidType(), [ptr, i32, i32, i32])
        builder.call(fn, [builder.inttoptr(args[0], ptr), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
    return types.void(types.intp), codegen


@jit
def _prefetch_heads(arrays, b, h):
    """Prefetch the cache lines of x[b, h] (T, D) for each (B, H, T, D) x of the tuple ``arrays``, unless
    (b, h) is past its samples or heads."""
    for x in literal_unroll(arrays):
        if b < x.shape[0] and h < x.shape[1]:  # (not past a (1, 1, Tq, Tk) scratch's one head)
            base = x.ctypes.data + b * x.strides[0] + h * x.strides[1]
            for t in range(x.shape[2]):
                row = base + t * x.strides[2]
                for offset in range(0, x.shape[3] * x.itemsize, _LINE_BYTES):
                    _prefetch(row + offset)


@jit
def attention_forward(q, k, v, probs, out, causal, scale, mask, keep_scale, keys_packed, rows_packed,
                      weights, row_max):
    """probs[b, h] = softmax(scale q k^T) and out[b, h] = W v for every (b, h) of q (B, H, Tq, hd), k, v
    (B, H, Tk, hd), probs (B, H, Tq, Tk) or (1, 1, Tq, Tk) (one buffer every head's probabilities pass
    through, where nothing is kept for a backward), out (B, H, Tq, hd) (rows unit-stride). ``mask``
    (B, H, Tq, Tk) bool with ``dropout``, else an empty array; ``keys_packed`` (packed_shape((hd, Tk))),
    ``rows_packed`` (packed_shape((K, hd)), K >= Tk), ``weights`` (Tq, Tk, only with dropout) and
    ``row_max`` (Tq,) are scratch."""
    tq, tk = q.shape[2], k.shape[2]
    dropout = mask.size > 0
    operands = (q, k, v, probs, out)
    for h in range(q.shape[1]):  # the first sample's now, then each next sample's a sample ahead
        _prefetch_heads(operands, 0, h)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            _prefetch_heads(operands, b + 1, h)
            p = probs[b % probs.shape[0], h % probs.shape[1]]
            pack(k[b, h].T, keys_packed)
            gemm(q[b, h], keys_packed, p, False, SKIP_UPPER if causal else 0)
            kernels.softmax_rows(p, p, False, scale, tq if causal else 0, row_max)  # (0 above the diagonal)
            w = p
            if dropout:
                _dropped(p, mask[b, h], keep_scale, weights)
                w = weights
            pack(v[b, h], rows_packed[:, :tk])
            gemm(w, rows_packed[:, :tk], out[b, h], False, A_LOWER if causal else 0)


@jit
def attention_backward(do, probs, q, k, v, dq, dk, dv, causal, scale, mask, keep_scale, keys_packed,
                       rows_packed, grad):
    """dq, dk, dv (as q, k, v; rows unit-stride) of ``attention_forward`` from do (as its out) and the
    saved probs. Scratch: ``keys_packed`` (packed_shape((hd, Tk))), ``rows_packed`` (packed_shape((max(Tq,
    Tk), hd))), ``grad`` (Tq, Tk)."""
    tq, tk = q.shape[2], k.shape[2]
    dropout = mask.size > 0
    operands = (q, k, v, do, probs, dq, dk, dv)
    for h in range(q.shape[1]):  # as in forward
        _prefetch_heads(operands, 0, h)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            _prefetch_heads(operands, b + 1, h)
            p, g = probs[b, h], grad
            w = p
            if dropout:  # the dropped-out weights again, in the buffer dW takes next
                _dropped(p, mask[b, h], keep_scale, g)
                w = g
            pack(do[b, h], rows_packed[:, :tq])
            gemm(w.T, rows_packed[:, :tq], dv[b, h], False, A_UPPER if causal else 0)
            pack(v[b, h].T, keys_packed)
            gemm(do[b, h], keys_packed, g, False, SKIP_UPPER if causal else 0)
            if dropout:
                _dropped(g, mask[b, h], keep_scale, g)
            kernels.softmax_rows_backward(g, p, g, False, scale, tq if causal else 0)  # (0 above the diag.)
            pack(k[b, h], rows_packed[:, :tk])
            gemm(g, rows_packed[:, :tk], dq[b, h], False, A_LOWER if causal else 0)
            pack(q[b, h], rows_packed[:, :tq])
            gemm(g.T, rows_packed[:, :tq], dk[b, h], False, A_UPPER if causal else 0)
