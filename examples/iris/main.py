"""Iris from a CSV file: a single-layer softmax classifier and a small MLP, scored on a held-out split.

    python examples/iris/main.py [--epochs 100]

Reads ``$NEURONET_DATA/iris/iris.csv`` (default ``<repo>/../shared/data``): scikit-learn's layout,
a first line ``150,4,setosa,versicolor,virginica`` (taken as the header: it is not all numbers)
followed by ``f1,f2,f3,f4,label`` rows.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    nn.manual_seed(0)

    path = DATA / "iris" / "iris.csv"
    x, y = nn.data.load_csv(path, label_column=-1)  # x (150, 4) float32, y (150,) int64 in 0..2
    with open(path) as f:
        class_names = f.readline().strip().split(",")[2:]
    x_train, x_test, y_train, y_test = nn.data.train_test_split(x, y, test_size=0.3, seed=0)
    x_train, mean, std = nn.data.standardize(x_train)  # statistics of the training split only
    x_test, _, _ = nn.data.standardize(x_test, mean, std)
    print(f"{path}: {len(x)} samples, {x.shape[1]} features, classes {class_names}; "
          f"train {len(x_train)}, test {len(x_test)}")

    models = {
        "single layer (softmax regression)": nn.Sequential(nn.Dense(4, 3)),
        "MLP 4-16-16-3 (ReLU)": nn.Sequential(nn.Dense(4, 16, activation="relu"),
                                              nn.Dense(16, 16, activation="relu"), nn.Dense(16, 3)),
    }
    for name, model in models.items():
        model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
        start = time.perf_counter()
        model.fit(x_train, y_train, epochs=args.epochs, batch_size=16, verbose=0)
        seconds = time.perf_counter() - start
        train, test = model.evaluate(x_train, y_train), model.evaluate(x_test, y_test)
        print(f"{name:<36} train acc {train['accuracy']:.3f}  test acc {test['accuracy']:.3f}  "
              f"test loss {test['loss']:.3f}  ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
