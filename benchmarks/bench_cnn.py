"""MNIST CNN (conv32-pool-conv64-pool-fc128-fc10), float32: neuronet vs PyTorch CPU.

Two workloads, each its own harness run: a training step (batch 64, Adam) and inference
(``predict`` on a batch of 256). ``python benchmarks/bench_cnn.py`` runs both; set
``NEURONET_BENCH_MODE=train`` (or ``predict``) to run one.
"""

from __future__ import annotations

import os

import harness
import numpy as np

TRAIN_BATCH, PREDICT_BATCH = 64, 256


def _data(n: int):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def neuronet_model(nn):
    return nn.Sequential(
        nn.Conv2D(1, 32, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
        nn.Conv2D(32, 64, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(3136, 128, activation="relu"), nn.Dense(128, 10))


def torch_model():
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(3136, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def neuronet_predict(backend: str):
    def build():
        import neuronet as nn

        model = neuronet_model(nn)
        model.build((1, 28, 28))
        model.to(backend)
        x, _ = _data(PREDICT_BATCH)
        return lambda: model.predict(x, batch_size=PREDICT_BATCH)
    return build


def pytorch(mode: str):
    def build():
        import torch

        model = torch_model()
        if mode == "predict":
            x = torch.from_numpy(_data(PREDICT_BATCH)[0])
            model.eval()

            def infer():
                with torch.inference_mode():
                    return model(x).numpy()
            return infer
        x, y = (torch.from_numpy(a) for a in _data(TRAIN_BATCH))
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        return harness.torch_training_step(model, opt, x, y, torch.nn.CrossEntropyLoss())
    return build


def forward_flops(n: int) -> float:
    """conv1 (1->32, 3x3 on 28x28), conv2 (32->64, 3x3 on 14x14), fc 3136->128->10."""
    return 2.0 * n * (28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 * 10)


FLOPS = {"train": harness.training_flops(forward_flops(TRAIN_BATCH)), "predict": forward_flops(PREDICT_BATCH)}
TITLES = {"train": f"MNIST CNN, batch {TRAIN_BATCH}, Adam, float32 (training step)",
          "predict": f"MNIST CNN, batch {PREDICT_BATCH}, float32 (inference: predict)"}


def engines(mode: str) -> dict:
    if mode == "predict":
        return harness.standard_engines(neuronet_predict, pytorch(mode), training=False)
    return harness.standard_engines(harness.neuronet_training(neuronet_model, lambda: _data(TRAIN_BATCH)),
                                    pytorch(mode))


if __name__ == "__main__":
    modes = [os.environ["NEURONET_BENCH_MODE"]] if "NEURONET_BENCH_MODE" in os.environ else list(TITLES)
    for mode in modes:
        os.environ["NEURONET_BENCH_MODE"] = mode  # the per-engine child processes inherit it
        harness.main(engines(mode), TITLES[mode], steps=30, warmup=5, flops=FLOPS[mode])
