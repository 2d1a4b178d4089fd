"""Experts specialise: a mixture of experts on data from four clusters, each with its own labelling rule.

Every cluster labels its points with a different random linear rule, so one shared network has to
learn four unrelated functions at once. An MoE layer (top-2 routing) can instead send each
cluster to its own expert. We train it with ``fit`` (the load-balancing loss is added by the
training loop), print the routing table (cluster x top-1 expert), and compare with a dense network
that runs the same per-token compute (two experts' worth).

With top-1 routing the renormalised gate weight is always 1, so the task loss gives the gate no
gradient and only the balancing loss moves it: use top_k >= 2 for specialisation to emerge.

    python examples/moe/main.py [--epochs 30] [--backend numpy|torch]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import neuronet as nn

CLUSTERS, DIM, CLASSES = 4, 8, 3


def make_data(n: int, rng: np.random.Generator, centers: np.ndarray, rules: np.ndarray):
    """Points around one of the cluster centers; label = argmax of that cluster's own linear rule."""
    cluster = rng.integers(0, CLUSTERS, n)
    offset = rng.standard_normal((n, DIM))
    x = centers[cluster] + offset
    y = np.einsum("ncd,nd->nc", rules[cluster], offset).argmax(axis=1)
    return x.astype(np.float32), y.astype(np.int64), cluster


def routing_table(model: nn.Sequential, x: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Fraction of each cluster's points whose top-1 expert is e (rows: clusters, columns: experts)."""
    hidden = model.ops.to_numpy(model[0].forward(model.ops.asarray(x), training=False))
    gate = model.ops.to_numpy(model[1].params["gate.weight"])
    top1 = (hidden @ gate.T).argmax(axis=1)
    table = np.zeros((CLUSTERS, gate.shape[0]))
    for c in range(CLUSTERS):
        table[c] = np.bincount(top1[cluster == c], minlength=gate.shape[0]) / max((cluster == c).sum(), 1)
    return table


def train(model: nn.Sequential, data, epochs: int, backend: str) -> tuple[float, float]:
    (x, y, _), (xv, yv, _) = data
    model.compile(optimizer=nn.Adam(3e-3), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.build((DIM,))
    model.to(backend)
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=128, verbose=0)
    seconds = time.perf_counter() - start
    return model.evaluate(xv, yv)["accuracy"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args()
    nn.manual_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((CLUSTERS, DIM)) * 6.0
    rules = rng.standard_normal((CLUSTERS, CLASSES, DIM))
    data = make_data(8000, rng, centers, rules), make_data(2000, rng, centers, rules)

    moe = nn.Sequential(nn.Dense(DIM, 32, activation="gelu"),
                        nn.MoE(32, 64, num_experts=CLUSTERS, top_k=2, aux_loss_weight=0.1),
                        nn.Dense(32, CLASSES))
    dense = nn.Sequential(nn.Dense(DIM, 32, activation="gelu"), nn.Dense(32, 128, activation="gelu"),
                          nn.Dense(128, 32), nn.Dense(32, CLASSES))  # the compute of two experts
    acc_moe, t_moe = train(moe, data, args.epochs, args.backend)
    acc_dense, t_dense = train(dense, data, args.epochs, args.backend)

    xv, _, cluster_v = data[1]
    table = routing_table(moe, xv, cluster_v)
    print(f"routing table on the validation set (share of each cluster's points sent to each expert, top-1), "
          f"aux loss {moe[1].aux_loss:.3f} (1.0 = perfectly balanced):")
    print("            " + "".join(f"expert {e:<3}" for e in range(table.shape[1])))
    for c, row in enumerate(table):
        print(f"cluster {c}   " + "".join(f"{v:<10.2f}" for v in row))
    print(f"\nMoE (4 experts, top-2, {moe.num_params():,} params):   val accuracy {acc_moe:.3f}  "
          f"({t_moe:.1f} s for {args.epochs} epochs)")
    print(f"dense, same per-token compute ({dense.num_params():,} params): val accuracy {acc_dense:.3f}  "
          f"({t_dense:.1f} s)")


if __name__ == "__main__":
    main()
