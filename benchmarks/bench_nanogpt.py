"""nanoGPT's Shakespeare-char configuration: 6 layers, 6 heads, width 384 (ff 1536), block 256,
batch 64, dropout 0.2, vocab 65, AdamW: training steps, neuronet vs PyTorch (``bench_gpt.py``'s model).

About 1.2 TFLOP per training step and GiBs of saved activations at batch 64 x 256 tokens (peak RSS on
2026-12-06, fourth session: NumPy backend 5.3 GiB, PyTorch 6.6 GiB; 4.5 GiB since the blocks' dropouts
write over their inputs, 5f5d5b0; 4.0 GiB since their hidden outputs share one buffer, 3ff22b2): about
10 s per step on 2 cores, hence few steps and one round by default (about 8 minutes for the seven
engines). Three engines recompute each block's activations in backward instead of keeping them:
``neuronet-numpy-remat`` and ``neuronet-torch-remat`` (each block in ``nn.Remat``) and
``pytorch-checkpoint`` (``torch.utils.checkpoint`` per block); at 10b6406 they took 1937, 2721 and 2951
MiB against PyTorch's 6980, at 1.25x, 1.11x and 0.65x PyTorch's speed.
``NEURONET_NANOGPT_BATCH=8`` runs the same model on a smaller batch where the machine is shared. The
second mode, ``predict`` (``NEURONET_BENCH_MODE=predict``; both run by default), times ``model.predict`` on
16 sequences of 256 tokens against PyTorch's eval-mode model under ``torch.inference_mode()``. Tokens
are random integers below 65 (timing does not depend on the text). nanoGPT itself uses no biases and
weight-tied embeddings; both engines here keep torch.nn's biases, untied.
"""

from __future__ import annotations

import os

import bench_gpt
import harness
import numpy as np

VOCAB, BLOCK, LAYERS, HEADS, DIM, DROPOUT = 65, 256, 6, 6, 384, 0.2
BATCH = int(os.environ.get("NEURONET_NANOGPT_BATCH", 64))  # a smaller batch where memory is short
FF = 4 * DIM


def _data():
    rng = np.random.default_rng(0)
    return rng.integers(0, VOCAB, (BATCH, BLOCK)), rng.integers(0, VOCAB, (BATCH, BLOCK))


SHAPE = dict(vocab=VOCAB, block=BLOCK, layers=LAYERS, heads=HEADS, dim=DIM, ff=FF, dropout=DROPOUT)
PREDICT_BATCH = min(16, BATCH)  # sequences of BLOCK tokens per predict call


def _prompts():
    return np.random.default_rng(1).integers(0, VOCAB, (PREDICT_BATCH, BLOCK))


def neuronet_predict(backend: str):
    def build():
        import neuronet as nn

        model = bench_gpt.neuronet_gpt(**SHAPE)(nn)
        model.build((BLOCK,))
        model.to(backend)
        x = _prompts()
        return lambda: model.predict(x, batch_size=PREDICT_BATCH)
    return build


def pytorch_predict():
    import torch

    model = bench_gpt.torch_gpt(**SHAPE).eval()
    x = torch.from_numpy(_prompts())

    def infer():
        with torch.inference_mode():
            return model(x).numpy()
    return infer


def engines(mode: str) -> dict:
    if mode == "predict":
        return harness.standard_engines(neuronet_predict, pytorch_predict, training=False)
    found = harness.standard_engines(
        harness.neuronet_training(bench_gpt.neuronet_gpt(**SHAPE), _data, optimizer="AdamW"),
        bench_gpt.pytorch_gpt(_data, **SHAPE))
    # Activation checkpointing on both sides (each block recomputed in backward): memory against time.
    remat = harness.neuronet_training(bench_gpt.neuronet_gpt(**SHAPE, remat=True), _data, optimizer="AdamW")
    found["neuronet-numpy-remat"] = remat("numpy")
    found["neuronet-torch-remat"] = remat("torch")
    found["pytorch-checkpoint"] = bench_gpt.pytorch_gpt(_data, **SHAPE, checkpoint=True)
    return found


SIZE = f"{LAYERS} x ({DIM} wide, {HEADS} heads, ff {FF}), block {BLOCK}"
FORWARD_FLOPS = {"train": harness.transformer_forward_flops(BATCH, BLOCK, DIM, FF, LAYERS, VOCAB),
                 "predict": harness.transformer_forward_flops(PREDICT_BATCH, BLOCK, DIM, FF, LAYERS, VOCAB)}
RUNS = {"train": (f"nanoGPT shakespeare-char: {SIZE}, batch {BATCH}, dropout {DROPOUT}, AdamW, float32 "
                  "(training step)", dict(steps=2, warmup=1, rounds=1,
                                          flops=harness.training_flops(FORWARD_FLOPS["train"]))),
        "predict": (f"nanoGPT shakespeare-char: {SIZE}, {PREDICT_BATCH} sequences, float32 (inference: "
                    "predict)", dict(steps=5, warmup=2, rounds=3, flops=FORWARD_FLOPS["predict"]))}

if __name__ == "__main__":
    modes = [os.environ["NEURONET_BENCH_MODE"]] if "NEURONET_BENCH_MODE" in os.environ else list(RUNS)
    for mode in modes:
        os.environ["NEURONET_BENCH_MODE"] = mode  # the per-engine child processes inherit it
        title, run = RUNS[mode]
        harness.main(engines(mode), title, **run)
