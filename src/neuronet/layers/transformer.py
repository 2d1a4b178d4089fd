"""Pre-norm Transformer block (PyTorch: nn.TransformerEncoderLayer(norm_first=True, batch_first=True))."""

from __future__ import annotations

import math

from ..core.grad_mode import is_grad_enabled
from ..core.layer import Layer, grad_slots
from .attention import MultiHeadAttention
from .dense import Dense
from .dropout import Dropout
from .normalization import LayerNorm, RMSNorm
from .swiglu import SwiGLU

NORMS = {"layer": LayerNorm, "rms": RMSNorm}
FFNS = ("gelu", "swiglu")
# Elements of the GELU feed-forward's hidden output (N * T * ff) from which the blocks share one buffer for
# it and make it again in backward: nanoGPT at batch 64 (25M) saves 100 MB a block for ~1 % of its step;
# the char GPT's 0.4M would save 1.5 MB for the same 1 % (measured 35.6-35.7 vs 36.0-36.2 ms).
SHARED_HIDDEN_FROM = 1 << 21
_HIDDEN = ("transformer.ffn:", frozenset({"y"}))  # linear1's share_workspaces then


class TransformerBlock(Layer):
    """Two pre-norm residual sub-blocks: attention, then a feed-forward network.

    h = x + dropout1(self_attn(norm1(x)))
    y = h + dropout2(ffn(norm2(h)))
    ffn = linear2(dropout(gelu(linear1 .)))   or, with ffn="swiglu", SwiGLU(dim, ff_dim)
    Backward: dh = dy + d(ffn branch)/dh . dy;  dx = dh + d(attention branch)/dx . dh.

    PyTorch counterpart: ``nn.TransformerEncoderLayer(dim, num_heads, ff_dim, dropout, activation="gelu",
    batch_first=True, norm_first=True)`` called with the causal ``src_mask`` when ``causal``. The LLaMA-style
    variants (``norm="rms"``, ``ffn="swiglu"``, ``rope=True``) have no torch.nn counterpart.

    Args:
        dim (int): model width.
        num_heads (int): attention heads (dim must be divisible by it).
        ff_dim (int): feed-forward hidden width.
        causal (bool, optional): mask future positions. Default: ``False``.
        dropout (float, optional): PyTorch's placement: attention weights, after each sub-block and
            inside the FFN. Default: ``0.0``.
        norm (str, optional): "layer" (LayerNorm, eps 1e-5) or "rms" (RMSNorm, eps 1e-6).
            Default: ``"layer"``.
        ffn (str, optional): "gelu" (exact erf GELU) or "swiglu". Default: ``"gelu"``.
        rope (bool, optional): rotary embeddings on q and k in the attention. Default: ``False``.
    Shape:
        x: (N, T, dim) -> y: (N, T, dim)
    Parameters:
        self_attn.* (MultiHeadAttention); linear1.* (ff_dim, dim) and linear2.* (dim, ff_dim), or
        ffn.w1/w2/w3.weight; norm1.weight/bias, norm2.weight/bias (no bias for RMSNorm).
    Saved for backward:
        the residual h (workspace); the sub-layers keep their own, except linear1's output (GELU
        feed-forward) from SHARED_HIDDEN_FROM elements: one buffer for every block on the thread, made
        again in backward from linear1's pre-activation and the dropout mask. Under ``nn.no_grad()``
        only the output y is the block's own: h and the sub-layers' buffers are shared by every block
        (``Layer.share_workspaces_under_no_grad``).
    """

    def __init__(self, dim: int, num_heads: int, ff_dim: int, causal: bool = False, dropout: float = 0.0,
                 norm: str = "layer", ffn: str = "gelu", rope: bool = False):
        super().__init__()
        self.dim, self.num_heads, self.ff_dim = int(dim), int(num_heads), int(ff_dim)
        self.causal, self.dropout, self.norm, self.ffn, self.rope = \
            bool(causal), float(dropout), str(norm), str(ffn), bool(rope)
        if self.norm not in NORMS:
            raise ValueError(f"{self!r}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if self.ffn not in FFNS:
            raise ValueError(f"{self!r}: ffn must be one of {', '.join(FFNS)}, got {ffn!r}")
        MultiHeadAttention(dim, num_heads, causal, dropout, rope)  # validate the heads now, not at build

    def setup(self, input_shape):
        d, p = self.dim, self.dropout
        attn = MultiHeadAttention(d, self.num_heads, self.causal, p, self.rope)
        self.add_child("self_attn", attn, input_shape)
        if self.ffn == "gelu":
            hidden = self.add_child("linear1", Dense(d, self.ff_dim, activation="gelu"), input_shape)
            self.add_child("dropout", Dropout(p, inplace=True), hidden)  # (GELU's backward reads z, not y)
            self.add_child("linear2", Dense(self.ff_dim, d), hidden)
            self._ffn = [self.children[k] for k in ("linear1", "dropout", "linear2")]
        else:
            self.add_child("ffn", SwiGLU(d, self.ff_dim), input_shape)
            self._ffn = [self.children["ffn"]]
        norm = NORMS[self.norm]
        self.add_child("norm1", norm(d), input_shape)
        self.add_child("norm2", norm(d), input_shape)
        # Each dropout writes over its input, which nothing reads afterwards: the attention's and linear2's
        # outputs (linear layers, whose backward reads their input, not their output) and the GELU's.
        self.add_child("dropout1", Dropout(p, inplace=True), input_shape)
        self.add_child("dropout2", Dropout(p, inplace=True), input_shape)
        return input_shape

    def check_input(self, x):
        self.children["self_attn"].check_input(x)

    def _branch(self, layers: list[Layer], x, training: bool):
        for layer in layers:
            x = layer.forward(x, training)
        return x

    def _branch_backward(self, layers: list[Layer], dy):
        for layer in reversed(layers):
            dy = layer.backward(dy)
        return dy

    def forward(self, x, training: bool = True):
        c, ops = self.children, self.ops
        self.share_workspaces_under_no_grad()  # (predict: the blocks' layers share their buffers)
        self._remake_hidden = self.ffn == "gelu" and self._share_hidden(math.prod(x.shape[:-1]))
        attn = [c["norm1"], c["self_attn"], c["dropout1"]]
        ffn = [c["norm2"], *self._ffn, c["dropout2"]]
        # h: kept for backward; under no_grad read only within this call (no child asks for this name)
        h = self.workspace("h", tuple(x.shape)) if is_grad_enabled() else \
            self.temporary("transformer.h", tuple(x.shape))
        ops.add(x, self._branch(attn, x, training), out=h)
        y = self.workspace("y", tuple(x.shape))
        ops.add(h, self._branch(ffn, h, training), out=y)
        return y

    def _share_hidden(self, rows: int) -> bool:
        """Whether linear1's output (rows, ff), which linear2 reads in forward and backward, is this call's
        one buffer for every block on the thread (backward then makes it again from linear1's z and the
        dropout mask): from SHARED_HIDDEN_FROM elements, where it is memory worth a pass. Not inside a
        Remat, whose block shares all its buffers and runs forward again before backward anyway."""
        linear1 = self.children["linear1"]
        now = linear1.__dict__.get("_shared_workspaces")
        if now is not None and now != _HIDDEN:  # an outer Remat's
            return False
        share = rows * self.ff_dim >= SHARED_HIDDEN_FROM
        if (now == _HIDDEN) != share:
            linear1.share_workspaces(*(_HIDDEN if share else (None,)))
        return share

    def share_input_grads(self, depth: int) -> None:
        # The children's dL/dx go straight to the next child or into dh/dx here: the shared temporaries
        # of this depth (dy, from the level above, is not among them).
        for child in self.children.values():
            child._grad_slots = grad_slots(depth)
            child.share_input_grads(depth + 1)

    def backward(self, dy):
        self.check_activations_kept()
        c, ops = self.children, self.ops
        if self._remake_hidden:  # linear2's input, dropout(gelu(z)), in the shared buffer again
            c["dropout"].reapply(c["linear1"].recompute_output())
        dh = self.temporary("transformer.dh", tuple(dy.shape))  # (no child asks for this name)
        ops.add(dy, self._branch_backward([c["norm2"], *self._ffn, c["dropout2"]], dy), out=dh)
        dx = self.input_grad_buffer(tuple(dy.shape), dy)
        ops.add(dh, self._branch_backward([c["norm1"], c["self_attn"], c["dropout1"]], dh), out=dx)
        return dx

    def extra_repr(self):
        opts = [("causal", self.causal, False), ("dropout", self.dropout, 0.0), ("norm", self.norm, "layer"),
                ("ffn", self.ffn, "gelu"), ("rope", self.rope, False)]
        extra = "".join(f", {k}={v!r}" for k, v, default in opts if v != default)
        return f"{self.dim}, {self.num_heads}, {self.ff_dim}{extra}"

    def get_config(self):
        return {"dim": self.dim, "num_heads": self.num_heads, "ff_dim": self.ff_dim, "causal": self.causal,
                "dropout": self.dropout, "norm": self.norm, "ffn": self.ffn, "rope": self.rope}
