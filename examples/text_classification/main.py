"""Who is speaking? A character-level BiLSTM names the speaker of a line of Shakespeare.

    python examples/text_classification/main.py               # 8 epochs
    python examples/text_classification/main.py --epochs 1    # a quick smoke run

Data: $NEURONET_DATA/tinyshakespeare/input.txt (default <repo>/../shared/data). The file is a sequence
of speeches ("NAME:" then the lines). The task: given one verse line (its first 64 characters), which
of the five characters with the most speeches said it: GLOUCESTER, DUKE VINCENTIO, MENENIUS, ROMEO or
PETRUCHIO. Speeches (not lines) are split 80/20 into train and test, so no speech is in both.

Model: Embedding(65 chars + pad, 32) -> Bidirectional(LSTM(32, 64)) -> Dense(128, 5), Adam(3e-3),
batch 64; the line is right-aligned in the window (padding first), so the forward direction ends on the
last character.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
LENGTH, SPEAKERS = 64, 5


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) for every block "NAME:\\nline\\nline..." separated by blank lines."""
    out = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":"):
            out.append((lines[0][:-1], lines[1:]))
    return out


def encode(lines: list[str], vocab: dict[str, int]) -> np.ndarray:
    """(M, LENGTH) int64 ids, right-aligned, 0 = padding."""
    x = np.zeros((len(lines), LENGTH), np.int64)
    for i, line in enumerate(lines):
        ids = [vocab[c] for c in line[:LENGTH]]
        x[i, LENGTH - len(ids):] = ids
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    text = (DATA / "tinyshakespeare" / "input.txt").read_text()
    vocab = {c: i + 1 for i, c in enumerate(sorted(set(text)))}
    all_speeches = speeches(text)
    top = [name for name, _ in Counter(s for s, _ in all_speeches).most_common(SPEAKERS)]
    chosen = [(top.index(s), lines) for s, lines in all_speeches if s in top]
    rng = np.random.default_rng(0)
    test_speech = rng.random(len(chosen)) < 0.2
    split = {False: ([], []), True: ([], [])}
    for (label, lines), is_test in zip(chosen, test_speech, strict=True):
        for line in lines:
            split[bool(is_test)][0].append(line)
            split[bool(is_test)][1].append(label)
    x_tr, y_tr = encode(split[False][0], vocab), np.array(split[False][1])
    x_te, y_te = encode(split[True][0], vocab), np.array(split[True][1])
    majority = np.bincount(y_tr).argmax()
    print(f"speakers: {', '.join(top)}")
    print(f"{len(x_tr)} training lines, {len(x_te)} test lines; majority-class test accuracy "
          f"{np.mean(y_te == majority):.3f}, chance {1 / SPEAKERS:.3f}")

    nn.manual_seed(0)
    model = nn.Sequential(nn.Embedding(len(vocab) + 1, 32), nn.Bidirectional(nn.LSTM(32, 64)),
                          nn.Dense(128, SPEAKERS))
    model.compile(optimizer=nn.Adam(3e-3), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    start = time.perf_counter()
    hist = model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=64, validation_data=(x_te, y_te), verbose=0)
    seconds = time.perf_counter() - start
    h = hist.history
    for epoch in range(len(h["loss"])):
        print(f"epoch {epoch + 1}: train loss {h['loss'][epoch]:.3f}, "
              f"train accuracy {h['accuracy'][epoch]:.3f}, test accuracy {h['val_accuracy'][epoch]:.3f}")
    print(f"{args.epochs} epochs in {seconds:.1f} s")


if __name__ == "__main__":
    main()
