"""``neuronet`` command: demo, info (more commands are added in their own modules)."""

from __future__ import annotations

import argparse
import sys
import time


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small network on scikit-learn's offline digits set and report the test accuracy."""
    import numpy as np
    from sklearn.datasets import load_digits

    import neuronet as nn

    nn.manual_seed(args.seed)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    model = nn.Sequential(nn.Dense(64, 128, activation="relu"), nn.Dropout(0.1), nn.Dense(128, 10))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x[:cut], y[:cut], epochs=args.epochs, batch_size=32, validation_data=(x[cut:], y[cut:]),
              verbose=1)
    result = model.evaluate(x[cut:], y[cut:])
    print(f"digits test accuracy: {result['accuracy']:.4f} (loss {result['loss']:.4f}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuronet", description="neuronet: explicit, fast neural networks")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small network on the offline digits set")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
