"""Fused Numba kernels for an LSTM or GRU cell: one step's gate nonlinearities in one pass, and a row
block's whole time loop (its per-step products on ``packed_gemm``) in one call.

Arrays are 2-D and C-contiguous: gate blocks ``(N, G*H)`` in PyTorch's order (LSTM i, f, g, o;
GRU r, z, n), states ``(N, H)``, biases ``(G*H,)``. tanh and sigmoid come from ``fastmath``: on
float32 data branch-free approximations that LLVM vectorises (about 5x faster than libm's scalar
calls), on float64 data the exact functions, so float64 gradient checks see the true derivatives.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from . import fastmath as fm
from .packed_gemm import gemm, pack

# error_model="numpy": no ZeroDivisionError branch in the division, which would stop vectorisation.
jit = numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")

_ONE = np.float32(1.0)  # exact in float32 and float64: keeps the float32 kernels in float32


def gate_scale(hidden: int, dtype) -> np.ndarray:
    """The (4H,) table ``lstm_cell_forward`` reads: a = 0.5 for the gates i, f, o and 1 for g."""
    return _gate_scale(hidden, np.dtype(dtype).str)


@functools.lru_cache(maxsize=16)
def _gate_scale(hidden: int, dtype: str) -> np.ndarray:
    scale = np.full(4 * hidden, 0.5, dtype)
    scale[2 * hidden:3 * hidden] = 1.0
    scale.flags.writeable = False
    return scale


@jit
def lstm_cell_forward(gates, gh, bias, scale, add_gates, c_prev, c, tanh_c, h):
    """gates <- act(gates + gh + bias) (i, f, g, o), or act(gh + bias) without ``add_gates`` (gh then
    holds x W_ih^T + h_prev W_hh^T); c = f c_prev + i g; h = o tanh(c).

    One vectorised pass over all four gates: sigmoid(v) = 0.5 tanh(v / 2) + 0.5, so every gate is
    a tanh(a v) + (1 - a) with a = scale[k] (``gate_scale``: 1 for g, 0.5 for i, f, o). Read from a table
    rather than computed from k: 0.43 against 0.62 ns a gate on one core (the comparisons of k, in 64-bit
    lanes, cost more than the load).
    """
    fm.prefer_512_bit_vectors()
    n_rows, hidden = c.shape
    one = gates.dtype.type(1.0)
    for r in range(n_rows):
        row, gh_row = gates[r], gh[r]
        if add_gates:
            for k in range(4 * hidden):
                a = scale[k]
                row[k] = a * fm.tanh(a * (row[k] + gh_row[k] + bias[k])) + (one - a)
        else:
            for k in range(4 * hidden):
                a = scale[k]
                row[k] = a * fm.tanh(a * (gh_row[k] + bias[k])) + (one - a)
        for j in range(hidden):
            cj = row[hidden + j] * c_prev[r, j] + row[j] * row[2 * hidden + j]
            c[r, j] = cj
            t = fm.tanh(cj)
            tanh_c[r, j] = t
            h[r, j] = row[3 * hidden + j] * t


@jit
def lstm_cell_backward(gates, c_prev, tanh_c, dh, dc, dgates):
    """dgates = dL/d(pre-activations); dc: dL/dc_t from step t+1 in, dL/dc_{t-1} out."""
    n_rows, hidden = dh.shape
    for r in range(n_rows):
        for j in range(hidden):
            i = gates[r, j]
            f = gates[r, hidden + j]
            g = gates[r, 2 * hidden + j]
            o = gates[r, 3 * hidden + j]
            t = tanh_c[r, j]
            d = dh[r, j]
            dct = dc[r, j] + d * o * (_ONE - t * t)
            dgates[r, j] = dct * g * i * (_ONE - i)
            dgates[r, hidden + j] = dct * c_prev[r, j] * f * (_ONE - f)
            dgates[r, 2 * hidden + j] = dct * i * (_ONE - g * g)
            dgates[r, 3 * hidden + j] = d * t * o * (_ONE - o)
            dc[r, j] = dct * f


@jit
def lstm_forward_steps(seq, w_ih_t, gates, h, c, tanh_c, w_hh_t, bias, scale, gh, reverse, r0, r1):
    """Ops.lstm_steps for rows r0:r1 in one kernel: each step's x_t W_ih^T + h_prev W_hh^T into gh by the
    register-blocked GEMM from both weights packed once (``packed_gemm``), then the cell; no Python and no
    GIL between the steps. The input's product per step rather than one product over all steps before the
    loop: its result is still in cache when the cell reads it, and the block's rows run on their own core
    (one thread, a block of 32 rows: 1.15-1.21 against 1.40-1.47 ms with the product before).
    (``a[t, r0:r1]`` of a C-contiguous array keeps a C-contiguous type, so the cell's loops vectorise.)"""
    for s in range(gates.shape[0]):
        t, prev, new = _forward_step(gates.shape[0], reverse, s)
        gemm(seq[t, r0:r1], w_ih_t, gh, False)
        gemm(h[prev, r0:r1], w_hh_t, gh, True)
        lstm_cell_forward(gates[t, r0:r1], gh, bias, scale, False, c[prev, r0:r1], c[new, r0:r1],
                          tanh_c[t, r0:r1], h[new, r0:r1])


@jit
def lstm_backward_steps(seq, h, gates, c, tanh_c, dh, dc, dgates, w_hh, dout, dw_ih, dw_hh, dbias, packed_x,
                        packed_h, reverse, r0, r1):
    """Ops.lstm_steps_backward for rows r0:r1 in one kernel; ``dout`` has no steps (shape (0, ., .))
    when absent. Unless dw_ih has no rows (a frozen layer), each step adds its share of the weight
    gradients while dgates[t] is in cache: dW_ih += dgates[t]^T x_t and dW_hh += dgates[t]^T h_prev (x_t
    and h_prev packed into ``packed_x``, ``packed_h``), dbias += the column sums of dgates[t]. One thread,
    64 rows: 2.3-2.4 ms for both products against OpenBLAS's 2.5-2.6 over all steps after the loop; and
    each block on its own core, where OpenBLAS split the products over both after the loop."""
    dh_r, dc_r = dh[r0:r1], dc[r0:r1]
    for s in range(gates.shape[0]):
        t, prev, last = _backward_step(gates.shape[0], reverse, s)
        if dout.shape[0]:
            _add_into(dh_r, dout[t, r0:r1])
        dg = dgates[t, r0:r1]
        lstm_cell_backward(gates[t, r0:r1], c[prev, r0:r1], tanh_c[t, r0:r1], dh_r, dc_r, dg)
        if dw_ih.shape[0]:
            _add_step_weight_grads(dg, dg, seq[t, r0:r1], h[prev, r0:r1], packed_x, packed_h, dw_ih, dw_hh,
                                   dbias, dbias[:0])
        if not last:
            gemm(dg, w_hh, dh_r, False)


@jit
def gru_forward_steps(seq, w_ih_t, gates, h, hn, w_hh_t, b_ih, b_hh, gh, reverse, r0, r1):
    """Ops.gru_steps for rows r0:r1 in one kernel (as lstm_forward_steps; x_t W_ih^T goes into gates[t],
    which the cell reads beside gh: the GRU's n gate needs the two apart)."""
    for s in range(gates.shape[0]):
        t, prev, new = _forward_step(gates.shape[0], reverse, s)
        gemm(seq[t, r0:r1], w_ih_t, gates[t, r0:r1], False)
        gemm(h[prev, r0:r1], w_hh_t, gh, False)
        gru_cell_forward(gates[t, r0:r1], gh, b_ih, b_hh, h[prev, r0:r1], hn[t, r0:r1], h[new, r0:r1])


@jit
def gru_backward_steps(seq, h, gates, hn, dh, dgx, dgh, w_hh, dout, dh_direct, dw_ih, dw_hh, db_ih, db_hh,
                       packed_x, packed_h, reverse, r0, r1):
    """Ops.gru_steps_backward for rows r0:r1 in one kernel (as lstm_backward_steps); ``dout`` (0, ., .)
    when absent."""
    dh_r = dh[r0:r1]
    for s in range(gates.shape[0]):
        t, prev, last = _backward_step(gates.shape[0], reverse, s)
        if dout.shape[0]:
            _add_into(dh_r, dout[t, r0:r1])
        gru_cell_backward(gates[t, r0:r1], hn[t, r0:r1], h[prev, r0:r1], dh_r, dgx[t, r0:r1],
                          dgh[t, r0:r1], dh_direct)
        if dw_ih.shape[0]:
            _add_step_weight_grads(dgx[t, r0:r1], dgh[t, r0:r1], seq[t, r0:r1], h[prev, r0:r1], packed_x,
                                   packed_h, dw_ih, dw_hh, db_ih, db_hh)
        if not last:
            gemm(dgh[t, r0:r1], w_hh, dh_r, False)
            _add_into(dh_r, dh_direct)


@jit
def _add_step_weight_grads(d_in, d_rec, x, h_prev, packed_x, packed_h, dw_ih, dw_hh, db_ih, db_hh):
    """One step's share of a recurrent layer's weight gradients, for its block of rows: dw_ih += d_in^T x,
    dw_hh += d_rec^T h_prev (x and h_prev packed first; K = the block's rows, d^T read in place), db_ih +=
    d_in and db_hh += d_rec summed over the rows (none into a db_hh of no elements)."""
    pack(x, packed_x)
    gemm(d_in.T, packed_x, dw_ih, True)
    pack(h_prev, packed_h)
    gemm(d_rec.T, packed_h, dw_hh, True)
    _add_column_sums(d_in, db_ih)
    if db_hh.shape[0]:
        _add_column_sums(d_rec, db_hh)


@jit
def _forward_step(steps, reverse, s):
    """(t, prev, new) of a pass's s-th step: the time, the state read and the state written (the zero
    state is at index 0, or at ``steps`` with ``reverse``)."""
    off = 1 if reverse else 0
    t = steps - 1 - s if reverse else s
    return t, t + off, t + 1 - off


@jit
def _backward_step(steps, reverse, s):
    """(t, prev, last) of the backward's s-th step (the forward's in reverse): the time, the state its
    forward read, and whether it is the step from the zero state (nothing to pass on)."""
    off = 1 if reverse else 0
    t = s if reverse else steps - 1 - s
    return t, t + off, t == off * (steps - 1)


@jit
def _add_column_sums(x, out):
    """out += x (2-D) summed over its rows."""
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[j] += x[r, j]


@jit
def _add_into(a, b):
    """a += b for 2-D arrays of one shape."""
    for r in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[r, j] += b[r, j]


@jit
def gru_cell_forward(gates, gh, b_ih, b_hh, h_prev, hn, h):
    """r, z = sig(.), hn = gh_n + b_hn, n = tanh(gx_n + b_in + r hn), h = (1 - z) n + z h_prev.

    ``gates`` holds x W_ih^T (bias-free) on entry and the activations r, z, n on exit.
    """
    fm.prefer_512_bit_vectors()
    n_rows, hidden = h.shape
    for r in range(n_rows):
        row = gates[r]
        for k in range(2 * hidden):
            row[k] = fm.sigmoid(row[k] + b_ih[k] + gh[r, k] + b_hh[k])
        for j in range(hidden):
            k = 2 * hidden + j
            hnj = gh[r, k] + b_hh[k]
            hn[r, j] = hnj
            nj = fm.tanh(row[k] + b_ih[k] + row[j] * hnj)
            row[k] = nj
            z = row[hidden + j]
            h[r, j] = (_ONE - z) * nj + z * h_prev[r, j]


@jit
def gru_cell_backward(gates, hn, h_prev, dh, dgx, dgh, dh_direct):
    """dgx = dL/d(x W_ih^T + b_ih), dgh = dL/d(h W_hh^T + b_hh), dh_direct = dh z (the skip path)."""
    n_rows, hidden = dh.shape
    for r in range(n_rows):
        for j in range(hidden):
            rr = gates[r, j]
            z = gates[r, hidden + j]
            n = gates[r, 2 * hidden + j]
            d = dh[r, j]
            dn = d * (_ONE - z) * (_ONE - n * n)
            dz = d * (h_prev[r, j] - n) * z * (_ONE - z)
            dr = dn * hn[r, j] * rr * (_ONE - rr)
            dgx[r, j] = dr
            dgx[r, hidden + j] = dz
            dgx[r, 2 * hidden + j] = dn
            dgh[r, j] = dr
            dgh[r, hidden + j] = dz
            dgh[r, 2 * hidden + j] = dn * rr
            dh_direct[r, j] = d * z
