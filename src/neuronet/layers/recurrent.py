"""LSTM, GRU and Bidirectional over batch-first sequences (PyTorch: nn.LSTM, nn.GRU, batch_first=True).

One direction runs time-major inside, in processing order k = 0..T-1 (time t = k, or T-1-k when
reversed), so that each step's rows are contiguous. Only the recurrent products run per step:

    forward   gates = x W_ih^T                      one GEMM over all T steps
              gates[k] = cell(gates[k] + h[k] W_hh^T + biases)      per step, fused kernel
    backward  dgates[k] = cell'(dh);  dh[k-1] = dgates[k] W_hh       per step
              dW_ih = dgates^T x,  dW_hh = dgates^T h[0:T],  dx = dgates W_ih   one GEMM each

The fused cell math is ``ops.lstm_cell`` / ``ops.gru_cell`` (Numba on NumPy, torch ops on torch).
"""

from __future__ import annotations

from typing import Any

from ..core import args
from ..core import initializers as init
from ..core.layer import LAYERS, Layer, ShapeError, Workspace


class _Direction(Workspace):
    """One pass over the sequence with ``owner``'s parameters ``<name>_l0<suffix>``; saves its own state."""

    def __init__(self, cell: _RNN, owner: Layer, suffix: str, reverse: bool):
        self.cell, self.owner, self.suffix, self.reverse = cell, owner, suffix, reverse

    @property
    def ops(self):
        return self.owner.ops

    @property
    def dtype(self):
        return self.owner.dtype

    def param(self, name: str):
        return self.owner.params[f"{name}_l0{self.suffix}"]

    def grad(self, name: str):
        return self.owner.grads[f"{name}_l0{self.suffix}"]

    def times(self, steps: int) -> range:
        """Time index of each processing step k."""
        return range(steps - 1, -1, -1) if self.reverse else range(steps)

    def forward(self, x, out, cols: slice, sequences: bool) -> None:
        """Run over x (N, T, I); write h_t to out[:, t, cols] (sequences) or the final h to out[:, cols]."""
        ops, cell = self.ops, self.cell
        n, steps, size_in = x.shape
        hid, width = cell.hidden_size, cell.gates * cell.hidden_size
        self.x = self.workspace("x", (steps, n, size_in))  # (T, N, I) in processing order
        if self.reverse:
            for k, t in enumerate(self.times(steps)):
                ops.copy_(self.x[k], x[:, t])
        else:
            ops.copy_(self.x, ops.swapaxes(x, 0, 1))
        self.gates = self.workspace("gates", (steps, n, width))
        ops.matmul(self.x.reshape(steps * n, size_in), self.param("weight_ih").T,
                   out=self.gates.reshape(steps * n, width))
        self.h = self.workspace("h", (steps + 1, n, hid))
        ops.fill_(self.h[0], 0.0)
        cell.begin(self, n, steps)
        gh = self.workspace("gh", (n, width))
        w_hh = self.param("weight_hh")
        for k, t in enumerate(self.times(steps)):
            ops.matmul(self.h[k], w_hh.T, out=gh)
            cell.step(self, k, gh)
            if sequences:
                ops.copy_(out[:, t, cols], self.h[k + 1])
        if not sequences:
            ops.copy_(out[:, cols], self.h[steps])

    def backward(self, dy, cols: slice, sequences: bool, dx_tm, accumulate: bool) -> None:
        """Back-propagate dy (its slice ``cols`` is this direction's); write, or add, dL/dx into the
        time-major dx_tm (T, N, I) unless it is None."""
        ops, cell = self.ops, self.cell
        steps, n, size_in = self.x.shape
        hid, width = cell.hidden_size, cell.gates * cell.hidden_size
        dgx, dgh = cell.grad_buffers(self, n, steps)
        shared = dgh is dgx  # LSTM: W_ih, W_hh and both biases see the same pre-activation gradient
        dh = self.workspace("dh", (n, hid))
        dy_step = self.workspace("dy_step", (n, hid))  # contiguous copy: NumPy buffers strided ufunc inputs
        times = list(self.times(steps))
        ops.copy_(dh, dy[:, times[-1], cols] if sequences else dy[:, cols])
        w_hh = self.param("weight_hh")
        for k in range(steps - 1, -1, -1):
            cell.step_backward(self, k, dh)
            if k:
                cell.recurrent_grad(self, dgh[k], w_hh, dh)
                if sequences:
                    ops.copy_(dy_step, dy[:, times[k - 1], cols])
                    dh += dy_step
        rows, hrows = self.x.reshape(steps * n, size_in), self.h[:steps].reshape(steps * n, hid)
        dgx, dgh = dgx.reshape(steps * n, width), dgh.reshape(steps * n, width)
        ops.matmul_acc(dgx.T, rows, self.grad("weight_ih"), self.workspace("dw_ih", (width, size_in)))
        ops.matmul_acc(dgh.T, hrows, self.grad("weight_hh"), self.workspace("dw_hh", (width, hid)))
        if shared:  # both biases get the same gradient: sum it once
            dbias = self.workspace("dbias", (width,))
            ops.fill_(dbias, 0.0)
            ops.sum_rows_acc(dgx, dbias)
            for name in ("bias_ih", "bias_hh"):
                grad = self.grad(name)
                grad += dbias
        else:
            ops.sum_rows_acc(dgx, self.grad("bias_ih"))
            ops.sum_rows_acc(dgh, self.grad("bias_hh"))
        if dx_tm is None:
            return
        direct = not (accumulate or self.reverse)  # already in time order: the GEMM writes dx_tm itself
        dxt = dx_tm if direct else self.workspace("dx", (steps, n, size_in))
        ops.matmul(dgx, self.param("weight_ih"), out=dxt.reshape(steps * n, size_in))
        if not direct:
            for k, t in enumerate(times):
                if accumulate:
                    dx_tm[t] += dxt[k]
                else:
                    ops.copy_(dx_tm[t], dxt[k])


class _RecurrentLayer(Layer):
    """Runs one or two directions and lays their outputs side by side on the last axis."""

    input_size: int
    hidden_size: int
    return_sequences: bool
    _directions: list[_Direction]

    def check_input(self, x) -> None:
        if x.ndim != 3 or x.shape[2] != self.input_size or x.shape[1] < 1:
            raise ShapeError(f"{self!r}: expected input of shape (N, T, {self.input_size}) with T >= 1, "
                             f"got {tuple(x.shape)}")

    def _output_shape(self, input_shape: tuple) -> tuple:
        if len(input_shape) != 2 or input_shape[1] != self.input_size:
            raise ShapeError(f"{self!r}: expected input of shape (N, T, {self.input_size}), "
                             f"got (N, {', '.join(map(str, input_shape))})")
        width = len(self._directions) * self.hidden_size
        return (input_shape[0], width) if self.return_sequences else (width,)

    def forward(self, x, training: bool = True):
        self.check_input(x)
        n, steps, _ = x.shape
        hid = self.hidden_size
        shape = (n, steps, len(self._directions) * hid) if self.return_sequences else \
            (n, len(self._directions) * hid)
        y = self.workspace("y", shape)
        for j, direction in enumerate(self._directions):
            direction.forward(x, y, slice(j * hid, (j + 1) * hid), self.return_sequences)
        self._x_shape = tuple(x.shape)
        return y

    def backward(self, dy):
        n, steps, size_in = self._x_shape
        dx_tm = self.workspace("dx_tm", (steps, n, size_in)) if self.needs_input_grad else None
        hid = self.hidden_size
        for j, direction in enumerate(self._directions):
            cols = slice(j * hid, (j + 1) * hid)
            direction.backward(dy, cols, self.return_sequences, dx_tm, accumulate=j > 0)
        if dx_tm is None:
            return None
        dx = self.workspace("dx", self._x_shape)
        self.ops.copy_(dx, self.ops.swapaxes(dx_tm, 0, 1))
        return dx


class _RNN(_RecurrentLayer):
    """Shared by LSTM and GRU: parameters, checks and the per-step hooks a ``_Direction`` calls."""

    gates: int

    def __init__(self, input_size: int, hidden_size: int, return_sequences: bool = False):
        super().__init__()
        owner = type(self).__name__
        self.input_size = args.size(owner, "input_size", input_size)
        self.hidden_size = args.size(owner, "hidden_size", hidden_size)
        self.return_sequences = args.flag(owner, "return_sequences", return_sequences)
        self._directions = [_Direction(self, self, "", reverse=False)]

    def setup(self, input_shape):
        self.declare(self, "")
        return self._output_shape(input_shape)

    def declare(self, owner: Layer, suffix: str) -> None:
        """Declare this cell's parameters on ``owner`` as PyTorch names them (U(-1/sqrt(H), 1/sqrt(H)))."""
        width, bound = self.gates * self.hidden_size, init.fan_in_uniform(self.hidden_size)
        owner.add_param(f"weight_ih_l0{suffix}", (width, self.input_size), bound)
        owner.add_param(f"weight_hh_l0{suffix}", (width, self.hidden_size), bound)
        owner.add_param(f"bias_ih_l0{suffix}", (width,), bound)
        owner.add_param(f"bias_hh_l0{suffix}", (width,), bound)

    def recurrent_grad(self, d: _Direction, dgh_k, w_hh, dh) -> None:
        """dh = dL/dh_{k-1} from the recurrent product: dgh_k @ W_hh."""
        d.ops.matmul(dgh_k, w_hh, out=dh)

    def extra_repr(self):
        seq = ", return_sequences=True" if self.return_sequences else ""
        return f"{self.input_size}, {self.hidden_size}{seq}"

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "return_sequences": self.return_sequences}


class LSTM(_RNN):
    """Long short-term memory over a batch-first sequence, from zero initial states.

    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    c_t = f c_{t-1} + i g,   h_t = o tanh(c_t)          (PyTorch: nn.LSTM(batch_first=True), one layer)

    Args:
        input_size (int): features per step I.
        hidden_size (int): hidden size H.
        return_sequences (bool, optional): return every h_t instead of the last. Default: ``False``.
    Shape:
        x: (N, T, I) -> y: (N, H), or (N, T, H) with ``return_sequences``
    Parameters:
        weight_ih_l0 (4H, I), weight_hh_l0 (4H, H), bias_ih_l0 (4H), bias_hh_l0 (4H); gate order i, f, g, o.
    Saved for backward:
        per direction (workspace): x time-major (T, N, I), gate activations (T, N, 4H), h and c (T+1, N, H),
        tanh(c) (T, N, H).
    """

    gates = 4

    def begin(self, d: _Direction, n: int, steps: int) -> None:
        d.c = d.workspace("c", (steps + 1, n, self.hidden_size))
        d.tanh_c = d.workspace("tanh_c", (steps, n, self.hidden_size))
        d.ops.fill_(d.c[0], 0.0)
        d.bias = d.workspace("bias", (self.gates * self.hidden_size,))
        d.ops.xp.add(d.param("bias_ih"), d.param("bias_hh"), out=d.bias)

    def step(self, d: _Direction, k: int, gh) -> None:
        d.ops.lstm_cell(d.gates[k], gh, d.bias, d.c[k], d.c[k + 1], d.tanh_c[k], d.h[k + 1])

    def grad_buffers(self, d: _Direction, n: int, steps: int):
        d.dgates = d.workspace("dgates", (steps, n, self.gates * self.hidden_size))
        d.dc = d.workspace("dc", (n, self.hidden_size))
        d.ops.fill_(d.dc, 0.0)
        return d.dgates, d.dgates  # the same pre-activation gradient reaches W_ih, W_hh and both biases

    def step_backward(self, d: _Direction, k: int, dh) -> None:
        d.ops.lstm_cell_backward(d.gates[k], d.c[k], d.tanh_c[k], dh, d.dc, d.dgates[k])


class GRU(_RNN):
    """Gated recurrent unit over a batch-first sequence, from a zero initial state.

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr),  z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)),  h_t = (1 - z) n + z h_{t-1}
    (PyTorch: nn.GRU(batch_first=True), one layer)

    Args:
        input_size (int): features per step I.
        hidden_size (int): hidden size H.
        return_sequences (bool, optional): return every h_t instead of the last. Default: ``False``.
    Shape:
        x: (N, T, I) -> y: (N, H), or (N, T, H) with ``return_sequences``
    Parameters:
        weight_ih_l0 (3H, I), weight_hh_l0 (3H, H), bias_ih_l0 (3H), bias_hh_l0 (3H); gate order r, z, n.
    Saved for backward:
        per direction (workspace): x time-major (T, N, I), gate activations (T, N, 3H), h (T+1, N, H) and
        h W_hn^T + b_hn (T, N, H).
    """

    gates = 3

    def begin(self, d: _Direction, n: int, steps: int) -> None:
        d.hn = d.workspace("hn", (steps, n, self.hidden_size))

    def step(self, d: _Direction, k: int, gh) -> None:
        d.ops.gru_cell(d.gates[k], gh, d.param("bias_ih"), d.param("bias_hh"), d.h[k], d.hn[k], d.h[k + 1])

    def grad_buffers(self, d: _Direction, n: int, steps: int):
        width = self.gates * self.hidden_size
        d.dgx = d.workspace("dgx", (steps, n, width))
        d.dgh = d.workspace("dgh", (steps, n, width))
        d.dh_direct = d.workspace("dh_direct", (n, self.hidden_size))
        return d.dgx, d.dgh

    def step_backward(self, d: _Direction, k: int, dh) -> None:
        d.ops.gru_cell_backward(d.gates[k], d.hn[k], d.h[k], dh, d.dgx[k], d.dgh[k], d.dh_direct)

    def recurrent_grad(self, d: _Direction, dgh_k, w_hh, dh) -> None:
        super().recurrent_grad(d, dgh_k, w_hh, dh)
        dh += d.dh_direct


class Bidirectional(_RecurrentLayer):
    """Run an LSTM or GRU forward and backward in time and concatenate the two on the last axis.

    y_t = [h_t forward, h_t backward]   (PyTorch: nn.LSTM/nn.GRU(bidirectional=True, batch_first=True))

    Args:
        rnn (LSTM | GRU): the cell, its sizes and ``return_sequences``; the reverse direction gets its own
            parameters of the same shapes (a dict ``{"type": "LSTM", ...}`` is accepted too, for configs).
    Shape:
        x: (N, T, I) -> y: (N, T, 2H) with ``return_sequences``, else [h_n forward, h_n backward] (N, 2H)
    Parameters:
        the cell's ``*_l0`` and ``*_l0_reverse``, in PyTorch's order.
    Saved for backward:
        each direction's state, as for the cell.
    """

    def __init__(self, rnn: _RNN | dict):
        super().__init__()
        if isinstance(rnn, dict):
            config = dict(rnn)
            rnn = LAYERS[config.pop("type")](**config)
        if not isinstance(rnn, _RNN):
            raise TypeError(f"Bidirectional: expected an LSTM or GRU, got {type(rnn).__name__}")
        self.rnn = rnn
        self.input_size, self.hidden_size = rnn.input_size, rnn.hidden_size
        self.return_sequences = rnn.return_sequences
        self._directions = [_Direction(rnn, self, "", reverse=False),
                            _Direction(rnn, self, "_reverse", reverse=True)]

    def setup(self, input_shape):
        self.rnn.declare(self, "")
        self.rnn.declare(self, "_reverse")
        return self._output_shape(input_shape)

    def extra_repr(self):
        return repr(self.rnn)

    def get_config(self) -> dict[str, Any]:
        return {"rnn": {"type": type(self.rnn).__name__, **self.rnn.get_config()}}
