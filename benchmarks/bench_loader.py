"""Training from nn.data.DataLoader vs from in-memory arrays: the MNIST CNN of bench_cnn, batch 64, Adam.

Each timed step is one epoch of ``fit`` over 640 MNIST-shaped samples (10 batches), shuffled:
``arrays`` gathers batches from NumPy arrays in the training loop; ``loader`` iterates a
DataLoader whose background thread gathers the next batches while the model computes; ``memmap``
is the same loader over an ``np.memmap`` file (data larger than memory is read this way). The
ratio loader time / arrays time is the cost of the loader (1.00: none).

Measured 2026-12-06, 2-core machine under heavy load (load average ~17), 1 thread, the three alternating
in one process, 6 rounds of 5 batches: loader / arrays 1.04 CPU time (rounds 0.85-1.24), 1.05 wall;
memmap / arrays 0.98 CPU, 0.97 wall (medians). A 3-round harness run at default threads had rounds
41-153 % apart (the harness warned): its ratios (0.76 and 1.04 wall) mean nothing.
"""

from __future__ import annotations

import os
import tempfile

import bench_cnn
import harness
import numpy as np

SAMPLES, BATCH = 640, 64


def engine(kind: str):
    folder = tempfile.TemporaryDirectory()  # for the memmap file; removed when the process ends

    def build():
        import neuronet as nn

        nn.manual_seed(0)
        x, y = bench_cnn._data(SAMPLES)
        model = bench_cnn.neuronet_model(nn)
        model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss())
        model.build(tuple(x.shape[1:]))
        if kind == "arrays":
            return lambda: model.fit(x, y, batch_size=BATCH, verbose=0)
        if kind == "memmap":
            path = os.path.join(folder.name, "x.npy")
            np.save(path, x)
            x = np.load(path, mmap_mode="r")
        loader = nn.data.DataLoader(nn.data.Dataset(x, y), batch_size=BATCH, shuffle=True)
        return lambda: model.fit(loader, verbose=0)
    return build


ENGINES = {name: engine(name) for name in ("arrays", "loader", "memmap")}

if __name__ == "__main__":
    times = harness.main(ENGINES, f"MNIST CNN, one epoch of {SAMPLES} samples, batch {BATCH}, Adam: "
                                  "fit from arrays vs from a DataLoader", steps=3, warmup=1)
    if times:
        for name in ("loader", "memmap"):
            print(f"{name} / arrays time per epoch: {times[name] / times['arrays']:.3f}")
