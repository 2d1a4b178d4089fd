"""CIFAR-10 with a small CNN with BatchNorm (conv-BN-ReLU blocks, max pooling, global average pooling).

    python examples/cifar10/main.py [--epochs 15] [--batch-size 32] [--backend numpy|torch] [--full ROOT]

Data: by default the 200 real CIFAR-10 training images in $NEURONET_DATA/cifar10-sample/train_sample_200.bin
(else <repo>/../shared/data/...), split 160 train / 40 held out. With ``--full ROOT`` the whole data set
(``data_batch_1..5.bin`` and ``test_batch.bin`` in ROOT or ROOT/cifar-10-batches-bin, downloaded there
when absent and a network is reachable): 50k train / 10k test.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def block(cin: int, cout: int) -> list[nn.Layer]:
    """conv 3x3 (no bias: BatchNorm's shift replaces it) -> BatchNorm -> ReLU (inside the BatchNorm's
    passes)."""
    return [nn.Conv2D(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2D(cout, activation="relu")]


def build_model() -> nn.Sequential:
    return nn.Sequential(
        *block(3, 32), *block(32, 32), nn.MaxPool2D(2),     # (32, 16, 16)
        *block(32, 64), *block(64, 64), nn.MaxPool2D(2),    # (64, 8, 8)
        *block(64, 128), nn.GlobalAvgPool2D(),              # (128,)
        nn.Dropout(0.3), nn.Dense(128, 10),
    )


def load(full: str | None):
    if full:
        return nn.data.load_cifar10(full)
    x, y = nn.data.read_cifar10_bin(DATA / "cifar10-sample" / "train_sample_200.bin")
    return x[:160], y[:160], x[160:], y[160:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", default=None, help="folder of the full CIFAR-10 binary set")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = load(args.full)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    x_train = ((x_train - mean) / std).astype(np.float32)  # (N, 3, 32, 32), per-channel standardised
    x_test = ((x_test - mean) / std).astype(np.float32)

    nn.manual_seed(args.seed)
    model = build_model()
    model.build((3, 32, 32))
    model.to(args.backend)
    model.compile(optimizer=nn.Adam(args.lr), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.summary()

    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=2,
              validation_data=(x_test, y_test))
    train_time = time.perf_counter() - start
    train = model.evaluate(x_train, y_train)
    test = model.evaluate(x_test, y_test)
    pred = model.predict(x_test).argmax(axis=1)
    print(f"train accuracy {train['accuracy']:.3f}  held-out accuracy {test['accuracy']:.3f} "
          f"(chance 0.100; {len(x_train)} train / {len(x_test)} held-out images, {args.epochs} epochs, "
          f"{train_time:.1f} s, backend {args.backend})")
    pairs = ", ".join(f"{CLASSES[p]}/{CLASSES[t]}" for p, t in zip(pred[:8], y_test[:8], strict=True))
    print("first held-out predictions (predicted/true):", pairs)


if __name__ == "__main__":
    main()
