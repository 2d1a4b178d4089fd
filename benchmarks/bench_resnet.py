"""A small ResNet on MNIST-sized input, float32, training step: neuronet (functional Model) vs PyTorch CPU.

Stem conv16-BN-ReLU, two residual blocks at 16 channels, max-pool, conv32-BN-ReLU, one residual
block at 32 channels, global average pool, fc10; batch 64, Adam. A residual block is
conv-BN-ReLU-conv-BN, added to its input, then ReLU (He et al.'s basic block). neuronet writes each
BN-ReLU as ``BatchNorm2D(c, activation="relu")`` (the ReLU in the normalisation's passes, as the MNIST
CNN's convolutions take ``activation="relu"``) and the join as ``Add(activation="relu")`` (the ReLU over
the sum in place); PyTorch runs them as two modules, ``torch.relu(x + block(x))``. ``python
benchmarks/bench_resnet.py [--threads 1]``.
"""

from __future__ import annotations

import harness
import numpy as np

BATCH = 64


def _data(n: int = BATCH):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def neuronet_model(nn):
    def conv_bn(x, cin, cout, relu=True):  # the ReLU after a BatchNorm runs in its passes
        conv = nn.Conv2D(cin, cout, 3, padding=1, bias=False)(x)
        return nn.BatchNorm2D(cout, activation="relu" if relu else None)(conv)

    def block(x, c):  # the ReLU after the residual sum runs over it in place
        return nn.Add(activation="relu")([x, conv_bn(conv_bn(x, c, c), c, c, relu=False)])

    inp = nn.Input((1, 28, 28))
    h = block(block(conv_bn(inp, 1, 16), 16), 16)
    h = block(conv_bn(nn.MaxPool2D(2)(h), 16, 32), 32)
    return nn.Model(inp, nn.Dense(32, 10)(nn.GlobalAvgPool2D()(h)))


def torch_model():
    import torch
    from torch import nn as tnn

    def conv_bn(cin, cout, relu=True):
        layers = [tnn.Conv2d(cin, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout)]
        return tnn.Sequential(*layers, tnn.ReLU()) if relu else tnn.Sequential(*layers)

    class Block(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = tnn.Sequential(conv_bn(c, c), conv_bn(c, c, relu=False))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    return tnn.Sequential(conv_bn(1, 16), Block(16), Block(16), tnn.MaxPool2d(2), conv_bn(16, 32), Block(32),
                          tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(32, 10))


def pytorch():
    import torch

    model = torch_model()
    x, y = (torch.from_numpy(a) for a in _data())
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    return harness.torch_training_step(model, opt, x, y, torch.nn.CrossEntropyLoss())


neuronet = harness.neuronet_training(neuronet_model, _data)
ENGINES = harness.standard_engines(neuronet, pytorch)

if __name__ == "__main__":
    harness.main(ENGINES, f"small ResNet (3 residual blocks), batch {BATCH}, Adam, float32 "
                 "(training step)", steps=20, warmup=5)
