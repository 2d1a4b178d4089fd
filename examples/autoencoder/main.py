"""MNIST autoencoder: 784 -> 32 -> 784 through a dense bottleneck, trained with fit on MSE.

    python examples/autoencoder/main.py [--epochs 10] [--limit N] [--out reconstructions.png]

Reads MNIST from ``$NEURONET_DATA/mnist`` (default ``<repo>/../shared/data/mnist``), reports the
reconstruction loss on the 10,000 test images and writes a PNG: test digits (top row) above their
reconstructions (bottom row).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first N training images only (default: all 60,000)")
    parser.add_argument("--out", type=Path, default=HERE / "reconstructions.png")
    args = parser.parse_args()
    nn.manual_seed(0)

    x_train, _, x_test, y_test = nn.data.load_mnist(DATA / "mnist")
    if args.limit:
        x_train = x_train[:args.limit]
    x_train = x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0  # (60000, 784) in [0, 1]
    x_test = x_test.reshape(len(x_test), -1).astype(np.float32) / 255.0

    model = nn.Sequential(
        # encoder 784 -> 256 -> 64 -> 32
        nn.Dense(784, 256, activation="relu"), nn.Dense(256, 64, activation="relu"), nn.Dense(64, 32),
        # decoder 32 -> 64 -> 256 -> 784, pixels in (0, 1)
        nn.Dense(32, 64, activation="relu"), nn.Dense(64, 256, activation="relu"),
        nn.Dense(256, 784, activation="sigmoid"),
    )
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.MSELoss())
    start = time.perf_counter()
    hist = model.fit(x_train, x_train, epochs=args.epochs, batch_size=128, verbose=0)
    seconds = time.perf_counter() - start
    test_mse = model.evaluate(x_test, x_test)["loss"]
    baseline = float(np.mean((x_test - x_train.mean(axis=0)) ** 2))  # predicting the mean image
    print(f"train MSE per epoch: {', '.join(f'{v:.4f}' for v in hist.history['loss'])}")
    print(f"test reconstruction MSE {test_mse:.4f} (mean-image baseline {baseline:.4f}); "
          f"{model.num_params():,} params, {args.epochs} epochs in {seconds:.0f} s")

    picks = np.array([np.flatnonzero(y_test == d)[0] for d in range(10)])  # first test image of each digit
    recon = model.predict(x_test[picks])
    nn.plotting.save_images(args.out, [x_test[picks], recon], ["input", "output"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
