"""Denoising MNIST with a small U-Net (skip concatenations) against a plain conv autoencoder.

    python examples/unet_denoise/main.py [--epochs 3] [--limit 20000] [--test-limit 2000] [--sigma 0.5]
                                         [--out denoised.png]

Both networks see the same noisy digits (Gaussian noise of std ``sigma`` added to pixels in [0, 1],
clipped back to [0, 1]) and learn, with MSE, to output the clean digit. The U-Net is built with the
functional API (``nn.Input``, ``nn.Concatenate(axis=1)`` skips, ``nn.Model``); the autoencoder is the
same encoder/decoder without the skips, widened to about the same parameter count. Reads MNIST from
``$NEURONET_DATA/mnist`` (default ``<repo>/../shared/data/mnist``) and writes a PNG of noisy /
denoised (U-Net) / denoised (autoencoder) / clean digits, one row each.
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


def conv_block(x, c_in: int, c_out: int):
    """conv3x3 (no bias) - BatchNorm - ReLU (inside the BatchNorm's passes), keeping the spatial size."""
    x = nn.Conv2D(c_in, c_out, 3, padding=1, bias=False)(x)
    return nn.BatchNorm2D(c_out, activation="relu")(x)


def unet(c: int = 8) -> nn.Model:
    """28x28 -> 14x14 -> 7x7 bottleneck -> back up, concatenating the encoder's maps at each scale."""
    inp = nn.Input((1, 28, 28))
    e1 = conv_block(inp, 1, c)                                      # (c, 28, 28)
    e2 = conv_block(nn.MaxPool2D(2)(e1), c, 2 * c)                  # (2c, 14, 14)
    b = conv_block(nn.MaxPool2D(2)(e2), 2 * c, 4 * c)               # (4c, 7, 7) bottleneck
    u2 = nn.ConvTranspose2D(4 * c, 2 * c, 2, stride=2)(b)           # (2c, 14, 14), learned upsampling
    d2 = conv_block(nn.Concatenate(axis=1)([u2, e2]), 4 * c, 2 * c)  # skip: (4c, 14, 14) -> (2c, 14, 14)
    u1 = nn.Upsample(2)(d2)                                         # (2c, 28, 28), nearest
    d1 = conv_block(nn.Concatenate(axis=1)([u1, e1]), 3 * c, c)     # skip: (3c, 28, 28) -> (c, 28, 28)
    out = nn.Conv2D(c, 1, 1, activation="sigmoid")(d1)              # (1, 28, 28) in (0, 1)
    return nn.Model(inp, out)


def autoencoder(c: int = 9) -> nn.Model:
    """The same path without the skips: every decoder map comes from the 7x7 bottleneck alone."""
    inp = nn.Input((1, 28, 28))
    h = conv_block(inp, 1, c)
    h = conv_block(nn.MaxPool2D(2)(h), c, 2 * c)
    h = conv_block(nn.MaxPool2D(2)(h), 2 * c, 4 * c)
    h = nn.ConvTranspose2D(4 * c, 2 * c, 2, stride=2)(h)
    h = conv_block(h, 2 * c, 2 * c)
    h = conv_block(nn.Upsample(2)(h), 2 * c, c)
    out = nn.Conv2D(c, 1, 1, activation="sigmoid")(h)
    return nn.Model(inp, out)


def add_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + sigma * rng.standard_normal(x.shape).astype(np.float32), 0.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=20000, help="first N training images (0: all 60,000)")
    parser.add_argument("--test-limit", type=int, default=2000, help="first N test images (0: all 10,000)")
    parser.add_argument("--sigma", type=float, default=0.5, help="std of the Gaussian pixel noise")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "denoised.png")
    args = parser.parse_args()

    x_train, _, x_test, y_test = nn.data.load_mnist(DATA / "mnist")
    x_train = x_train[:args.limit or None].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    x_test = x_test[:args.test_limit or None].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    y_test = y_test[:len(x_test)]
    rng = np.random.default_rng(0)
    noisy_train, noisy_test = add_noise(x_train, args.sigma, rng), add_noise(x_test, args.sigma, rng)
    noisy_mse = float(np.mean((noisy_test - x_test) ** 2))
    print(f"{len(x_train)} training / {len(x_test)} test images, sigma {args.sigma}; "
          f"MSE of the noisy input itself {noisy_mse:.4f}")

    results, outputs = {}, {}
    for name, build in (("U-Net", unet), ("conv autoencoder", autoencoder)):
        nn.manual_seed(0)
        model = build()
        model.compile(optimizer=nn.Adam(2e-3), loss=nn.MSELoss())
        start = time.perf_counter()
        hist = model.fit(noisy_train, x_train, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
        seconds = time.perf_counter() - start
        mse = model.evaluate(noisy_test, x_test)["loss"]
        results[name] = mse
        picks = np.array([np.flatnonzero(y_test == d)[0] for d in range(10) if (y_test == d).any()])
        outputs[name] = model.predict(noisy_test[picks])
        losses = ", ".join(f"{v:.4f}" for v in hist.history["loss"])
        print(f"{name:17s} {model.num_params():6,} params  train MSE per epoch {losses}  "
              f"test MSE {mse:.4f}  ({args.epochs} epochs in {seconds:.0f} s)")

    rows = [noisy_test[picks], outputs["U-Net"], outputs["conv autoencoder"], x_test[picks]]
    nn.plotting.save_images(args.out, rows, ["noisy", "U-Net", "autoenc.", "clean"], tile_inches=0.85, dpi=72)
    print(f"test MSE: U-Net {results['U-Net']:.4f}, conv autoencoder {results['conv autoencoder']:.4f}, "
          f"noisy input {noisy_mse:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
