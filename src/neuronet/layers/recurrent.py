"""LSTM, GRU and Bidirectional over batch-first sequences (PyTorch: nn.LSTM, nn.GRU with batch_first=True,
num_layers, dropout and bidirectional).

Layer l (of ``num_layers``) reads the time-major sequence s_l (T, N, I_l): s_0 is x, s_{l+1} the outputs
h_t of every direction of layer l side by side (T, N, D*H), dropped out while training. One pass is one
layer in one direction; all its products but ds_l run inside the cell's loop, a step's operands in cache:

    forward   for t in time order (reversed for the reverse direction):
                  gates[t] = cell(s_l[t] W_ih^T + h_prev W_hh^T + biases)
    backward  for t in the opposite order:
                  dgates[t] = cell'(dh);  dh_prev = dgates[t] W_hh
                  dW_ih += dgates[t]^T s_l[t],  dW_hh += dgates[t]^T h_prev,  db += dgates[t] summed
              ds_l = dgates W_ih                                   one GEMM over all steps

Each pass keeps its state in workspaces named after it (``h_l0``, ``c_l1_reverse``, ...) in time order
with one extra slot: the state before step t is h[t + off] and after it h[t + 1 - off], where off is 0
forward and 1 reversed. Every GEMM over all steps then reads contiguous time-ordered rows in either
direction. The fused cell math is ``ops.lstm_cell`` / ``ops.gru_cell`` (Numba on NumPy, torch ops on torch).
The rows of a batch never meet in the cell's loop, so it runs over ``ops.row_blocks(N)``, the blocks at once
where the backend can (``Layer.in_row_blocks``: on NumPy one thread per block).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..core import args
from ..core import initializers as init
from ..core import random as nnrandom
from ..core.layer import LAYERS, Layer


class _Pass(NamedTuple):
    """One layer in one direction: the suffix of its parameter and workspace names and its time order."""

    layer: int
    reverse: bool

    @property
    def tag(self) -> str:
        return f"_l{self.layer}" + ("_reverse" if self.reverse else "")

    @property
    def off(self) -> int:
        return int(self.reverse)


class _Recurrent(Layer):
    """Runs ``num_layers`` layers of one or two directions of ``cell`` (an LSTM or GRU: the step math)."""

    cell: _RNN
    directions: int
    input_size: int
    hidden_size: int
    return_sequences: bool
    num_layers: int
    dropout: float

    def _use(self, cell: _RNN, directions: int) -> None:
        self.cell, self.directions = cell, directions
        self._passes = [[_Pass(k, bool(d)) for d in range(directions)] for k in range(cell.num_layers)]

    def setup(self, input_shape):
        hid, width = self.hidden_size, self.cell.gates * self.hidden_size
        bound = init.fan_in_uniform(hid)  # PyTorch: every weight and bias U(-1/sqrt(H), 1/sqrt(H))
        for passes in self._passes:  # PyTorch's order: layer by layer, forward then reverse
            for p in passes:
                size_in = self.input_size if p.layer == 0 else self.directions * hid
                self.add_param("weight_ih" + p.tag, (width, size_in), bound)
                self.add_param("weight_hh" + p.tag, (width, hid), bound)
                self.add_param("bias_ih" + p.tag, (width,), bound)
                self.add_param("bias_hh" + p.tag, (width,), bound)
        width_out = self.directions * hid
        return (input_shape[0], width_out) if self.return_sequences else (width_out,)

    @property
    def input_spec(self):
        return ("T", self.input_size)

    def param(self, p: _Pass, name: str):
        return self.params[name + p.tag]

    def step_weight(self, p: _Pass, name: str, transposed: bool):
        """The weight ``name`` of pass ``p`` as its per-step products read it, laid out by ``ops.prepack``
        once per pass: W_hh^T (H, G*H) and W_ih^T (I, G*H) for the forward, W_hh (G*H, H) for the backward."""
        w = self.param(p, name).T if transposed else self.param(p, name)
        shape = self.ops.prepacked_shape(tuple(w.shape), self.dtype)  # (W_ih's differs by layer: one each)
        return self.ops.prepack(w, self.workspace(f"{name}{'_t' if transposed else ''}_l{p.layer}", shape))

    # ----------------------------------------------------------------- forward
    def forward(self, x, training: bool = True):
        self.check_input(x)
        ops, (n, steps, size_in) = self.ops, x.shape
        hid, width = self.hidden_size, self.directions * self.hidden_size
        self._steps, self._n = steps, n
        self._dropping = training and self.dropout > 0.0 and self.num_layers > 1
        seq = self.workspace("seq_in", (steps, n, size_in))
        ops.copy_(seq, ops.swapaxes(x, 0, 1))
        last = self.num_layers - 1
        y = self.workspace("y", (n, steps, width) if self.return_sequences else (n, width))
        for layer, passes in enumerate(self._passes):
            seq = self._layer_input(layer, seq)
            out = self.workspace(f"seq_l{layer}", (steps, n, width)) if layer < last else None
            for j, p in enumerate(passes):
                states = self._forward_pass(p, seq)
                cols = slice(j * hid, (j + 1) * hid)
                if out is not None:
                    ops.copy_(out[:, :, cols], states)
                elif self.return_sequences:
                    ops.copy_(y[:, :, cols], ops.swapaxes(states, 0, 1))
                else:
                    ops.copy_(y[:, cols], states[0 if p.reverse else -1])  # the state after the last step
            seq = out
        return y

    def _layer_input(self, layer: int, below):
        """s_layer: x (time-major) for layer 0, else the outputs of the layer below, dropped out while
        training (the keep-mask is kept as ``mask_l<layer>``)."""
        if layer == 0 or not self._dropping:
            return below
        mask = self.workspace(f"mask_l{layer}", tuple(below.shape), bool)
        self.ops.dropout_mask(1.0 - self.dropout, nnrandom.generator(), mask, self.dtype)
        return self.ops.apply_mask(below, mask, 1.0 / (1.0 - self.dropout),
                                   self.workspace(f"dropped_l{layer}", tuple(below.shape)))

    def _saved_input(self, layer: int):
        """The s_layer that ``forward`` fed to ``layer`` (the same workspace views)."""
        steps, n, width = self._steps, self._n, self.directions * self.hidden_size
        if layer == 0:
            return self.workspace("seq_in", (steps, n, self.input_size))
        name = f"dropped_l{layer}" if self._dropping else f"seq_l{layer - 1}"
        return self.workspace(name, (steps, n, width))

    def _forward_pass(self, p: _Pass, seq):
        """Run pass ``p`` over s (T, N, I); returns the state after each step t, h_t (T, N, H) in time order
        (the loops keep them in ``h`` (T + 1, N, H) beside the zero initial state)."""
        ops, (steps, n, _) = self.ops, seq.shape
        width = self.cell.gates * self.hidden_size
        gates = self.workspace("gates" + p.tag, (steps, n, width))
        h = self.workspace("h" + p.tag, (steps + 1, n, self.hidden_size))
        fused = self.__dict__.setdefault("_fused", {})  # tag -> what a whole-sequence kernel saved
        fused.pop(p.tag, None)
        saved: dict = {}
        if isinstance(self.cell, LSTM):
            states = ops.lstm_sequence(seq, *self._weights(p), p.reverse, saved)
            if states is not None:
                fused[p.tag] = saved
                return states
        ops.fill_(h[p.off * steps], 0.0)  # the zero initial state
        self.cell.forward_loop(self, p, seq, gates, h)
        return h[1 - p.off:steps + 1 - p.off]

    # ----------------------------------------------------------------- backward
    def backward(self, dy):
        ops, steps, n = self.ops, self._steps, self._n
        hid, width = self.hidden_size, self.directions * self.hidden_size
        dseq = None  # dL/d(outputs of the current layer) (T, N, D*H); None: only the final states have one
        if self.return_sequences:
            dseq = self.workspace("dseq_top", (steps, n, width))
            ops.copy_(dseq, ops.swapaxes(dy, 0, 1))
        for layer in range(self.num_layers - 1, -1, -1):
            seq = self._saved_input(layer)
            need_dx = layer > 0 or self.needs_input_grad
            dseq_in = self.workspace(f"dseq_in_l{layer}", tuple(seq.shape)) if need_dx else None
            for j, p in enumerate(self._passes[layer]):
                cols = slice(j * hid, (j + 1) * hid)
                dh = self.workspace("dh", (n, hid))  # dL/dh at the last step processed
                if dseq is None:
                    ops.copy_(dh, dy[:, cols])
                else:
                    ops.fill_(dh, 0.0)
                self._backward_pass(p, seq, dh, None if dseq is None else dseq[:, :, cols], dseq_in, j > 0)
            if dseq_in is not None and layer > 0 and self._dropping:
                self.ops.apply_mask(dseq_in, self.workspace(f"mask_l{layer}", tuple(seq.shape), bool),
                                    1.0 / (1.0 - self.dropout), dseq_in)
            dseq = dseq_in
        if dseq is None:
            return None
        dx = self.input_grad_buffer((n, steps, self.input_size), dy)
        ops.copy_(dx, ops.swapaxes(dseq, 0, 1))
        return dx

    def _backward_pass(self, p: _Pass, seq, dh, dout, dseq_in, accumulate: bool) -> None:
        """Back-propagate pass ``p``; write (or with ``accumulate`` add) ds (T, N, I) into ``dseq_in``
        unless it is None. ``dout`` (T, N, H) is dL/dh_t from above, or None."""
        ops, (steps, n, size_in) = self.ops, seq.shape
        hid, width = self.hidden_size, self.cell.gates * self.hidden_size
        saved = self.__dict__.get("_fused", {}).get(p.tag)
        if saved is not None:
            self._fused_backward(p, seq, saved, dh, dout, dseq_in, accumulate)
            return
        h = self.workspace("h" + p.tag, (steps + 1, n, hid))
        gates = self.workspace("gates" + p.tag, (steps, n, width))
        dgx = self.cell.backward_loop(self, p, seq, gates, h, dh, dout).reshape(steps * n, width)
        if dseq_in is None:
            return
        dseq_rows = dseq_in.reshape(steps * n, size_in)
        if accumulate:
            ops.matmul_acc(dgx, self.param(p, "weight_ih"), dseq_rows,
                           self.workspace(f"ds_l{p.layer}", (steps * n, size_in)))
        else:
            ops.matmul(dgx, self.param(p, "weight_ih"), out=dseq_rows)

    def _weights(self, p: _Pass) -> list:
        return [self.param(p, name) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def _fused_backward(self, p: _Pass, seq, saved: dict, dh, dout, dseq_in, accumulate: bool) -> None:
        """``_backward_pass`` for a pass that ran as one ``ops.lstm_sequence``."""
        ds, *weight_grads = self.ops.lstm_sequence_backward(seq, *self._weights(p), p.reverse, saved, dh,
                                                            dout)
        if self.trainable:
            for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), weight_grads, strict=True):
                self.grads[name + p.tag] += g
        if dseq_in is not None:
            if accumulate:
                dseq_in += ds
            else:
                self.ops.copy_(dseq_in, ds)

    def backward_in_blocks(self, p: _Pass, n: int, loop, *scratch: tuple[str, int],
                           shared_bias: bool) -> None:
        """``in_row_blocks`` for a backward loop that adds pass ``p``'s weight gradients as it goes: block k
        runs ``loop(rows, *buffers, dW_ih, dW_hh, db_ih[, db_hh])`` (nothing after the buffers when the layer
        is frozen), the first block adding into the gradients themselves, every other into zeroed sums of
        its own, which are added after the region in block order (the result does not depend on which
        thread finishes first). ``shared_bias`` (the LSTM: one pre-activation gradient reaches both biases):
        a block adds one bias sum, which then goes to both."""
        names = ("weight_ih", "weight_hh") + (("bias",) if shared_bias else ("bias_ih", "bias_hh"))
        sums: list[tuple] = []

        def block_sums(k: int) -> tuple:
            into = []
            for name in names if self.trainable else ():
                if k == 0 and name != "bias":
                    into.append(self.grads[name + p.tag])
                    continue
                shape = (self.cell.gates * self.hidden_size,) if name == "bias" else \
                    tuple(self.grads[name + p.tag].shape)
                part = self.workspace(f"sum_{name}{k}_l{p.layer}", shape)
                self.ops.fill_(part, 0.0)
                into.append(part)
            sums.append(tuple(into))
            return sums[-1]
        self.in_row_blocks(n, loop, *scratch, per_block=block_sums)
        for into in sums[1:]:
            for total, part in zip(sums[0], into, strict=True):
                total += part
        if shared_bias and self.trainable:
            self.grads["bias_ih" + p.tag] += sums[0][2]
            self.grads["bias_hh" + p.tag] += sums[0][2]


class _RNN(_Recurrent):
    """Shared by LSTM and GRU: arguments, checks, config; the subclass gives the cell's two loops."""

    gates: int

    def __init__(self, input_size: int, hidden_size: int, return_sequences: bool = False, num_layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        name = type(self).__name__
        self.input_size = args.size(name, "input_size", input_size)
        self.hidden_size = args.size(name, "hidden_size", hidden_size)
        self.return_sequences = args.flag(name, "return_sequences", return_sequences)
        self.num_layers = args.size(name, "num_layers", num_layers)
        self.dropout = args.real(name, "dropout", dropout, 0.0, 1.0, hi_open=True)
        self._use(self, directions=1)

    def forward_loop(self, layer: _Recurrent, p: _Pass, seq, gates, h) -> None:
        """Run the cell over the input s (T, N, I): ``gates`` (T, N, G*H) receives the gate activations;
        ``h`` (T + 1, N, H) holds the zero initial state and receives every h_t. Whatever else backward
        needs goes into ``layer``'s workspaces named with ``p.tag``."""
        raise NotImplementedError

    def backward_loop(self, layer: _Recurrent, p: _Pass, seq, gates, h, dh, dout):
        """Run the cell backward over time from dh (N, H) = dL/dh at the last step processed, adding
        dout[t] = dL/dh_t from above (when not None) at each step, and (unless the layer is frozen) add the
        pass's weight and bias gradients to ``layer.grads``. Returns dgx (T, N, G*H): the gradient of the
        input-side pre-activations s W_ih^T + b_ih."""
        raise NotImplementedError

    def extra_repr(self):
        extra = ", return_sequences=True" if self.return_sequences else ""
        extra += f", num_layers={self.num_layers}" if self.num_layers != 1 else ""
        extra += f", dropout={self.dropout}" if self.dropout else ""
        return f"{self.input_size}, {self.hidden_size}{extra}"

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "return_sequences": self.return_sequences, "num_layers": self.num_layers,
                "dropout": self.dropout}


class LSTM(_RNN):
    """Long short-term memory over a batch-first sequence, from zero initial states.

    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    c_t = f c_{t-1} + i g,   h_t = o tanh(c_t)
    (PyTorch: nn.LSTM(input_size, hidden_size, num_layers, dropout=dropout, batch_first=True))

    Args:
        input_size (int): features per step I.
        hidden_size (int): hidden size H.
        return_sequences (bool, optional): return every h_t of the top layer instead of the last. Default:
            ``False``.
        num_layers (int, optional): stacked layers; layer l > 0 reads the h_t of layer l - 1. Default: 1.
        dropout (float, optional): dropout on the outputs of every layer but the top one, while training.
            Default: 0.
    Shape:
        x: (N, T, I) -> y: (N, H), or (N, T, H) with ``return_sequences``
    Parameters:
        weight_ih_l{k} (4H, I for k = 0 else H), weight_hh_l{k} (4H, H), bias_ih_l{k} (4H), bias_hh_l{k} (4H)
        for each layer k; gate order i, f, g, o.
    Saved for backward:
        per layer and direction (workspace): its input (T, N, I), gate activations (T, N, 4H), h and c
        (T+1, N, H), tanh(c) (T, N, H); the dropout masks.
    """

    gates = 4

    def forward_loop(self, layer, p, seq, gates, h):
        ops, (steps, n, width), hid = layer.ops, gates.shape, self.hidden_size
        c = layer.workspace("c" + p.tag, (steps + 1, n, hid))
        tanh_c = layer.workspace("tanh_c" + p.tag, (steps, n, hid))
        bias = layer.workspace("bias" + p.tag, (width,))
        ops.xp.add(layer.param(p, "bias_ih"), layer.param(p, "bias_hh"), out=bias)
        ops.fill_(c[p.off * steps], 0.0)
        w_ih_t = layer.step_weight(p, "weight_ih", transposed=True)
        w_hh_t = layer.step_weight(p, "weight_hh", transposed=True)

        def loop(rows, gh):
            ops.lstm_steps(seq, w_ih_t, gates, h, c, tanh_c, w_hh_t, bias, gh, p.reverse, rows)
        layer.in_row_blocks(n, loop, ("gh", width))

    def backward_loop(self, layer, p, seq, gates, h, dh, dout):
        ops, (steps, n, width), hid = layer.ops, gates.shape, self.hidden_size
        c = layer.workspace("c" + p.tag, (steps + 1, n, hid))
        tanh_c = layer.workspace("tanh_c" + p.tag, (steps, n, hid))
        dgates, dc = layer.workspace("dgates", (steps, n, width)), layer.workspace("dc", (n, hid))
        ops.fill_(dc, 0.0)
        w_hh = layer.step_weight(p, "weight_hh", transposed=False)

        def loop(rows, *into):
            ops.lstm_steps_backward(seq, h, gates, c, tanh_c, dh, dc, dgates, w_hh, dout, p.reverse, rows,
                                    *into)
        layer.backward_in_blocks(p, n, loop, shared_bias=True)
        return dgates


class GRU(_RNN):
    """Gated recurrent unit over a batch-first sequence, from a zero initial state.

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr),  z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)),  h_t = (1 - z) n + z h_{t-1}
    (PyTorch: nn.GRU(input_size, hidden_size, num_layers, dropout=dropout, batch_first=True))

    Args:
        input_size (int): features per step I.
        hidden_size (int): hidden size H.
        return_sequences (bool, optional): return every h_t of the top layer instead of the last. Default:
            ``False``.
        num_layers (int, optional): stacked layers; layer l > 0 reads the h_t of layer l - 1. Default: 1.
        dropout (float, optional): dropout on the outputs of every layer but the top one, while training.
            Default: 0.
    Shape:
        x: (N, T, I) -> y: (N, H), or (N, T, H) with ``return_sequences``
    Parameters:
        weight_ih_l{k} (3H, I for k = 0 else H), weight_hh_l{k} (3H, H), bias_ih_l{k} (3H), bias_hh_l{k} (3H)
        for each layer k; gate order r, z, n.
    Saved for backward:
        per layer and direction (workspace): its input (T, N, I), gate activations (T, N, 3H), h (T+1, N, H)
        and h W_hn^T + b_hn (T, N, H); the dropout masks.
    """

    gates = 3

    def forward_loop(self, layer, p, seq, gates, h):
        ops, (steps, n, width) = layer.ops, gates.shape
        hn = layer.workspace("hn" + p.tag, (steps, n, self.hidden_size))
        w_ih_t = layer.step_weight(p, "weight_ih", transposed=True)
        w_hh_t = layer.step_weight(p, "weight_hh", transposed=True)
        b_ih, b_hh = layer.param(p, "bias_ih"), layer.param(p, "bias_hh")

        def loop(rows, gh):
            ops.gru_steps(seq, w_ih_t, gates, h, hn, w_hh_t, b_ih, b_hh, gh, p.reverse, rows)
        layer.in_row_blocks(n, loop, ("gh", width))

    def backward_loop(self, layer, p, seq, gates, h, dh, dout):
        ops, (steps, n, width), hid = layer.ops, gates.shape, self.hidden_size
        hn = layer.workspace("hn" + p.tag, (steps, n, hid))
        dgx, dgh = layer.workspace("dgx", (steps, n, width)), layer.workspace("dgh", (steps, n, width))
        w_hh = layer.step_weight(p, "weight_hh", transposed=False)

        def loop(rows, dh_direct, *into):
            ops.gru_steps_backward(seq, h, gates, hn, dh, dgx, dgh, w_hh, dout, dh_direct, p.reverse, rows,
                                   *into)
        layer.backward_in_blocks(p, n, loop, ("dh_direct", hid), shared_bias=False)
        return dgx


class Bidirectional(_Recurrent):
    """Run an LSTM or GRU forward and backward in time and concatenate the two on the last axis.

    y_t = [h_t forward, h_t backward]; with ``num_layers`` > 1 every layer is bidirectional and the next
    one reads both halves.  (PyTorch: nn.LSTM/nn.GRU(..., bidirectional=True, batch_first=True))

    Args:
        rnn (LSTM | GRU): the cell, its sizes, ``return_sequences``, ``num_layers`` and ``dropout``; the
            reverse direction gets its own parameters of the same shapes (a dict ``{"type": "LSTM", ...}``
            is accepted too, for configs).
    Shape:
        x: (N, T, I) -> y: (N, T, 2H) with ``return_sequences``, else [h_n forward, h_n backward] (N, 2H)
        of the top layer
    Parameters:
        the cell's ``*_l{k}`` and ``*_l{k}_reverse``, in PyTorch's order; layer k > 0 reads 2H features.
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
        for name in ("input_size", "hidden_size", "return_sequences", "num_layers", "dropout"):
            setattr(self, name, getattr(rnn, name))
        self._use(rnn, directions=2)

    def extra_repr(self):
        return repr(self.rnn)

    def get_config(self) -> dict[str, Any]:
        return {"rnn": {"type": type(self.rnn).__name__, **self.rnn.get_config()}}
