"""check_layer over every public layer (one table), and proof that it fails on broken layers."""

from __future__ import annotations

import numpy as np
import pytest

import neuronet as nn
from neuronet.testing import ALL_CHECKS, check_layer

# (layer, input shape without the batch axis, check_layer options). Every name in nn.layers.__all__
# appears at least once (test_table_covers_every_public_layer).
TABLE = [
    (nn.Dense(4, 3), (4,), {}),
    (nn.Dense(4, 3, activation="gelu", bias=False), (2, 4), {}),
    (nn.Conv1D(2, 3, 3, padding=1), (2, 7), {}),
    (nn.Conv2D(2, 3, 3, stride=2, padding=1, activation="relu"), (2, 6, 6), {}),
    (nn.MaxPool2D(2), (2, 4, 4), {}),
    (nn.AvgPool2D(3, stride=2, padding=1), (2, 5, 5), {}),
    (nn.GlobalAvgPool2D(), (3, 4, 4), {}),
    (nn.Conv2D(4, 4, 4, padding="same", dilation=2, groups=2), (4, 5, 5), {}),
    (nn.ConvTranspose2D(2, 4, 3, stride=2, padding=1, output_padding=1, groups=2), (2, 3, 4), {}),
    (nn.MaxPool1D(3, 2, 1, ceil_mode=True), (2, 8), {}),
    (nn.AvgPool1D(2, ceil_mode=True, count_include_pad=False), (2, 7), {}),
    (nn.MaxPool2D(3, 2, 1, ceil_mode=True), (2, 6, 7), {}),
    (nn.AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 6, 7), {}),
    (nn.Upsample(2), (2, 3, 4), {}),
    (nn.Upsample((2, 1.5), "bilinear"), (2, 3, 4), {}),
    (nn.Flatten(), (2, 3, 2), {}),
    (nn.Reshape((6,)), (2, 3), {}),
    (nn.Dropout(0.3), (5,), {}),
    (nn.BatchNorm1D(4), (4,), {"batch": 6}),
    (nn.BatchNorm2D(3), (3, 4, 4), {}),
    (nn.LayerNorm(5), (2, 5), {}),
    (nn.RMSNorm(5), (2, 5), {}),
    (nn.GroupNorm(2, 4), (4, 3, 2), {"wrong_input": np.zeros((2, 6, 3, 2))}),  # any positions, 4 channels
    (nn.Embedding(10, 4), (6,), {"integer_high": 10, "wrong_input": np.zeros((2, 6))}),
    (nn.Embedding(10, 4, padding_idx=0), (6,),  # the padding row is read but (by design) gets no gradient
     {"integer_high": 10, "wrong_input": np.zeros((2, 6)),
      "checks": [c for c in ALL_CHECKS if c != "gradients"]}),
    (nn.PositionalEncoding(8, 4), (5, 4), {}),
    (nn.PositionalEncoding(8, 4, learned=True), (5, 4), {}),
    (nn.LSTM(3, 4), (5, 3), {}),
    (nn.GRU(3, 4, return_sequences=True), (5, 3), {}),
    (nn.Bidirectional(nn.LSTM(3, 4, return_sequences=True)), (5, 3), {}),
    (nn.LSTM(3, 4, num_layers=2, dropout=0.3), (5, 3), {}),
    (nn.Bidirectional(nn.GRU(3, 4, num_layers=3, dropout=0.2, return_sequences=True)), (5, 3), {}),
    (nn.MultiHeadAttention(8, 2, causal=True), (5, 8), {}),
    (nn.TransformerBlock(8, 2, 16, causal=True), (5, 8), {}),
    (nn.TransformerBlock(8, 2, 16, norm="rms", ffn="swiglu", rope=True), (5, 8), {}),
    (nn.SwiGLU(6, 8), (2, 6), {}),
    (nn.MoE(6, 8, num_experts=3, top_k=2), (6,), {"batch": 8}),
    (nn.MeanPooling(), (5, 4), {}),
    (nn.CLSPooling(), (5, 4), {}),
    (nn.LastToken(), (5, 4), {}),
    (nn.RBF(3, 4, gamma=0.5), (3,), {}),
    (nn.GlobalAttention(4), (5, 4), {}),
    (nn.Activation("softmax"), (5,), {}),
    (nn.ELU(0.5), (2, 5), {}),
    (nn.LeakyReLU(0.2), (2, 5), {}),
    *[(cls(), (2, 5), {}) for cls in (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU,
                                       nn.SiLU, nn.Softmax, nn.LogSoftmax)],
]


@pytest.mark.parametrize("layer, shape, options", TABLE, ids=[repr(row[0]) for row in TABLE])
def test_layer(layer, shape, options):
    check_layer(layer, shape, **options)


# Layers of several inputs (a list) or wrapping another layer, which check_layer cannot rebuild from a
# config alone: tests/model/test_functional.py and tests/layers/test_remat.py check them (PyTorch,
# numerical gradients, both backends).
ELSEWHERE = {"Add", "Multiply", "Concatenate", "Residual", "Remat"}


def test_table_covers_every_public_layer():
    covered = {type(layer).__name__ for layer, _, _ in TABLE} | ELSEWHERE
    missing = sorted(set(nn.layers.__all__) - covered)
    assert not missing, f"add rows to TABLE for {missing}"


# ----------------------------------------------------------------- the checker fails on broken layers
class _GradOff(nn.Dense):
    """Dense whose weight gradient is 1 % too large."""

    def backward(self, dy):
        before = self.grads["weight"].copy()
        dx = super().backward(dy)
        self.grads["weight"][...] = before + 1.01 * (self.grads["weight"] - before)
        return dx


class _Overwrites(nn.Dense):
    """Dense whose backward assigns its bias gradient instead of accumulating it."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["bias"][...] = dy.reshape(-1, self.out_features).sum(axis=0)
        return dx


class _Allocates(nn.Dense):
    """Dense that allocates a fresh 1 MB array every forward."""

    def forward(self, x, training=True):
        self._junk = getattr(self, "_junk", []) + [np.ones(1 << 17)]
        return super().forward(x, training)


class _NoShapeCheck(nn.Flatten):
    def check_input(self, x):
        pass


@pytest.mark.parametrize("broken, check, words", [
    (_GradOff(4, 3), "gradients", "'weight'"),
    (_Overwrites(4, 3), "accumulation", "'bias'"),
    (_Allocates(4, 3), "allocation", "grew"),
    (_NoShapeCheck(), "bad_input", "no ShapeError"),
])
def test_checker_catches(broken, check, words):
    with pytest.raises(AssertionError) as info:
        check_layer(broken, (4,), checks=[check])
    message = str(info.value)
    assert type(broken).__name__ in message and words in message, message


def test_gradient_failure_names_the_worst_element():
    with pytest.raises(AssertionError, match=r"check_layer\(_GradOff\(4, 3\)\), float64 numerical gradients: "
                                             r"gradient of 'weight' differs at \(\d+, \d+\)"):
        check_layer(_GradOff(4, 3), (4,), checks=["gradients"])


def test_unknown_check_is_named():
    with pytest.raises(ValueError, match="unknown checks"):
        check_layer(nn.Dense(2, 2), (2,), checks=["gradient"])
    assert "backends" in ALL_CHECKS
