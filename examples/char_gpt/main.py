"""Train a character-level GPT on tinyshakespeare and sample from it (nanoGPT's shakespeare_char, small).

    python examples/char_gpt/main.py                    # GPT-2-style blocks, 2000 iterations
    python examples/char_gpt/main.py --iters 20         # a quick smoke run

The data is read from $NEURONET_DATA/tinyshakespeare/input.txt (default: <repo>/../shared/data).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def gpt(vocab: int, block: int, layers: int = 4, heads: int = 4, dim: int = 128, ff: int = 512,
        llama: bool = False, remat: bool = False) -> nn.Sequential:
    """Embedding (+ learned positions) -> causal blocks -> final norm -> vocabulary logits.

    ``llama``: RMSNorm, SwiGLU feed-forward and rotary positions instead of learned ones. ``remat``: each
    block in ``nn.Remat`` (its activations computed again in backward instead of kept).
    """
    body = [nn.Embedding(vocab, dim)]
    if not llama:
        body.append(nn.PositionalEncoding(block, dim, learned=True))
    style = {"norm": "rms", "ffn": "swiglu", "rope": True} if llama else {}
    wrap = nn.Remat if remat else (lambda layer: layer)
    body += [wrap(nn.TransformerBlock(dim, heads, ff, causal=True, **style)) for _ in range(layers)]
    body += [nn.RMSNorm(dim) if llama else nn.LayerNorm(dim), nn.Dense(dim, vocab)]
    return nn.Sequential(*body)


def batches(data: np.ndarray, block: int, batch: int, rng: np.random.Generator):
    """Endless random (x, y) windows: y is x shifted by one character."""
    offsets = np.arange(block + 1)
    while True:
        start = rng.integers(0, len(data) - block - 1, batch)
        window = data[start[:, None] + offsets]
        yield window[:, :-1], window[:, 1:]


@nn.no_grad()  # no backward follows: attention keeps no probabilities, the blocks share their buffers
def evaluate(model: nn.Sequential, data: np.ndarray, block: int, batch: int, iters: int, seed: int) -> float:
    loss, it = nn.CrossEntropyLoss(), batches(data, block, batch, np.random.default_rng(seed))
    pairs = (next(it) for _ in range(iters))
    return float(np.mean([loss(model.forward(x, training=False), y) for x, y in pairs]))


@nn.no_grad()
def sample(model: nn.Sequential, chars: list[str], block: int, length: int, rng: np.random.Generator) -> str:
    ids = [chars.index("\n")]
    for _ in range(length):
        out = model.forward(np.array([ids[-block:]]), training=False)
        logits = np.asarray(model.ops.to_numpy(out))[0, -1]
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(chars), p=p / p.sum())))
    return "".join(chars[i] for i in ids)


def lr_at(it: int, iters: int, lr: float, warmup: int, min_lr: float) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` (nanoGPT's schedule)."""
    if it < warmup:
        return lr * (it + 1) / warmup
    ratio = (it - warmup) / max(1, iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--ff", type=int, default=None, help="feed-forward width (default 512; 349 with --llama)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--llama", action="store_true", help="RMSNorm + SwiGLU + RoPE blocks")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--workers", default="1",
                    help='training replicas per step, one core each: an integer or "auto" (compile)')
    ap.add_argument("--remat", action="store_true",
                    help="recompute each block's activations in backward (nn.Remat): less memory, more time")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)

    text = (DATA / "tinyshakespeare" / "input.txt").read_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.array([lookup[c] for c in text], np.int64)
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]

    nn.manual_seed(args.seed)
    ff = args.ff or (349 if args.llama else 512)
    model = gpt(len(chars), args.block, ff=ff, llama=args.llama, remat=args.remat)
    opt = nn.AdamW(args.lr, betas=(0.9, 0.99), weight_decay=0.1, clip_norm=1.0)
    workers = args.workers if args.workers == "auto" else int(args.workers)
    model.compile(optimizer=opt, loss=nn.CrossEntropyLoss(), workers=workers)
    model.build((args.block,))
    model.to(args.backend)
    print(f"{'LLaMA-style' if args.llama else 'GPT-2-style'} blocks, {model.num_params():,} parameters, "
          f"backend {args.backend}")

    rng = np.random.default_rng(args.seed)
    stream = batches(train, args.block, args.batch, rng)
    start = time.perf_counter()
    for it in range(args.iters):
        opt.lr = lr_at(it, args.iters, args.lr, warmup=100, min_lr=args.lr / 10)
        x, y = next(stream)
        loss = model.train_step(x, y)
        if (it + 1) % args.eval_every == 0 or it == 0:
            v = evaluate(model, val, args.block, args.batch, 20, seed=it)
            print(f"iter {it + 1:5d}  train loss {loss:.4f}  val loss (20 batches) {v:.4f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    train_time = time.perf_counter() - start
    result = {"train_loss": evaluate(model, train, args.block, args.batch, args.eval_iters, seed=1),
              "val_loss": evaluate(model, val, args.block, args.batch, args.eval_iters, seed=2),
              "train_seconds": train_time, "params": model.num_params()}
    print(f"final ({args.eval_iters} batches): train loss {result['train_loss']:.4f}, val loss "
          f"{result['val_loss']:.4f}; training took {train_time:.0f} s "
          f"({train_time / max(args.iters, 1) * 1e3:.0f} ms/iteration)")
    print("--- sample ---")
    print(sample(model, chars, args.block, 400, np.random.default_rng(0)))
    return result


if __name__ == "__main__":
    main()
