"""MLP 784-512-256-10, batch 128, Adam, float32: training steps, neuronet vs PyTorch CPU."""

from __future__ import annotations

import harness
import numpy as np

BATCH = 128


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((BATCH, 784)).astype(np.float32), rng.integers(0, 10, BATCH)


def neuronet_model(nn):
    return nn.Sequential(nn.Dense(784, 512, activation="relu"), nn.Dense(512, 256, activation="relu"),
                         nn.Dense(256, 10))


def torch_model():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 10))


neuronet = harness.neuronet_training(neuronet_model, _data)


def pytorch():
    import torch

    x, y = _data()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = torch_model()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    return harness.torch_training_step(model, opt, x, y, torch.nn.CrossEntropyLoss())


ENGINES = harness.standard_engines(neuronet, pytorch)

if __name__ == "__main__":
    harness.main(ENGINES, "MLP 784-512-256-10, batch 128, Adam, float32 (training step)",
                 flops=harness.training_flops(2 * BATCH * (784 * 512 + 512 * 256 + 256 * 10)))
