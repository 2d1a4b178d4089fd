"""XOR with a 2-8-1 tanh network: the smallest problem a linear model cannot solve.

    python examples/xor/main.py [--steps 500] [--backend numpy|torch]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import neuronet as nn

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
Y = np.array([[0], [1], [1], [0]], np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    nn.manual_seed(args.seed)
    model = nn.Sequential(nn.Dense(2, 8, activation="tanh"), nn.Dense(8, 1))
    model.build((2,))
    model.to(args.backend)
    model.compile(optimizer=nn.Adam(0.05), loss=nn.MSELoss())

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = model.train_step(X, Y)  # the whole data set is one batch
        if step in (1, 10, 50, 100, 200) or step == args.steps:
            print(f"step {step:4d}  mse {loss:.5f}")
    elapsed = time.perf_counter() - start

    out = model.predict(X)
    for x, y, p in zip(X, Y, out, strict=True):
        print(f"{x.astype(int)} -> {p[0]:+.3f}  (target {int(y[0])})")
    correct = int(np.sum((out > 0.5) == (Y > 0.5)))
    print(f"final mse {loss:.5f}, {correct}/4 correct, {args.steps} steps in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
