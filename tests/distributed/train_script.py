"""Run by tests/distributed/test_distributed.py under mpiexec or torchrun (or as one plain process).

    python train_script.py OUT_DIR MODE [BATCH]

Trains a small MLP on fixed data with shuffle=False and writes the final parameters of this rank to
OUT_DIR/params_<rank>.npz (plus the fit history on rank 0). MODE: "fit" (normal), "kill" (rank 1 kills
itself mid-fit), "hang" (rank 1 stops answering mid-fit), "mismatch" (rank 1 builds another model),
"bn" (a model with BatchNorm, 2 pool workers per rank, on the torch backend under torchrun),
"resume" (load OUT_DIR/ckpt.nnet, train one more epoch).
"""

import json
import os
import signal
import sys
import time

import numpy as np

import neuronet as nn

out, mode = sys.argv[1], sys.argv[2]
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
distributed = nn.distributed.launcher() is not None
if distributed:
    nn.distributed.init()
rank = nn.distributed.rank()

rng = np.random.default_rng(0)
x = rng.standard_normal((256, 12)).astype(np.float32)
y = rng.integers(0, 4, 256)
nn.manual_seed(100 + rank)  # different initial weights per rank: the broadcast must fix them
hidden = 24 if (mode == "mismatch" and rank == 1) else 16
layers = [nn.Dense(12, hidden, activation="relu")]
if mode == "bn":
    layers.append(nn.BatchNorm1D(hidden))
layers.append(nn.Dense(hidden, 4))
if mode == "resume":
    model = nn.load(os.path.join(out, "ckpt.nnet"))
else:
    model = nn.Sequential(*layers).compile(nn.Adam(1e-2), "cross_entropy", metrics=["accuracy"])
    if mode == "bn" and nn.distributed.launcher() == "torch":
        model.build((12,))
        model.to("torch")


class Fault(nn.Callback):
    def on_batch_end(self, batch, logs=None):
        if rank == 1 and batch == 3:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(3600)


history = model.fit(x, y, epochs=2 if mode != "resume" else 3, batch_size=batch, shuffle=False, verbose=0,
                    distributed=distributed, callbacks=[Fault()], workers=2 if mode == "bn" else 1,
                    initial_epoch=getattr(model, "epoch", 0) if mode == "resume" else 0)
np.savez(os.path.join(out, f"params_{rank}.npz"), **model.state_dict())
if rank == 0:
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(history.history, f)
    if mode == "fit":
        model.save(os.path.join(out, "ckpt.nnet"))
        with open(os.path.join(out, "evaluate.json"), "w") as f:
            json.dump(model.evaluate(x, y, distributed=distributed), f)
elif mode == "fit":
    model.evaluate(x, y, distributed=distributed)
nn.distributed.shutdown()
