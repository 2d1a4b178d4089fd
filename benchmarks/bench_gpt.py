"""Char GPT (vocab 65, block 64, 4 layers, 4 heads, width 128, ff 512), batch 12, AdamW: training steps.

The same model in PyTorch: nn.Embedding + a learned position table + 4 nn.TransformerEncoderLayer(
norm_first=True, activation="gelu", batch_first=True, dropout=0) with the causal mask + LayerNorm + Linear,
cross-entropy on (N, T, V) logits.

Measured 2026-11-24 on the 2-core machine, quiet, 5 rounds x 30 steps, default (2) threads: neuronet-numpy
41.0 ms/step (1.10x PyTorch's speed), neuronet-torch 45.1 ms (0.99x), PyTorch 44.9 ms. With ``--threads 1``:
1.35x (66.7 against 90.0 ms). The NumPy step: GEMMs are ~75 % of it; the per-head attention matmuls
(48 small 64x32x64 products per call, one thread each in NumPy, two in PyTorch) are the largest gap left.
"""

from __future__ import annotations

import harness
import numpy as np

VOCAB, BLOCK, LAYERS, HEADS, DIM, FF, BATCH = 65, 64, 4, 4, 128, 512, 12


def _data():
    rng = np.random.default_rng(0)
    return rng.integers(0, VOCAB, (BATCH, BLOCK)), rng.integers(0, VOCAB, (BATCH, BLOCK))


def neuronet_gpt(vocab: int, block: int, layers: int, heads: int, dim: int, ff: int, dropout: float = 0.0,
                 remat: bool = False):
    """make_model(nn) for harness.neuronet_training: embeddings, pre-norm causal blocks (each in nn.Remat
    with ``remat``), LayerNorm, head."""
    def make(nn):
        wrap = nn.Remat if remat else (lambda layer: layer)
        return nn.Sequential(
            nn.Embedding(vocab, dim), nn.PositionalEncoding(block, dim, learned=True),
            *([nn.Dropout(dropout)] if dropout else []),
            *[wrap(nn.TransformerBlock(dim, heads, ff, causal=True, dropout=dropout)) for _ in range(layers)],
            nn.LayerNorm(dim), nn.Dense(dim, vocab))
    return make


def torch_gpt(vocab: int, block: int, layers: int, heads: int, dim: int, ff: int, dropout: float = 0.0,
              checkpoint: bool = False):
    """The same GPT as a torch.nn.Module; with ``checkpoint`` each block runs under torch.utils.checkpoint
    (its activations recomputed in backward)."""
    import torch
    from torch.utils.checkpoint import checkpoint as recomputed

    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = torch.nn.Embedding(vocab, dim)
            self.pos = torch.nn.Parameter(torch.randn(block, dim) * 0.02)
            self.drop = torch.nn.Dropout(dropout)
            self.blocks = torch.nn.ModuleList(torch.nn.TransformerEncoderLayer(
                dim, heads, ff, dropout=dropout, activation="gelu", batch_first=True, norm_first=True)
                for _ in range(layers))
            self.norm = torch.nn.LayerNorm(dim)
            self.head = torch.nn.Linear(dim, vocab)
            self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(block))

        def forward(self, idx):
            h = self.drop(self.tok(idx) + self.pos[: idx.shape[1]])
            for layer in self.blocks:
                if checkpoint:
                    h = recomputed(layer, h, self.mask, None, True, use_reentrant=False)
                else:
                    h = layer(h, src_mask=self.mask, is_causal=True)
            return self.head(self.norm(h))

    return GPT()


def pytorch_gpt(data, vocab: int, block: int, layers: int, heads: int, dim: int, ff: int,
                dropout: float = 0.0, checkpoint: bool = False):
    """build() of ``torch_gpt``'s training step (AdamW, lr 1e-3)."""
    def build():
        import torch

        x, y = (torch.from_numpy(a) for a in data())
        model = torch_gpt(vocab, block, layers, heads, dim, ff, dropout, checkpoint)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        cross_entropy = torch.nn.CrossEntropyLoss()
        return harness.torch_training_step(
            model, opt, x, y, lambda logits, target: cross_entropy(logits.reshape(-1, vocab),
                                                                   target.reshape(-1)))
    return build


SHAPE = dict(vocab=VOCAB, block=BLOCK, layers=LAYERS, heads=HEADS, dim=DIM, ff=FF)
neuronet = harness.neuronet_training(neuronet_gpt(**SHAPE), _data, optimizer="AdamW")
pytorch = pytorch_gpt(_data, **SHAPE)


ENGINES = harness.standard_engines(neuronet, pytorch)

if __name__ == "__main__":
    harness.main(ENGINES, "char GPT 4 x (128 wide, 4 heads, ff 512), block 64, batch 12, AdamW, float32 "
                 "(training step)", steps=30, warmup=5,
                 flops=harness.training_flops(
                     harness.transformer_forward_flops(BATCH, BLOCK, DIM, FF, LAYERS, VOCAB)))
