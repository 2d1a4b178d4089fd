"""MNIST with a 784-512-256-10 MLP (ReLU, dropout, Adam) on the full 60k/10k split.

    python examples/mnist_mlp/main.py [--epochs 10] [--batch-size 128] [--backend numpy|torch] [--limit N]

Data: $NEURONET_DATA/mnist, else <repo>/../shared/data/mnist (the four IDX files).
``--limit N`` trains on the first N images only (a quick smoke run).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = nn.data.load_mnist(DATA / "mnist", download=False)
    x_train = x_train.reshape(len(x_train), -1).astype(np.float32) / 255  # (60000, 784) in [0, 1]
    x_test = x_test.reshape(len(x_test), -1).astype(np.float32) / 255
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]

    nn.manual_seed(args.seed)
    model = nn.Sequential(
        nn.Dense(784, 512, activation="relu"), nn.Dropout(0.2),
        nn.Dense(512, 256, activation="relu"), nn.Dropout(0.2),
        nn.Dense(256, 10),
    )
    model.build((784,))
    model.to(args.backend)
    model.compile(optimizer=nn.Adam(args.lr), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.summary()

    start, cpu = time.perf_counter(), time.process_time()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
    train_time, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = model.evaluate(x_test, y_test, batch_size=1000)
    print(f"test loss {result['loss']:.4f}  test accuracy {result['accuracy']:.4f}  ({args.epochs} epochs; "
          f"training {train_time:.1f} s wall, {cpu:.1f} s CPU; backend {args.backend})")


if __name__ == "__main__":
    main()
