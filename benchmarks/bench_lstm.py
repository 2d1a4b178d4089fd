"""Sequential-MNIST LSTM (28 steps x 28 features -> 128 hidden -> Dense 10), batch 64, Adam, float32:
training steps, neuronet vs PyTorch nn.LSTM (CPU).

Measured 2026-11-24 on the 2-core machine, quiet, 3 rounds: neuronet-numpy 7.97 ms/step (1.11x PyTorch's
speed), neuronet-torch 0.57x, PyTorch 8.82 ms; with ``--threads 1``: 1.24x. 2026-12-07 (f3242d7, the input
product and weight gradients inside the time loops): neuronet-numpy 4.78 ms, 1.32x (PyTorch 6.19 ms);
``--threads 1`` 7.91 ms, 1.10x.
"""

from __future__ import annotations

import harness
import numpy as np

BATCH, STEPS, FEATURES, HIDDEN, CLASSES = 64, 28, 28, 128, 10


def _data():
    rng = np.random.default_rng(0)
    return rng.random((BATCH, STEPS, FEATURES), dtype=np.float32), rng.integers(0, CLASSES, BATCH)


def neuronet_model(nn):
    return nn.Sequential(nn.LSTM(FEATURES, HIDDEN), nn.Dense(HIDDEN, CLASSES))


def torch_model():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            return self.head(self.lstm(x)[1][0][-1])

    return Net()


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
    harness.main(ENGINES, "LSTM 28x28 -> 128 -> 10 (sequential MNIST), batch 64, Adam, float32 (train step)",
                 flops=harness.training_flops(
                     2 * BATCH * (STEPS * 4 * HIDDEN * (FEATURES + HIDDEN) + HIDDEN * CLASSES)))
