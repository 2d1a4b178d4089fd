"""MoE training step: Dense(64,64) -> MoE top-2 of 4 experts (64-256-64 GELU) -> Dense(64,10), batch 256.

neuronet's MoE vs the same sparse dispatch written plainly in PyTorch (gather each expert's tokens,
run it, index_add the weighted output back), each engine in its own process.
"""

from __future__ import annotations

import harness
import numpy as np

BATCH, DIM, HIDDEN, EXPERTS, TOP_K, CLASSES = 256, 64, 256, 4, 2, 10


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((BATCH, DIM)).astype(np.float32), rng.integers(0, CLASSES, BATCH)


neuronet = harness.neuronet_training(lambda nn: nn.Sequential(
    nn.Dense(DIM, DIM), nn.MoE(DIM, HIDDEN, EXPERTS, TOP_K), nn.Dense(DIM, CLASSES)), _data)


def pytorch():
    import torch
    import torch.nn.functional as F

    class MoE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = torch.nn.Linear(DIM, EXPERTS, bias=False)
            self.experts = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.GELU(),
                                    torch.nn.Linear(HIDDEN, DIM))
                for _ in range(EXPERTS))

        def forward(self, x):
            logits = self.gate(x)
            weights, chosen = torch.topk(logits, TOP_K, dim=-1)
            weights = torch.softmax(weights, dim=-1)
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                token, slot = torch.where(chosen == e)
                if len(token):
                    out.index_add_(0, token, weights[token, slot, None] * expert(x[token]))
            f = torch.bincount(chosen[:, 0], minlength=EXPERTS).float() / len(x)
            self.aux_loss = EXPERTS * (f * torch.softmax(logits, dim=-1).mean(0)).sum()
            return out

    x, y = _data()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    moe = MoE()
    model = torch.nn.Sequential(torch.nn.Linear(DIM, DIM), moe, torch.nn.Linear(DIM, CLASSES))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    return harness.torch_training_step(
        model, opt, x, y, lambda logits, target: F.cross_entropy(logits, target) + 0.01 * moe.aux_loss)


ENGINES = harness.standard_engines(neuronet, pytorch)

if __name__ == "__main__":
    harness.main(ENGINES, "MoE Dense(64,64) -> top-2 of 4 experts (64-256-64 GELU) -> Dense(64,10), "
                          "batch 256, Adam (training step)",
                 flops=harness.training_flops(
                     2 * BATCH * (DIM * DIM + DIM * EXPERTS + TOP_K * 2 * DIM * HIDDEN + DIM * CLASSES)))
