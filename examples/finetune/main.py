"""Fine-tuning with frozen layers and parameter groups: a CNN pretrained on MNIST 0-4, fine-tuned on 5-9.

    python examples/finetune/main.py [--pretrain-limit 6000] [--pretrain-epochs 1] [--finetune-size 500]
                                     [--epochs 10] [--lr 3e-3] [--test-limit N] [--backend numpy|torch]

Pretrains conv8-pool-conv16-pool-fc64 + a 5-way head on digits 0-4, then trains a fresh 5-way head on a
small set of 5-9 (``--finetune-size`` images) five ways, each from the same pretrained weights:

    frozen      the backbone frozen (``layer.trainable = False``): only the head learns
    convs       the two conv layers frozen: fc64 and the head learn
    groups      everything learns, the backbone at lr / 10 (a parameter group)
    one-lr      everything at one lr
    scratch     no pretraining, everything at one lr (the baseline transfer should beat)

and prints test accuracy on all 5-9 test images and the training time of each (wall and CPU seconds of
this process: on a shared machine the CPU time is the steadier figure).
Data: $NEURONET_DATA/mnist, else <repo>/../shared/data/mnist.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
MEAN, STD = 0.1307, 0.3081
BACKBONE = ["0.*", "2.*", "5.*"]  # the state_dict names of the conv and fc64 layers


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2D(1, 8, 3, padding=1, activation="relu"), nn.MaxPool2D(2),    # (8, 14, 14)
        nn.Conv2D(8, 16, 3, padding=1, activation="relu"), nn.MaxPool2D(2),   # (16, 7, 7)
        nn.Flatten(), nn.Dense(16 * 7 * 7, 64, activation="relu"),             # the backbone: 0 .. 5
        nn.Dense(64, 5),                                                       # the head: 6
    )


def digits(x, y, low: int, limit: int | None = None):
    """The images of digits low..low+4, labelled 0..4."""
    keep = (y >= low) & (y < low + 5)
    x, y = x[keep], y[keep] - low
    return (x[:limit], y[:limit]) if limit else (x, y)


def fresh(backend: str, pretrained: dict | None, seed: int) -> nn.Sequential:
    """A new model with a freshly initialised head and, if given, the pretrained backbone."""
    nn.manual_seed(seed)
    model = build_model()
    model.build((1, 28, 28))
    if pretrained is not None:
        model.load_state_dict({k: v for k, v in pretrained.items() if not k.startswith("6.")}, strict=False)
    return model.to(backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-limit", type=int, default=6000, help="images of 0-4 to pretrain on")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--finetune-size", type=int, default=500, help="images of 5-9 to fine-tune on")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-limit", type=int, default=None, help="test on the first N images of 5-9")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = nn.data.load_mnist(DATA / "mnist", download=False)
    x_train = ((x_train[:, None].astype(np.float32) / 255) - MEAN) / STD
    x_test = ((x_test[:, None].astype(np.float32) / 255) - MEAN) / STD
    x_pre, y_pre = digits(x_train, y_train, 0, args.pretrain_limit)
    x_fine, y_fine = digits(x_train, y_train, 5, args.finetune_size)
    x_eval, y_eval = digits(x_test, y_test, 5, args.test_limit)

    base = fresh(args.backend, None, args.seed)
    base.compile(nn.Adam(args.lr), nn.CrossEntropyLoss(), metrics=["accuracy"])
    start = time.perf_counter()
    base.fit(x_pre, y_pre, epochs=args.pretrain_epochs, batch_size=args.batch_size, verbose=0)
    pre_acc = base.evaluate(*digits(x_test, y_test, 0, args.test_limit))["accuracy"]
    print(f"pretrained on {len(x_pre)} images of 0-4 in {time.perf_counter() - start:.1f} s: "
          f"test accuracy on 0-4 {pre_acc:.4f}")
    pretrained = base.state_dict()

    print(f"fine-tuning on {len(x_fine)} images of 5-9, {args.epochs} epochs, test on {len(x_eval)}:")
    print(f"{'variant':<8}  {'trainable':>9}  {'test acc':>8}  {'wall s':>6}  {'cpu s':>6}  "
          f"{'cpu ms/step':>11}")
    for variant in ("frozen", "convs", "groups", "one-lr", "scratch"):
        model = fresh(args.backend, None if variant == "scratch" else pretrained, args.seed + 1)
        if variant in ("frozen", "convs"):
            for layer in model.layers[:-1] if variant == "frozen" else model.layers[:4]:
                layer.trainable = False
        groups = [{"params": BACKBONE, "lr": args.lr / 10}] if variant == "groups" else None
        model.compile(nn.Adam(args.lr, groups=groups), nn.CrossEntropyLoss(), metrics=["accuracy"])
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(x_fine, y_fine, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        steps = args.epochs * -(-len(x_fine) // args.batch_size)
        acc = model.evaluate(x_eval, y_eval)["accuracy"]
        print(f"{variant:<8}  {model.num_trainable_params():>9,}  {acc:>8.4f}  {wall:>6.1f}  {cpu:>6.1f}  "
              f"{1000 * cpu / steps:>11.1f}")


if __name__ == "__main__":
    main()
