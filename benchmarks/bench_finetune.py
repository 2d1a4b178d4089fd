"""Fine-tuning step time: the MNIST CNN of bench_cnn.py with frozen layers vs all trainable (batch 64, Adam).

Engines, each in its own process (neuronet on the NumPy backend, and PyTorch with requires_grad=False):

    all-trainable       every layer trains
    frozen-convs        both conv layers frozen (their backward is skipped altogether: they are at the bottom)
    frozen-backbone     everything but the last Dense frozen
    groups-lr/10        every layer trains, the convs in a parameter group at lr / 10
    pytorch-all         torch.optim.Adam, every parameter
    pytorch-frozen-convs  requires_grad_(False) on both convs
"""

from __future__ import annotations

import harness
from bench_cnn import TRAIN_BATCH, _data, neuronet_model, torch_model


def neuronet(frozen: tuple[int, ...] = (), groups=None):
    def build():
        import neuronet as nn

        model = neuronet_model(nn)
        model.build((1, 28, 28))
        for i in frozen:
            model[i].trainable = False
        model.compile(nn.Adam(1e-3, groups=groups), nn.CrossEntropyLoss())
        x, y = _data(TRAIN_BATCH)
        return lambda: model.train_step(x, y)
    return build


def pytorch(frozen: tuple[int, ...] = ()):
    def build():
        import torch

        model = torch_model()
        for i in frozen:
            model[i].requires_grad_(False)
        x, y = (torch.from_numpy(a) for a in _data(TRAIN_BATCH))
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
        return harness.torch_training_step(model, opt, x, y, torch.nn.CrossEntropyLoss())
    return build


ENGINES = {
    "all-trainable": neuronet(),
    "frozen-convs": neuronet((0, 2)),
    "frozen-backbone": neuronet((0, 2, 5)),
    "groups-lr/10": neuronet(groups=[{"params": ["0.*", "2.*"], "lr": 1e-4}]),
    "pytorch-all": pytorch(),
    "pytorch-frozen-convs": pytorch((0, 3)),
}

if __name__ == "__main__":
    harness.main(ENGINES, title=f"MNIST CNN fine-tuning step, batch {TRAIN_BATCH}, Adam, float32", steps=30,
                 warmup=5)
