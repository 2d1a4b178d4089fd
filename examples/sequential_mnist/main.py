"""Sequential MNIST: an LSTM reads each 28x28 digit one row at a time (28 steps of 28 pixels).

    python examples/sequential_mnist/main.py                          # 2 epochs on all 60,000 images
    python examples/sequential_mnist/main.py --train-size 2000 --epochs 1   # a quick smoke run

Model: LSTM(28, 128) -> Dense(128, 10) on the last hidden state, Adam(1e-3), batch 64, float32, NumPy
backend (``--backend torch`` runs the same model on PyTorch tensors). Data: MNIST from
$NEURONET_DATA/mnist (default <repo>/../shared/data), read with ``neuronet.data.load_mnist``; pixels / 255.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import neuronet as nn
from neuronet.data import load_mnist

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=60000)
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = load_mnist(DATA / "mnist", download=False)
    x_train = x_train[:args.train_size].astype("float32") / 255  # (N, 28 rows = steps, 28 pixels = features)
    y_train = y_train[:args.train_size]
    x_test = x_test.astype("float32") / 255

    nn.manual_seed(0)
    model = nn.Sequential(nn.LSTM(28, 128), nn.Dense(128, 10))
    model.build((28, 28))
    model.to(args.backend)
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.summary()
    start = time.perf_counter()
    hist = model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, validation_data=(x_test, y_test),
                     verbose=1)
    seconds = time.perf_counter() - start
    for epoch, (loss, acc) in enumerate(zip(hist.history["loss"], hist.history["val_accuracy"], strict=True)):
        print(f"epoch {epoch + 1}: train loss {loss:.4f}, test accuracy {acc:.4f}")
    steps = args.epochs * -(-len(x_train) // 64)
    print(f"{len(x_train)} training images, {args.epochs} epochs, {seconds:.1f} s "
          f"({seconds / steps * 1e3:.1f} ms per step incl. evaluation)")


if __name__ == "__main__":
    main()
