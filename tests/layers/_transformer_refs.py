"""PyTorch references, written from the formulas, for the LLaMA-style variants (no torch.nn counterpart).

Parameter names match neuronet's, so ``compare_with_torch`` loads their state_dict directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rope(x: torch.Tensor) -> torch.Tensor:
    """LLaMA rotary embedding of (N, H, T, hd): x cos + rotate_half(x) sin, base 10000, positions from 0."""
    hd, t = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / 10000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    freqs = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1).to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


class SelfAttention(torch.nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameters, optionally causal and rotary."""

    def __init__(self, dim: int, heads: int, causal: bool, use_rope: bool):
        super().__init__()
        self.heads, self.causal, self.use_rope = heads, causal, use_rope
        self.in_proj_weight = torch.nn.Parameter(torch.randn(3 * dim, dim) / math.sqrt(dim))
        self.in_proj_bias = torch.nn.Parameter(torch.randn(3 * dim) * 0.1)
        self.out_proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (a.reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for a in (q, k, v))
        if self.use_rope:
            q, k = rope(q), rope(k)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(o.transpose(1, 2).reshape(n, t, d))


class SwiGLU(torch.nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = torch.nn.Linear(dim, hidden, bias=False)
        self.w2 = torch.nn.Linear(hidden, dim, bias=False)
        self.w3 = torch.nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(torch.nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then + ffn(norm2(.)), with any norm/ffn/rope combination."""

    def __init__(self, dim: int, heads: int, ff: int, causal: bool, norm: str, ffn: str, use_rope: bool):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, causal, use_rope)
        if ffn == "swiglu":
            self.ffn = SwiGLU(dim, ff)
        else:
            self.linear1, self.linear2 = torch.nn.Linear(dim, ff), torch.nn.Linear(ff, dim)
        rms = norm == "rms"
        make = (lambda: torch.nn.RMSNorm(dim, eps=1e-6)) if rms else (lambda: torch.nn.LayerNorm(dim))
        self.norm1, self.norm2 = make(), make()
        self.use_swiglu = ffn == "swiglu"

    def forward(self, x):
        x = x + self.self_attn(self.norm1(x))
        h = self.norm2(x)
        return x + (self.ffn(h) if self.use_swiglu else self.linear2(F.gelu(self.linear1(h))))
