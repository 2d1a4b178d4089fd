"""Fit a noisy sine with an RBF network: RBF(1, 24) -> Dense(24, 1), trained with Adam on MSE.

    python examples/rbf_sine/main.py                 # 400 epochs, about half a minute
    python examples/rbf_sine/main.py --epochs 20     # a quick smoke run

Data: 512 training points x ~ U(-pi, pi), y = sin(x) + N(0, 0.1^2) (seeded); the test set is 1000 clean
points of sin on the same interval, so a perfect fit has test MSE 0 and the noise floor of the training
loss is 0.01.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import neuronet as nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--centers", type=int, default=24)
    parser.add_argument("--gamma", type=float, default=2.0)
    args = parser.parse_args()

    nn.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, (512, 1)).astype(np.float32)
    y = (np.sin(x) + rng.normal(0.0, 0.1, x.shape)).astype(np.float32)
    x_test = np.linspace(-np.pi, np.pi, 1000, dtype=np.float32).reshape(-1, 1)
    y_test = np.sin(x_test)

    model = nn.Sequential(nn.RBF(1, args.centers, gamma=args.gamma), nn.Dense(args.centers, 1))
    model.build((1,))
    # Spread the (trainable) centres over the input range instead of RBF's default U(-1, 1).
    state = model.state_dict()
    state["0.centers"] = np.linspace(-np.pi, np.pi, args.centers, dtype=np.float32).reshape(-1, 1)
    model.load_state_dict(state)
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.MSELoss())

    start = time.perf_counter()
    hist = model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=0)
    seconds = time.perf_counter() - start
    test_mse = float(np.mean((model.predict(x_test) - y_test) ** 2))
    linear = np.polyfit(x[:, 0], y[:, 0], 1)
    linear_mse = float(np.mean((np.polyval(linear, x_test) - y_test) ** 2))
    print(f"train MSE (noisy targets, floor 0.0100): {hist.history['loss'][-1]:.4f}")
    print(f"test MSE vs clean sin: {test_mse:.5f}   (a straight-line fit: {linear_mse:.4f})")
    print(f"{args.epochs} epochs in {seconds:.1f} s")


if __name__ == "__main__":
    main()
