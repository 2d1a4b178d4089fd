"""The declarative input-shape check: one pattern per layer gives build's and forward's ShapeError."""

import numpy as np
import pytest

import neuronet as nn
from neuronet.core.input_spec import describe, matches


@pytest.mark.parametrize("spec, shape, ok", [
    ((..., 8), (8,), True), ((..., 8), (3, 8), True), ((..., 8), (), False), ((..., 8), (8, 3), False),
    (("T", 4), (5, 4), True), (("T", 4), (0, 4), False), (("T", 4), (5, 4, 1), False),
    ((4, ...), (4,), True), ((4, ...), (4, 2, 2), True), ((4, ...), (3, 2), False),
])
def test_matches(spec, shape, ok):
    assert matches(spec, shape) is ok


def test_describe():
    assert describe((..., 8)) == "(N, ..., 8)"
    assert describe(("T", 8)) == "(N, T, 8) with T >= 1"


@pytest.mark.parametrize("layer, bad", [
    (nn.Dense(4, 2), (3, 5)), (nn.LSTM(4, 3), (2, 0, 4)), (nn.LayerNorm(4), (2, 3)),
])
def test_layers_reject_inputs_their_spec_excludes(layer, bad):
    with pytest.raises(nn.ShapeError, match=rf"{type(layer).__name__}.*expected input of shape"):
        layer.build(bad[1:])
    good = list(bad)
    good[-1] = 4
    good[1] = max(good[1], 1)
    layer.build(tuple(good[1:]))
    got = ", ".join(map(str, bad))
    with pytest.raises(nn.ShapeError, match=r"expected input of shape \(N, .*got \(" + got):
        layer.check_input(np.zeros(bad, np.float32))
