"""MoE: a sparse mixture of GELU experts, each token dispatched to its top-k experts only."""

from __future__ import annotations

from ..core import args
from ..core.args import MAX_SIZE
from ..core.layer import Layer
from .dense import Dense


class MoEExpert(Layer):
    """One feed-forward expert: y = linear2(gelu(linear1 x)).

    Args:
        dim (int): input and output size.
        hidden (int): hidden size.
    Shape:
        x: (n, dim) -> y: (n, dim)
    Saved for backward:
        what its two Dense children keep.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim, self.hidden = args.size(type(self).__name__, "dim", dim), \
            args.size(type(self).__name__, "hidden", hidden)

    def setup(self, input_shape):
        shape = self.add_child("linear1", Dense(self.dim, self.hidden, activation="gelu"), input_shape)
        return self.add_child("linear2", Dense(self.hidden, self.dim), shape)

    def forward(self, x, training: bool = True):
        return self.children["linear2"].forward(self.children["linear1"].forward(x, training), training)

    def backward(self, dy):
        return self.children["linear1"].backward(self.children["linear2"].backward(dy))

    def reserve(self, rows: int) -> None:
        """Allocate the workspaces for up to ``rows`` tokens now (computing nothing), so later
        sub-batches of any size up to that allocate nothing."""
        for child in self.children.values():
            child.reserve(rows)

    def extra_repr(self):
        return f"{self.dim}, {self.hidden}"

    def get_config(self):
        return {"dim": self.dim, "hidden": self.hidden}


class MoEExperts(Layer):
    """The experts of a MoE, children ``"0"`` .. ``"E-1"`` (PyTorch: an ``nn.ModuleList``)."""

    def __init__(self, num_experts: int, dim: int, hidden: int):
        super().__init__()
        owner = type(self).__name__
        self.num_experts = args.size(owner, "num_experts", num_experts)
        self.dim, self.hidden = args.size(owner, "dim", dim), args.size(owner, "hidden", hidden)

    def setup(self, input_shape):
        for i in range(self.num_experts):
            self.add_child(str(i), MoEExpert(self.dim, self.hidden), input_shape)
        return input_shape

    def __getitem__(self, i: int) -> MoEExpert:
        return self.children[str(i)]

    def get_config(self):
        return {"num_experts": self.num_experts, "dim": self.dim, "hidden": self.hidden}


class MoE(Layer):
    """Sparse mixture of experts with top-k softmax gating and a Switch load-balancing loss.

    logits = x @ gate.weight.T;  (v, e) = top-k(logits);  g = softmax(v)
    y = sum_j g_j * expert_{e_j}(x),  expert(x) = linear2(gelu(linear1 x))
    aux_loss = E * sum_i f_i P_i   (f_i: fraction of tokens whose top-1 expert is i, held constant;
                                    P_i: mean over tokens of softmax(logits)_i)

    PyTorch counterpart: none built in; the same math as the reference in tests/layers/test_moe.py,
    with a ``gate`` Linear (no bias) and an ``experts`` ModuleList of ``linear1``/``linear2``.
    Tokens go only to their chosen experts: each expert runs on the gathered rows routed to it, and
    its weighted output is scatter-added back. ``train_step``/``fit`` add ``aux_loss_weight *
    aux_loss`` to the loss and, through ``set_aux_loss_scale``, its gradient to the gate's logits.
    ``aux_loss`` is a float, or off the CPU a 0-d array on the device (not read back: the routing's group
    sizes are the layer's one read back there).

    Args:
        dim (int): size of the last input axis (and of the output).
        hidden (int): hidden size of each expert.
        num_experts (int): number of experts E.
        top_k (int): experts per token, 1 <= top_k <= E.
        aux_loss_weight (float, optional): weight of the load-balancing loss in training. Default: ``0.01``.
    Shape:
        x: (N, *, dim) -> y: (N, *, dim)
    Parameters:
        gate.weight (E, dim); experts.<i>.linear1.weight (hidden, dim), .bias (hidden);
        experts.<i>.linear2.weight (dim, hidden), .bias (dim).
    Saved for backward (workspace, M = number of tokens):
        probs (M, E), gates (M, k), top-k indices (M, k), the routed order, token ids and gate weights
        (M*k,), the experts' unweighted outputs (M*k, dim), the top-1 counts (E,).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, aux_loss_weight: float = 0.01):
        super().__init__()
        owner = type(self).__name__
        self.dim, self.hidden = args.size(owner, "dim", dim), args.size(owner, "hidden", hidden)
        # integers here; their ranges are checked together below
        self.num_experts = args.size(owner, "num_experts", num_experts, lo=-MAX_SIZE)
        self.top_k = args.size(owner, "top_k", top_k, lo=-MAX_SIZE)
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"MoE: need 1 <= top_k <= num_experts, got top_k={top_k}, "
                             f"num_experts={num_experts}")
        if aux_loss_weight < 0:
            raise ValueError(f"MoE: aux_loss_weight must be >= 0, got {aux_loss_weight}")
        self.aux_loss_weight = float(aux_loss_weight)
        self._aux_loss_scale = 0.0  # set_aux_loss_scale: how much of aux_loss backward adds
        self.aux_loss = 0.0
        self._reserved = 0  # rows every expert's workspace can already hold
        self._offsets_for = 0  # rows whose offsets are in the "row_offsets" workspace

    def setup(self, input_shape):
        self.add_child("gate", Dense(self.dim, self.num_experts, bias=False), input_shape)
        self.add_child("experts", MoEExperts(self.num_experts, self.dim, self.hidden), input_shape)
        return input_shape

    @property
    def input_spec(self):
        return (..., self.dim)

    def forward(self, x, training: bool = True):
        ops, xp, k, n_exp = self.ops, self.ops.xp, self.top_k, self.num_experts
        self._x_shape = x.shape
        xf = x.reshape(-1, self.dim)  # (M, dim)
        m = xf.shape[0]
        experts = self.children["experts"]
        if m > self._reserved:  # worst case: one expert gets every token
            for i in range(n_exp):
                experts[i].reserve(m)
            self._reserved = m

        # Route: gate logits, softmax over all experts (aux loss) and over the chosen top-k (weights).
        logits = self.children["gate"].forward(xf, training)  # (M, E)
        probs = ops.activation("softmax", logits, self.workspace("probs", (m, n_exp)))
        top = self.workspace("top", (m, k))
        idx = self.workspace("idx", (m, k), "int64")
        ops.topk(logits, k, top, idx)
        gates = ops.activation("softmax", top, self.workspace("gates", (m, k)))

        # Group the M*k (token, slot) pairs by expert; row r of the sorted arrays is pair order[r].
        order = self.workspace("order", (m * k,), "int64")
        counts = self.workspace("counts", (n_exp,), "int64")
        ops.group_by_key(idx.reshape(-1), order, counts)
        token = xp.floor_divide(order, k, out=self.workspace("token", (m * k,), "int64"))
        weight = ops.gather_rows(gates.reshape(-1, 1), order, self.workspace("weight", (m * k, 1)))
        xs = ops.gather_rows(xf, token, self.workspace("xs", (m * k, self.dim)))

        # Each expert on its own contiguous block of rows.
        self._counts = [int(c) for c in ops.to_numpy(counts)]
        ys = self.workspace("ys", (m * k, self.dim))  # unweighted expert outputs, kept for backward
        start = 0
        for i, n in enumerate(self._counts):
            if n:
                ops.copy_(ys[start:start + n], experts[i].forward(xs[start:start + n], training))
            start += n
        weighted = xp.multiply(ys, weight, out=self.workspace("weighted", (m * k, self.dim)))
        y = self.workspace("y", (m, self.dim))
        ops.fill_(y, 0.0)
        ops.scatter_add_rows(y, token, weighted)

        # Switch load balancing: E * sum_i f_i P_i.
        top1 = self.workspace("top1", (n_exp,), "int64")
        ops.bincount(idx[:, 0], top1)
        f = self.workspace("f", (n_exp,))
        ops.copy_(f, top1)
        f *= 1.0 / m
        p_mean = xp.mean(probs, axis=0, out=self.workspace("p_mean", (n_exp,)))
        p_mean *= f
        aux = n_exp * xp.sum(p_mean)
        self.aux_loss = ops.item(aux) if ops.device == "cpu" else aux
        self._probs, self._gates, self._idx, self._f = probs, gates, idx, f
        self._order, self._token, self._weight, self._ys = order, token, weight, ys
        return y.reshape(self._x_shape)

    def backward(self, dy):
        ops, xp, k, n_exp = self.ops, self.ops.xp, self.top_k, self.num_experts
        m = self._probs.shape[0]
        dy = dy.reshape(m, self.dim)
        dys = ops.gather_rows(dy, self._token, self.workspace("dys", (m * k, self.dim)))  # dL/d(weighted)

        # Gate weights: dL/dg of each (token, slot) pair = <dy_token, expert output>, back in (M, k) layout.
        prod = xp.multiply(dys, self._ys, out=self.workspace("prod", (m * k, self.dim)))
        dweight = xp.sum(prod, axis=1, out=self.workspace("dweight", (m * k,)))
        dgates = self.workspace("dgates", (m * k, 1))
        ops.fill_(dgates, 0.0)
        ops.scatter_add_rows(dgates, self._order, dweight.reshape(-1, 1))
        dtop = ops.activation_backward("softmax", dgates.reshape(m, k), None, self._gates,
                                       self.workspace("dtop", (m, k)))

        # Into the logits: the top-k entries, plus the load-balancing term when training asks for it.
        dlogits = self.workspace("dlogits", (m, n_exp))
        ops.fill_(dlogits, 0.0)
        flat = self.workspace("flat_idx", (m, k), "int64")
        xp.add(self._idx, self._row_offsets(m), out=flat)  # position of (t, idx[t, j]) in dlogits
        ops.scatter_add_rows(dlogits.reshape(-1, 1), flat.reshape(-1), dtop.reshape(-1, 1))
        if self._aux_loss_scale:
            self._aux_backward(dlogits)
        dx = self.input_grad_buffer((m, self.dim), dy)
        ops.copy_(dx, self.children["gate"].backward(dlogits))

        # Through the experts, each on its block, scatter-added back to its tokens.
        dys *= self._weight
        experts = self.children["experts"]
        start = 0
        for i, n in enumerate(self._counts):
            if n:
                dxe = experts[i].backward(dys[start:start + n])
                ops.scatter_add_rows(dx, self._token[start:start + n], dxe)
            start += n
        return dx.reshape(self._x_shape)

    def set_aux_loss_scale(self, scale: float) -> None:
        """Make the following backward passes add ``scale * d(aux_loss)`` to the gate's gradient (0: none).

        ``train_step`` calls it with ``aux_loss_weight`` before its backward and with 0 after; a custom
        loop that adds ``w * aux_loss`` to its loss calls it with ``w`` itself."""
        self._aux_loss_scale = float(scale)

    def _aux_backward(self, dlogits) -> None:
        """dlogits += s * d(aux)/d(logits) = s * p * (c - p.c), c_i = E f_i / M, f held constant."""
        xp, m, n_exp = self.ops.xp, self._probs.shape[0], self.num_experts
        c = self.workspace("aux_c", (n_exp, 1))
        xp.multiply(self._f.reshape(-1, 1), n_exp / m, out=c)
        pc = xp.matmul(self._probs, c, out=self.workspace("aux_pc", (m, 1)))
        d = xp.subtract(c.reshape(-1), pc, out=self.workspace("aux_d", (m, n_exp)))
        d *= self._probs
        d *= self._aux_loss_scale
        dlogits += d

    def _row_offsets(self, m: int):
        """(M, 1) int64: t * E for token t (the row start of token t in the flattened logits)."""
        rows = self.workspace("row_offsets", (m, 1), "int64")
        if self._offsets_for < m:
            self.ops.copy_(rows, self.ops.arange(m).reshape(m, 1) * self.num_experts)
            self._offsets_for = m
        return rows

    def clear_workspace(self) -> None:
        super().clear_workspace()
        self._reserved = 0  # the experts' workspaces are cleared with ours (model.to, rebuild)
        self._offsets_for = 0

    def extra_repr(self):
        return f"{self.dim}, {self.hidden}, num_experts={self.num_experts}, top_k={self.top_k}"

    def get_config(self):
        return {"dim": self.dim, "hidden": self.hidden, "num_experts": self.num_experts, "top_k": self.top_k,
                "aux_loss_weight": self.aux_loss_weight}
