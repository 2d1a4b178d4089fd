"""A GAN on MNIST written against the low-level API: two Sequential models, no fit.

    python examples/gan_mnist/main.py [--epochs 30] [--limit N] [--out samples.png]

This is how research code drives neuronet below ``fit``: explicit ``forward``/``backward`` calls,
``zero_grad`` and ``optimizer.step(model.flat_params, model.flat_grads)``. The generator learns
through the discriminator: ``discriminator.backward(dL/dlogits)`` returns dL/d(its input), i.e. the
gradient with respect to the fake images, which is then fed to ``generator.backward``.

Reads MNIST from ``$NEURONET_DATA/mnist`` (default ``<repo>/../shared/data/mnist``) and writes an
8x8 grid of generated digits (from a fixed noise batch) as a PNG.
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
NOISE, BATCH = 64, 128


def build_models() -> tuple[nn.Sequential, nn.Sequential]:
    generator = nn.Sequential(  # noise (64) -> image (784) in [-1, 1]
        nn.Dense(NOISE, 256), nn.LeakyReLU(0.2), nn.Dense(256, 512), nn.LeakyReLU(0.2),
        nn.Dense(512, 784, activation="tanh"))
    discriminator = nn.Sequential(  # image (784) -> logit of "real"
        nn.Dense(784, 512), nn.LeakyReLU(0.2), nn.Dense(512, 256), nn.LeakyReLU(0.2), nn.Dense(256, 1))
    generator.build((NOISE,))
    discriminator.build((784,))
    return generator, discriminator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first N training images only (default: all 60,000)")
    parser.add_argument("--out", type=Path, default=HERE / "samples.png")
    args = parser.parse_args()
    nn.manual_seed(0)
    rng = np.random.default_rng(0)

    x_train, _, _, _ = nn.data.load_mnist(DATA / "mnist")
    if args.limit:
        x_train = x_train[:args.limit]
    x_train = x_train.reshape(len(x_train), -1).astype(np.float32) / 127.5 - 1.0  # (60000, 784) in [-1, 1]

    generator, discriminator = build_models()
    opt_g, opt_d = nn.Adam(2e-4, betas=(0.5, 0.999)), nn.Adam(2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    real_label = np.ones((BATCH, 1), np.float32)
    fake_label = np.zeros((BATCH, 1), np.float32)
    fixed_noise = rng.standard_normal((64, NOISE)).astype(np.float32)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        d_losses, g_losses, d_real = [], [], []
        for (real,) in nn.data.batches(x_train, batch_size=BATCH, drop_last=True, rng=rng):
            # Discriminator: push real images towards 1 and generated ones towards 0.
            fake = generator.forward(rng.standard_normal((BATCH, NOISE)).astype(np.float32), training=True)
            discriminator.zero_grad()
            logits = discriminator.forward(real, training=True)
            loss_d = bce.forward(logits, real_label)
            d_real.append(float(np.mean(logits > 0)))
            discriminator.backward(bce.backward())
            loss_d += bce.forward(discriminator.forward(fake, training=True), fake_label)
            discriminator.backward(bce.backward())  # gradients of both halves accumulate
            opt_d.step(discriminator.flat_params, discriminator.flat_grads)

            # Generator: make the discriminator say 1 on fresh fakes (the non-saturating loss).
            fake = generator.forward(rng.standard_normal((BATCH, NOISE)).astype(np.float32), training=True)
            loss_g = bce.forward(discriminator.forward(fake, training=True), real_label)
            dfake = discriminator.backward(bce.backward())  # dL/d(fake images); D's grads get zeroed later
            generator.zero_grad()
            generator.backward(dfake)
            opt_g.step(generator.flat_params, generator.flat_grads)
            d_losses.append(loss_d)
            g_losses.append(loss_g)
        print(f"epoch {epoch + 1:3d}  D loss {np.mean(d_losses):.3f}  G loss {np.mean(g_losses):.3f}  "
              f"D(real) > 0.5 on {np.mean(d_real):.2f} of real images  ({time.perf_counter() - start:.0f} s)")

    samples = generator.predict(fixed_noise)
    rows = [samples[r * 8:(r + 1) * 8] for r in range(len(samples) // 8)]  # a grid of 8 columns
    nn.plotting.save_images(args.out, rows, value_range=(-1.0, 1.0), tile_inches=1.0, dpi=60)
    print(f"wrote {args.out} ({args.epochs} epochs in {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
