"""Multi-head scaled dot-product self-attention (PyTorch: nn.MultiheadAttention(batch_first=True))."""

from __future__ import annotations

import math

import numpy as np

from ..core import args
from ..core import initializers as init
from ..core import random as nnrandom
from ..core.grad_mode import backward_after_no_grad, is_grad_enabled
from ..core.layer import Layer, ShapeError, grad_slots
from .dense import Dense

BLOCK_WORK = 1 << 20  # attention multiply-adds (per matrix product) of one sample block on its own thread


class MultiHeadAttention(Layer):
    """Self-attention with ``num_heads`` heads of size hd = dim / num_heads.

    [q, k, v] = x @ in_proj_weight.T + in_proj_bias, split into heads    (N, H, T, hd) each
    q, k <- rope(q), rope(k)                                              (only with ``rope``)
    P = softmax(q k^T / sqrt(hd) + mask)                                  (N, H, T, T); mask = -inf above the
                                                                          diagonal when ``causal``
    y = out_proj(concat_heads(dropout(P) v))
    Backward: dv = P^T do, dP = do v^T, dS = P (dP - rowsum(dP P)) / sqrt(hd),
              dq = dS k, dk = dS^T q.
    The heads are strided views of the (N*T, 3 dim) projection: no transposing copies.

    PyTorch counterpart: ``nn.MultiheadAttention(dim, num_heads, dropout, batch_first=True)`` called as
    ``mha(x, x, x, attn_mask=causal_mask, need_weights=False)``.

    Cross-attention: called on a list ``[query, key_value]`` (in a functional model), q comes from
    rows [0:dim] of ``in_proj_weight`` applied to ``query`` and k, v from rows [dim:3 dim] applied to
    ``key_value``: PyTorch's ``mha(query, key_value, key_value)``. Neither ``causal`` nor ``rope``.

    Args:
        dim (int): model width D (divisible by ``num_heads``).
        num_heads (int): number of heads H.
        causal (bool, optional): position t attends to positions <= t only. Default: ``False``.
        dropout (float, optional): dropout on the attention weights while training. Default: ``0.0``.
        rope (bool, optional): rotary position embedding of q and k (LLaMA's rotate-half pairing of
            dimension i with i + hd/2, base 10000, positions from 0; tables are not parameters).
            Default: ``False``.
    Shape:
        x: (N, T, dim) -> y: (N, T, dim); cross: [(N, Tq, dim), (N, Tk, dim)] -> (N, Tq, dim) and
        dL/dx is the list [dL/dquery, dL/dkey_value].
    Parameters:
        in_proj_weight (3 dim, dim), in_proj_bias (3 dim), out_proj.weight (dim, dim), out_proj.bias (dim).
    Saved for backward:
        x (by reference); the q, k, v projection (rotated q, k with ``rope``), P and the dropout mask
        (workspace). Under ``nn.no_grad()`` not P: the largest, N H T^2 values a layer.
    """

    def __init__(self, dim: int, num_heads: int, causal: bool = False, dropout: float = 0.0,
                 rope: bool = False):
        super().__init__()
        owner = "MultiHeadAttention"
        self.dim, self.num_heads = args.size(owner, "dim", dim), args.size(owner, "num_heads", num_heads)
        self.causal, self.rope = args.flag(owner, "causal", causal), args.flag(owner, "rope", rope)
        self.dropout = args.real(owner, "dropout", dropout, 0.0, 1.0, hi_open=True)
        if self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"{self!r}: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        self.head_dim = self.dim // self.num_heads
        if self.rope and self.head_dim % 2:
            raise ValueError(f"{self!r}: rope needs an even head size, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{self!r}: dropout must be in [0, 1), got {self.dropout}")

    def setup(self, input_shape):
        self.cross = bool(input_shape) and not isinstance(input_shape[0], int)
        if self.cross:  # [query, key_value]
            if len(input_shape) != 2:
                raise ShapeError(f"{self!r}: cross-attention takes [query, key_value], got "
                                 f"{len(input_shape)} inputs")
            for shape, what in zip(input_shape, ("query", "key_value"), strict=True):
                self.check_shape(shape, what)
            if self.causal or self.rope:
                raise ValueError(f"{self!r}: cross-attention ([query, key_value]) takes neither causal "
                                 "nor rope")
            input_shape = input_shape[0]
        else:
            self.check_shape(tuple(input_shape))
        d = self.dim
        self.add_param("in_proj_weight", (3 * d, d), init.xavier_uniform(d, 3 * d))
        self.add_param("in_proj_bias", (3 * d,), init.zeros)
        self.add_child("out_proj", Dense(d, d), input_shape)
        return input_shape

    def check_shape(self, shape: tuple, what: str = "input") -> None:
        """``shape`` is (T, dim) without the batch."""
        if len(shape) != 2 or shape[-1] != self.dim:
            raise ShapeError(f"{self!r}: expected {what} of shape (N, T, {self.dim}) (the embedding size "
                             f"{self.dim}), got (N, {', '.join(map(str, shape))})")

    def check_input(self, x):
        if self.cross:
            if not isinstance(x, (list, tuple)) or len(x) != 2:
                raise ShapeError(f"{self!r}: built for cross-attention, expected [query, key_value]")
            for xi, what in zip(x, ("query", "key_value"), strict=True):
                self.check_shape(tuple(xi.shape[1:]), what)
        else:
            self.check_shape(tuple(x.shape[1:]))

    # ----------------------------------------------------------------- forward
    def forward(self, x, training: bool = True):
        if self.cross:
            return self._forward_cross(x, training)
        ops = self.ops
        n, t, d = x.shape
        self._shape = (n, t, d)
        self._x = x.reshape(n * t, d)
        qkv = self.workspace("qkv", (n * t, 3 * d))
        ops.linear(self._x, self.params["in_proj_weight"], self.params["in_proj_bias"], "linear", qkv, qkv)
        q, k, v = self._heads(qkv, 3)  # views: the GEMMs below read the heads in place
        if self.rope:
            cos, sin, _ = self._rope_tables(t)
            q, k = self._rotate(q, "q_rot", cos, sin), self._rotate(k, "k_rot", cos, sin)
        ctx = self._attend(q, k, v, training)
        return self.children["out_proj"].forward(ctx.reshape(n, t, d), training)

    def _forward_cross(self, x, training: bool):
        """q from ``query`` with rows [0:dim] of the packed projection, k and v from ``key_value``."""
        ops = self.ops
        (n, t, d), tk = x[0].shape, x[1].shape[1]
        self._shape, self._tk = (n, t, d), tk
        self._x, self._xkv = x[0].reshape(n * t, d), x[1].reshape(n * tk, d)
        w, b = self.params["in_proj_weight"], self.params["in_proj_bias"]
        q_rows, kv_rows = self.workspace("q", (n * t, d)), self.workspace("kv", (n * tk, 2 * d))
        ops.linear(self._x, w[:d], b[:d], "linear", q_rows, q_rows)
        ops.linear(self._xkv, w[d:], b[d:], "linear", kv_rows, kv_rows)
        k, v = self._heads(kv_rows, 2, tk)
        ctx = self._attend(self._heads(q_rows, 1)[0], k, v, training)
        return self.children["out_proj"].forward(ctx.reshape(n, t, d), training)

    def _attend(self, q, k, v, training: bool):
        """Heads (N, H, Tq, hd), (N, H, Tk, hd) x2 -> the (N*Tq, dim) rows of concat_heads(dropout(P) v).
        The samples never meet: they run in ``ops.row_blocks``, at once where the backend can. P is kept
        for backward (workspace ``probs``, (N, H, Tq, Tk)) except under ``nn.no_grad()``, where it passes
        through the backend's scratch (on NumPy one head's (Tq, Tk) at a time). Without dropout, where the
        backend has a fused kernel for these operands (``ops.fused_attention``: on a GPU), that kernel's
        output is the result and its saved state (no P) what the backward reads."""
        ops = self.ops
        n, t, d = self._shape
        self._drop = training and self.dropout > 0.0
        fused = None if self._drop else ops.fused_attention(q, k, v, self.causal, self._scale())
        keep = is_grad_enabled()  # (a backward follows)
        self._q, self._k, self._v, self._probs = q, k, v, None
        self._sdpa_saved = fused if keep else None
        if fused is not None:  # one kernel, no probabilities (on a GPU: the memory-efficient kernel)
            return ops.swapaxes(fused[0], 1, 2).reshape(n * t, d)
        shape = (n, self.num_heads, t, k.shape[2])
        probs = self.workspace("probs", shape) if keep else None
        mask = self.workspace("mask", shape, bool) if self._drop else None
        if mask is not None:  # drawn whole, before the blocks: the same masks for any split
            ops.dropout_mask(1.0 - self.dropout, nnrandom.generator(), mask, self.dtype)
        ctx = self.workspace("ctx", (n * t, d))
        ctx_heads = self._heads(ctx, 1)[0]

        def block(rows):
            ops.attention(q[rows], k[rows], v[rows], None if probs is None else probs[rows], ctx_heads[rows],
                          self.causal, self._scale(), None if mask is None else mask[rows],
                          self._keep_scale(), self.temporary)
        self._in_sample_blocks(block)
        self._probs = probs
        return ctx

    def _in_sample_blocks(self, block) -> None:
        """Run block(rows) over the samples in row blocks, each block with at least BLOCK_WORK
        multiply-adds of attention (a region costs about as much as 3M)."""
        n, t, _ = self._shape
        per_sample = self.num_heads * t * self._kv_len() * self.head_dim
        self.in_row_blocks(n, block, min_rows=-(-BLOCK_WORK // per_sample))

    def _scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    def _keep_scale(self) -> float:
        return 1.0 / (1.0 - self.dropout)

    def _kv_len(self) -> int:
        return self._tk if self.cross else self._shape[1]

    def _heads(self, rows, parts: int, t: int | None = None):
        """(N*T, parts*dim) rows as ``parts`` (N, H, T, hd) views (no copy); T: the query's by default."""
        n, tq, _ = self._shape
        t = tq if t is None else t
        split = rows.reshape(n, t, parts, self.num_heads, self.head_dim)
        return [self.ops.swapaxes(split[:, :, i], 1, 2) for i in range(parts)]

    # ----------------------------------------------------------------- backward
    def share_input_grads(self, depth: int) -> None:
        # out_proj's dL/dx (dL/dctx) is read here and nowhere else: a shared temporary of this depth
        self.children["out_proj"]._grad_slots = grad_slots(depth)

    def backward(self, dy):
        if self._probs is None and self._sdpa_saved is None:  # (before out_proj adds its gradients)
            raise backward_after_no_grad(self, "attention probabilities")
        ops = self.ops
        n, t, d = self._shape
        dctx = self.children["out_proj"].backward(dy)
        do = self._heads(dctx.reshape(n * t, d), 1)[0]
        if self.cross:
            return self._backward_cross(do)
        dqkv = self.temporary("dqkv", (n * t, 3 * d))
        dq, dk, dv = self._heads(dqkv, 3)
        self._attend_backward(do, dq, dk, dv)
        if self.trainable:  # frozen: no weight gradients (out_proj, a child, decides for itself)
            ops.sum_rows_acc(dqkv, self.grads["in_proj_bias"])
        dx = self.input_grad_buffer((n * t, d), dy)
        ops.linear_grads(dqkv, self._x, self.params["in_proj_weight"],
                         self.grads["in_proj_weight"] if self.trainable else None, dx,
                         self.temporary("dw", (3 * d, d)))
        return dx.reshape(n, t, d)

    def _backward_cross(self, do):
        """The weight gradients of both projections, then [dL/dquery, dL/dkey_value]."""
        ops = self.ops
        (n, t, d), tk = self._shape, self._tk
        dq_rows, dkv_rows = self.temporary("dq_rows", (n * t, d)), self.temporary("dkv_rows", (n * tk, 2 * d))
        self._attend_backward(do, self._heads(dq_rows, 1)[0], *self._heads(dkv_rows, 2, tk))
        w, gw, gb = self.params["in_proj_weight"], self.grads["in_proj_weight"], self.grads["in_proj_bias"]
        if self.trainable:
            ops.sum_rows_acc(dq_rows, gb[:d])
            ops.sum_rows_acc(dkv_rows, gb[d:])
        dxq, dxkv = (self.workspace("dx", (n * t, d)), self.workspace("dx_kv", (n * tk, d))) \
            if self.needs_input_grad else (None, None)
        ops.linear_grads(dq_rows, self._x, w[:d], gw[:d] if self.trainable else None, dxq,
                         self.temporary("dw", (d, d)))
        ops.linear_grads(dkv_rows, self._xkv, w[d:], gw[d:] if self.trainable else None, dxkv,
                         self.temporary("dw_kv", (2 * d, d)))
        if not self.needs_input_grad:
            return None
        dxs = self.__dict__.setdefault("_dxs", [None, None])
        dxs[0], dxs[1] = dxq.reshape(n, t, d), dxkv.reshape(n, tk, d)
        return dxs

    def _attend_backward(self, do, dq, dk, dv) -> None:
        """From dL/d(attention output heads) to dL/dq, dL/dk, dL/dv (head views, written in place), in
        the same sample blocks as the forward."""
        ops = self.ops
        probs, q, k, v = self._probs, self._q, self._k, self._v
        # with rope, the gradients of the rotated q, k first, then rotated back into dqkv
        gq, gk = (self.workspace(name, tuple(dq.shape)) for name in ("dq_rot", "dk_rot")) if self.rope \
            else (dq, dk)
        if self._sdpa_saved is not None:
            out, saved = self._sdpa_saved
            ops.fused_attention_backward(do, q, k, v, out, saved, gq, gk, dv, self.causal, self._scale())
        else:
            mask = self.workspace("mask", tuple(probs.shape), bool) if self._drop else None

            def block(rows):
                ops.attention_backward(do[rows], probs[rows], q[rows], k[rows], v[rows], gq[rows], gk[rows],
                                       dv[rows], self.causal, self._scale(),
                                       None if mask is None else mask[rows], self._keep_scale(),
                                       self.temporary)
            self._in_sample_blocks(block)
        if self.rope:
            # the transpose of a rotation is the rotation by -angle
            cos, _, neg_sin = self._rope_tables(self._shape[1])
            self._rotate(gq, "dq", cos, neg_sin, out=dq)
            self._rotate(gk, "dk", cos, neg_sin, out=dk)

    # ----------------------------------------------------------------- rotary embedding
    def _rope_tables(self, t: int):
        """cos, sin and -sin of angle[p, i] = p * 10000^(-2i/hd), shape (t, hd/2), on this backend."""
        cached = self.__dict__.get("_rope")
        if cached is None or cached[0].shape[0] < t or not self.ops.is_array(cached[0]) or \
                self.ops.dtype_name(cached[0]) != str(self.dtype):
            half = self.head_dim // 2
            angle = np.arange(t)[:, None] * 10000.0 ** (-np.arange(half) * 2.0 / self.head_dim)
            cached = self._rope = tuple(self.ops.asarray(a.astype(self.dtype))
                                        for a in (np.cos(angle), np.sin(angle), -np.sin(angle)))
        return tuple(a[:t] for a in cached)

    def _rotate(self, src, name: str, cos, sin, out=None):
        """out = src * [cos, cos] + rotate_half(src) * [sin, sin], rotate_half([a, b]) = [-b, a]."""
        xp, half = self.ops.xp, self.head_dim // 2
        out = self.workspace(name, tuple(src.shape)) if out is None else out
        tmp = self.workspace("rope_tmp", (*src.shape[:-1], half))
        a, b = src[..., :half], src[..., half:]
        xp.multiply(a, cos, out=out[..., :half])
        xp.multiply(b, sin, out=tmp)
        out[..., :half] -= tmp
        xp.multiply(b, cos, out=out[..., half:])
        xp.multiply(a, sin, out=tmp)
        out[..., half:] += tmp
        return out

    def extra_repr(self):
        extra = "".join(f", {k}={v!r}" for k, v in (("causal", self.causal), ("dropout", self.dropout),
                                                       ("rope", self.rope)) if v)
        return f"{self.dim}, {self.num_heads}{extra}"

    def get_config(self):
        return {"dim": self.dim, "num_heads": self.num_heads, "causal": self.causal, "dropout": self.dropout,
                "rope": self.rope}
