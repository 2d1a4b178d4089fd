"""Train a small CNN on scikit-learn's digits, export it to ONNX and GGUF, and check what the files compute.

    python examples/export/main.py [--epochs 15] [--out export_out]

ONNX: the file runs in onnxruntime and is compared with model.predict on the test set.
GGUF: written as f32, f16 and q8_0, read back with gguf.GGUFReader through nn.load_gguf and compared
the same way. Prints accuracy, maximum absolute differences and file sizes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import neuronet as nn


def build_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2D(1, 16, 3, padding=1, activation="relu"), nn.BatchNorm2D(16), nn.MaxPool2D(2),  # (16, 4, 4)
        nn.Conv2D(16, 32, 3, padding=1, activation="relu"), nn.GlobalAvgPool2D(),                # (32,)
        nn.Dense(32, 64, activation="gelu"), nn.Dropout(0.1), nn.Dense(64, 10))


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("export_out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    nn.manual_seed(0)
    x, y = nn.data.load_digits()
    x_train, x_test, y_train, y_test = nn.data.train_test_split(x, y, test_size=0.25, seed=0)
    model = build_model()
    model.compile(optimizer=nn.Adam(3e-3), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    want = model.predict(x_test)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s; "
          f"test accuracy {accuracy(want, y_test):.4f} ({model.num_params():,} parameters)")

    onnx_path = nn.export_onnx(model, args.out / "digits_cnn.onnx", input_shape=(1, 8, 8))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x_test})[0]
    print(f"{'file':<24}{'bytes':>10}  {'max |diff| vs predict':>22}  {'accuracy':>8}")
    report(onnx_path, got, want, y_test)

    for dtype in ("f32", "f16", "q8_0"):
        path = nn.export_gguf(model, args.out / f"digits_cnn.{dtype}.gguf", dtype, name="digits-cnn")
        report(path, nn.load_gguf(path).predict(x_test), want, y_test)


def report(path: Path, got: np.ndarray, want: np.ndarray, y: np.ndarray) -> None:
    diff = float(np.abs(got - want).max())
    print(f"{path.name:<24}{path.stat().st_size:>10,}  {diff:>22.3g}  {accuracy(got, y):>8.4f}")


if __name__ == "__main__":
    main()
