"""MNIST with a small CNN (conv32-pool-conv64-pool-fc128-fc10, Adam, cosine lr) on the full 60k/10k split.

    python examples/mnist_cnn/main.py [--epochs 3] [--batch-size 64] [--backend numpy|torch] [--limit N]
                                      [--test-limit M]

Data: $NEURONET_DATA/mnist, else <repo>/../shared/data/mnist (the four IDX files).
``--limit N`` trains on the first N images only and ``--test-limit M`` evaluates on the first M test
images only (quick smoke runs).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel statistics


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2D(1, 32, 3, padding=1, activation="relu"), nn.MaxPool2D(2),    # (32, 14, 14)
        nn.Conv2D(32, 64, 3, padding=1, activation="relu"), nn.MaxPool2D(2),   # (64, 7, 7)
        nn.Flatten(), nn.Dense(64 * 7 * 7, 128, activation="relu"), nn.Dropout(0.25),
        nn.Dense(128, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="evaluate on the first M test images only")
    parser.add_argument("--verbose", type=int, default=2, help="1: progress bar, 2: one line per epoch")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = nn.data.load_mnist(DATA / "mnist", download=False)
    x_train = ((x_train[:, None].astype(np.float32) / 255) - MEAN) / STD  # (60000, 1, 28, 28)
    x_test = ((x_test[:, None].astype(np.float32) / 255) - MEAN) / STD
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    if args.test_limit:
        x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit]

    nn.manual_seed(args.seed)
    model = build_model()
    model.build((1, 28, 28))
    model.to(args.backend)
    model.compile(optimizer=nn.Adam(args.lr), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.summary()

    steps = args.epochs * -(-len(x_train) // args.batch_size)
    schedule = nn.CosineAnnealingLR(T_max=steps, interval="step")  # lr from --lr down to 0, per batch
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose,
              validation_data=(x_test, y_test), callbacks=[schedule])
    train_time = time.perf_counter() - start
    result = model.evaluate(x_test, y_test, batch_size=1000)
    print(f"test loss {result['loss']:.4f}  test accuracy {result['accuracy']:.4f}  "
          f"({args.epochs} epochs on {len(x_train)} images, {train_time:.1f} s training incl. per-epoch "
          f"evaluation, backend {args.backend})")


if __name__ == "__main__":
    main()
