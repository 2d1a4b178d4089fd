"""MNIST with a small ResNet (residual blocks with BatchNorm) built as a functional nn.Model.

    python examples/resnet_mnist/main.py [--epochs 2] [--batch-size 64] [--backend numpy|torch]
                                         [--limit N] [--test-limit M] [--framework neuronet|pytorch]

``--framework pytorch`` trains the same network written in PyTorch (same initial weights, data order,
optimizer and schedule), for the side-by-side numbers in the README. Data: $NEURONET_DATA/mnist, else
<repo>/../shared/data/mnist. ``--limit``/``--test-limit`` use the first N training / M test images only.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel statistics


def conv_bn(x, cin: int, cout: int, relu: bool = True):
    """conv3x3 (no bias: BatchNorm has one) -> BatchNorm -> ReLU (inside the BatchNorm's passes)."""
    h = nn.Conv2D(cin, cout, 3, padding=1, bias=False)(x)
    return nn.BatchNorm2D(cout, activation="relu" if relu else None)(h)


def residual_block(x, channels: int):
    """He et al.'s basic block: relu(x + bn(conv(relu(bn(conv(x))))))."""
    body = conv_bn(conv_bn(x, channels, channels), channels, channels, relu=False)
    return nn.ReLU()(nn.Add()([x, body]))


def build_model() -> nn.Model:
    inp = nn.Input((1, 28, 28))
    h = residual_block(residual_block(conv_bn(inp, 1, 16), 16), 16)     # (16, 28, 28)
    h = conv_bn(nn.MaxPool2D(2)(h), 16, 32)                              # (32, 14, 14)
    h = residual_block(nn.MaxPool2D(2)(residual_block(h, 32)), 32)       # (32, 7, 7)
    out = nn.Dense(32, 10, name="classifier")(nn.GlobalAvgPool2D()(h))
    return nn.Model(inputs=inp, outputs=out)


def torch_twin(model: nn.Model):
    """The same network in PyTorch, holding a copy of ``model``'s weights (keys "<i>.<param>")."""
    import torch
    from torch import nn as tnn

    layers = {key: layer for key, layer in zip(model.layer_keys, model.layers, strict=True)}
    modules = tnn.ModuleDict()
    for key, layer in layers.items():
        cfg = layer.get_config()
        if type(layer).__name__ == "Conv2D":
            modules[key] = tnn.Conv2d(cfg["in_channels"], cfg["out_channels"], 3, padding=1, bias=False)
        elif type(layer).__name__ == "BatchNorm2D":
            modules[key] = tnn.BatchNorm2d(cfg["num_features"])
        elif type(layer).__name__ == "Dense":
            modules[key] = tnn.Linear(32, 10)
    modules.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()}, strict=False)
    graph = model.graph_config()

    class Twin(tnn.Module):
        def __init__(self):
            super().__init__()
            self.layers = modules

        def forward(self, x):
            values = [x]
            for node in graph["nodes"]:
                key = model.layer_keys[node["layer"]]
                args = [values[t] for t in node["inputs"]]
                kind = type(layers[key]).__name__
                if kind == "Add":
                    values.append(args[0] + args[1])
                elif kind == "ReLU":
                    values.append(torch.relu(args[0]))
                elif kind == "MaxPool2D":
                    values.append(torch.nn.functional.max_pool2d(args[0], 2))
                elif kind == "GlobalAvgPool2D":
                    values.append(args[0].mean(dim=(2, 3)))
                else:
                    values.append(self.layers[key](args[0]))
                    if getattr(layers[key], "activation", None) == "relu":  # BatchNorm2D(activation="relu")
                        values[-1] = torch.relu(values[-1])
            return values[graph["outputs"][0]]
    return Twin()


def train_pytorch(model, x_train, y_train, x_test, y_test, args) -> tuple[float, float]:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    net = torch_twin(model)
    opt = torch.optim.Adam(net.parameters(), args.lr)
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64))
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        for i in range(0, len(xt), args.batch_size):
            idx = order[i:i + args.batch_size]
            opt.zero_grad()
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: last batch loss {loss.item():.4f}", flush=True)
    train_time = time.perf_counter() - start
    net.eval()
    with torch.inference_mode():
        logits = torch.cat([net(torch.from_numpy(x_test[i:i + 1000])) for i in range(0, len(x_test), 1000)])
    return float((logits.argmax(1).numpy() == y_test).mean()), train_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--framework", choices=("neuronet", "pytorch"), default="neuronet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="evaluate on the first M test images only")
    parser.add_argument("--verbose", type=int, default=2, help="1: progress bar, 2: one line per epoch")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = nn.data.load_mnist(DATA / "mnist", download=False)
    x_train = ((x_train[:, None].astype(np.float32) / 255) - MEAN) / STD  # (60000, 1, 28, 28)
    x_test = ((x_test[:, None].astype(np.float32) / 255) - MEAN) / STD
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    if args.test_limit:
        x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit]

    nn.manual_seed(args.seed)
    model = build_model()
    what = f"{args.epochs} epochs on {len(x_train)} images"
    if args.framework == "pytorch":
        accuracy, train_time = train_pytorch(model, x_train, y_train, x_test, y_test, args)
        print(f"pytorch: test accuracy {accuracy:.4f}  ({what}, {train_time:.1f} s training)")
        return
    model.to(args.backend)
    model.compile(optimizer=nn.Adam(args.lr), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.summary()
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    schedule = nn.CosineAnnealingLR(T_max=steps, interval="step")  # lr from --lr down to 0, per batch
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose,
              callbacks=[schedule])
    train_time = time.perf_counter() - start
    result = model.evaluate(x_test, y_test, batch_size=1000)
    print(f"neuronet: test loss {result['loss']:.4f}  test accuracy {result['accuracy']:.4f}  ({what}, "
          f"{train_time:.1f} s training, backend {args.backend})")


if __name__ == "__main__":
    main()
