"""One layer at a time: forward + backward (training mode, the input gradient too) of each layer against the
same PyTorch module, float32, at shapes a model would give it.

The table workloads time whole models; a layer they do not use could be slow and nobody would see it (this
scan found the strided convolutions, ConvTranspose2D and BatchNorm1D at 0.3-0.45x PyTorch). Each engine
(the NumPy backend, the torch backend, PyTorch) runs every layer in its own process, the engines
alternating for ``--rounds`` rounds; a layer's ratio
(PyTorch time / neuronet time, > 1: neuronet faster) is taken per round and shown as median (min-max).

    python benchmarks/bench_layers.py [--only conv2d_s2 bn1d] [--rounds 3] [--threads 1]
    python benchmarks/bench_layers.py --device cuda   # the torch backend against PyTorch on a GPU

On a GPU (``--device cuda``) only the torch backend and PyTorch run, each step ending in a synchronisation.
Not yet run on a GPU: no GPU was at hand when this option was written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import harness
import numpy as np

ENGINES = ("neuronet-numpy", "neuronet-torch", "pytorch")


def _f32(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def cases(nn, torch) -> dict:
    """name: (neuronet layer factory, PyTorch module factory, input)."""
    T = torch.nn  # noqa: N806 (PyTorch's module namespace)

    class GRU(T.Module):
        def __init__(self, i: int, h: int, sequences: bool):
            super().__init__()
            self.rnn, self.sequences = T.GRU(i, h, batch_first=True), sequences

        def forward(self, x):
            y, h = self.rnn(x)
            return y if self.sequences else h[0]

    class LSTM(T.Module):
        def __init__(self, i: int, h: int, bidirectional: bool = False):
            super().__init__()
            self.rnn = T.LSTM(i, h, batch_first=True, bidirectional=bidirectional)

        def forward(self, x):
            return self.rnn(x)[0]

    class Attention(T.Module):
        def __init__(self, dim: int, heads: int, causal: bool):
            super().__init__()
            self.attention, self.causal = T.MultiheadAttention(dim, heads, batch_first=True), causal

        def forward(self, x):
            mask = T.Transformer.generate_square_subsequent_mask(x.shape[1]) if self.causal else None
            return self.attention(x, x, x, need_weights=False, attn_mask=mask, is_causal=self.causal)[0]

    class SwiGLU(T.Module):
        def __init__(self, dim: int, hidden: int):
            super().__init__()
            self.w1, self.w3, self.w2 = T.Linear(dim, hidden), T.Linear(dim, hidden), T.Linear(hidden, dim)

        def forward(self, x):
            return self.w2(T.functional.silu(self.w1(x)) * self.w3(x))

    class Mean(T.Module):
        def forward(self, x):
            return x.mean(dim=1)

    return {
        "dense": (lambda: nn.Dense(512, 512, activation="relu"),
                  lambda: T.Sequential(T.Linear(512, 512), T.ReLU()), _f32(128, 512)),
        "conv2d_3x3": (lambda: nn.Conv2D(16, 16, 3, padding=1), lambda: T.Conv2d(16, 16, 3, padding=1),
                       _f32(64, 16, 28, 28)),
        "conv2d_first": (lambda: nn.Conv2D(3, 32, 3, padding=1, activation="relu"),
                         lambda: T.Sequential(T.Conv2d(3, 32, 3, padding=1), T.ReLU()), _f32(32, 3, 32, 32)),
        "conv2d_s2": (lambda: nn.Conv2D(32, 64, 3, stride=2, padding=1),
                      lambda: T.Conv2d(32, 64, 3, stride=2, padding=1), _f32(32, 32, 32, 32)),
        "conv2d_stem": (lambda: nn.Conv2D(3, 64, 7, stride=2, padding=3),
                        lambda: T.Conv2d(3, 64, 7, stride=2, padding=3), _f32(16, 3, 64, 64)),
        "conv2d_1x1_s2": (lambda: nn.Conv2D(64, 128, 1, stride=2), lambda: T.Conv2d(64, 128, 1, stride=2),
                          _f32(32, 64, 16, 16)),
        "conv2d_depthwise": (lambda: nn.Conv2D(32, 32, 3, padding=1, groups=32),
                             lambda: T.Conv2d(32, 32, 3, padding=1, groups=32), _f32(32, 32, 32, 32)),
        "conv1d": (lambda: nn.Conv1D(64, 64, 5, padding=2), lambda: T.Conv1d(64, 64, 5, padding=2),
                   _f32(32, 64, 128)),
        "conv1d_s2": (lambda: nn.Conv1D(64, 128, 3, stride=2, padding=1),
                      lambda: T.Conv1d(64, 128, 3, stride=2, padding=1), _f32(32, 64, 128)),
        "conv_transpose2d": (lambda: nn.ConvTranspose2D(32, 16, 4, stride=2, padding=1),
                             lambda: T.ConvTranspose2d(32, 16, 4, stride=2, padding=1), _f32(32, 32, 16, 16)),
        "maxpool2d": (lambda: nn.MaxPool2D(2), lambda: T.MaxPool2d(2), _f32(32, 32, 32, 32)),
        "maxpool2d_3x3_s2": (lambda: nn.MaxPool2D(3, stride=2, padding=1),
                             lambda: T.MaxPool2d(3, stride=2, padding=1), _f32(16, 64, 32, 32)),
        "maxpool1d": (lambda: nn.MaxPool1D(2), lambda: T.MaxPool1d(2), _f32(32, 64, 256)),
        "avgpool1d": (lambda: nn.AvgPool1D(2), lambda: T.AvgPool1d(2), _f32(32, 64, 256)),
        "global_avgpool": (lambda: nn.GlobalAvgPool2D(),
                           lambda: T.Sequential(T.AdaptiveAvgPool2d(1), T.Flatten()), _f32(32, 64, 16, 16)),
        "avgpool2d": (lambda: nn.AvgPool2D(2), lambda: T.AvgPool2d(2), _f32(32, 32, 32, 32)),
        "upsample": (lambda: nn.Upsample(2), lambda: T.Upsample(scale_factor=2), _f32(32, 16, 16, 16)),
        "upsample_bilinear": (lambda: nn.Upsample(2, mode="bilinear"),
                              lambda: T.Upsample(scale_factor=2, mode="bilinear"), _f32(32, 16, 16, 16)),
        "batchnorm2d": (lambda: nn.BatchNorm2D(32), lambda: T.BatchNorm2d(32), _f32(32, 32, 32, 32)),
        "batchnorm1d": (lambda: nn.BatchNorm1D(512), lambda: T.BatchNorm1d(512), _f32(256, 512)),
        "groupnorm": (lambda: nn.GroupNorm(8, 32), lambda: T.GroupNorm(8, 32), _f32(32, 32, 16, 16)),
        "layernorm": (lambda: nn.LayerNorm(256), lambda: T.LayerNorm(256), _f32(32, 128, 256)),
        "rmsnorm": (lambda: nn.RMSNorm(256), lambda: T.RMSNorm(256, eps=1e-6), _f32(32, 128, 256)),
        "relu": (lambda: nn.ReLU(), lambda: T.ReLU(), _f32(256, 1024)),
        "gelu": (lambda: nn.GELU(), lambda: T.GELU(), _f32(256, 1024)),
        "silu": (lambda: nn.SiLU(), lambda: T.SiLU(), _f32(256, 1024)),
        "tanh": (lambda: nn.Tanh(), lambda: T.Tanh(), _f32(256, 1024)),
        "sigmoid": (lambda: nn.Sigmoid(), lambda: T.Sigmoid(), _f32(256, 1024)),
        "elu": (lambda: nn.ELU(), lambda: T.ELU(), _f32(256, 1024)),
        "selu": (lambda: nn.SELU(), lambda: T.SELU(), _f32(256, 1024)),
        "leaky_relu": (lambda: nn.LeakyReLU(), lambda: T.LeakyReLU(), _f32(256, 1024)),
        "softmax": (lambda: nn.Softmax(), lambda: T.Softmax(-1), _f32(256, 1024)),
        "log_softmax": (lambda: nn.LogSoftmax(), lambda: T.LogSoftmax(-1), _f32(256, 1024)),
        "dropout": (lambda: nn.Dropout(0.2), lambda: T.Dropout(0.2), _f32(256, 1024)),
        "embedding": (lambda: nn.Embedding(1000, 128), lambda: T.Embedding(1000, 128),
                      np.random.default_rng(0).integers(0, 1000, (32, 64))),
        "mean_pooling": (lambda: nn.MeanPooling(), Mean, _f32(32, 128, 256)),
        "gru": (lambda: nn.GRU(64, 128, return_sequences=True), lambda: GRU(64, 128, True), _f32(32, 64, 64)),
        "lstm": (lambda: nn.LSTM(64, 128, return_sequences=True), lambda: LSTM(64, 128), _f32(32, 64, 64)),
        "bidirectional_lstm": (lambda: nn.Bidirectional(nn.LSTM(64, 128, return_sequences=True)),
                               lambda: LSTM(64, 128, bidirectional=True), _f32(32, 64, 64)),
        "transformer_block": (lambda: nn.TransformerBlock(128, 4, 512),
                              lambda: T.TransformerEncoderLayer(128, 4, 512, 0.0, activation="gelu",
                                                                batch_first=True, norm_first=True),
                              _f32(12, 64, 128)),
        "attention": (lambda: nn.MultiHeadAttention(128, 4), lambda: Attention(128, 4, False),
                      _f32(12, 64, 128)),
        "attention_causal": (lambda: nn.MultiHeadAttention(128, 4, causal=True),
                             lambda: Attention(128, 4, True), _f32(12, 64, 128)),
        "swiglu": (lambda: nn.SwiGLU(256, 512), lambda: SwiGLU(256, 512), _f32(1024, 256)),
    }


def neuronet_step(nn, make, x, backend: str = "numpy", device: str = "cpu"):
    model = nn.Sequential(make())
    model.build(x.shape[1:])
    if backend == "torch":
        import torch

        model.to("torch" if device == "cpu" else device)
        x = torch.from_numpy(x).to(device)
        dy = torch.full_like(model.forward(x, training=True), 0.01)
    else:
        dy = np.full_like(model.forward(x, training=True), 0.01)

    def step():
        model.forward(x, training=True)
        model.backward(dy)
    return step


def torch_step(torch, make, x, device: str = "cpu"):
    module = make().to(device).train()
    xt = torch.from_numpy(x).to(device)
    if xt.is_floating_point():
        xt.requires_grad_(True)
    dy = torch.full_like(module(xt), 0.01)

    def step():
        module.zero_grad()
        xt.grad = None
        module(xt).backward(dy)
    return step


def engines_on(device: str) -> tuple[str, ...]:
    """The engines that run on ``device``: the NumPy backend only on the CPU."""
    return ENGINES if device == "cpu" else ("neuronet-torch", "pytorch")


def child(engine: str, names: list[str], repeats: int, warmup: int, device: str = "cpu") -> dict[str, float]:
    import torch

    import neuronet as nn

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    table = cases(nn, torch)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    times = {}
    for name in names:
        make_layer, make_module, x = table[name]
        step = torch_step(torch, make_module, x, device) if engine == "pytorch" else \
            neuronet_step(nn, make_layer, x, engine.removeprefix("neuronet-"), device)
        times[name] = statistics.median(harness.step_times(step, repeats, warmup, sync))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="layers to run (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", "--steps", type=int, default=20, help="timed steps per layer and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per layer first")
    parser.add_argument("--threads", type=int, help="BLAS/OpenMP threads per engine (default: unset)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:1): the torch backend only")
    parser.add_argument("--engine", help="(internal) run one engine in this process")
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(child(args.engine, args.only, args.repeats, args.warmup, args.device)))
        return
    import torch

    import neuronet as nn

    names = args.only or list(cases(nn, torch))
    env = harness.thread_environment(args.threads)
    engines = engines_on(args.device)
    runs: dict[str, list[dict]] = {engine: [] for engine in engines}
    for _ in range(args.rounds):
        for engine in engines:
            command = [sys.executable, __file__, "--engine", engine, "--repeats", str(args.repeats),
                       "--warmup", str(args.warmup), "--device", args.device, "--only"]
            out = subprocess.run(command + names, capture_output=True, text=True, check=False, env=env)
            if out.returncode != 0:
                raise SystemExit(f"{engine} failed:\n{out.stderr}")
            runs[engine].append(json.loads(out.stdout.strip().splitlines()[-1]))
    where = f"{args.threads} thread(s)" if args.threads else "default threads"
    where = where if args.device == "cpu" else args.device
    print(f"One layer's forward + backward, float32, {where}, {args.rounds} rounds x {args.repeats} steps "
          "(ratio = PyTorch / neuronet, > 1: neuronet faster; median (min-max) over the rounds)")
    ours = [engine.removeprefix("neuronet-") for engine in engines[:-1]]
    columns = [("PyTorch ms", 10)] + [(c, w) for name in ours for c, w in ((f"{name} ms", 9), ("ratio", 17))]
    print(f"{'layer':18s} " + " ".join(f"{c:>{w}s}" for c, w in columns))
    for name in names:
        theirs = [r[name] for r in runs["pytorch"]]
        row = f"{name:18s} {statistics.median(theirs) * 1e3:10.3f}"
        for engine in engines[:-1]:
            ours = [r[name] for r in runs[engine]]
            ratios = sorted(t / o for t, o in zip(theirs, ours, strict=True))
            row += f" {statistics.median(ours) * 1e3:9.3f} {statistics.median(ratios):5.2f} " \
                   f"({ratios[0]:.2f}-{ratios[-1]:.2f})"
        print(row)


if __name__ == "__main__":
    main()
