import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.layers.embedding import sinusoid_table
from neuronet.testing import check_gradients, compare_with_torch


def _on(layer, backend, shape):
    layer.build(shape, dtype="float64")
    return layer.to(backend)


def test_embedding_matches_torch_with_repeated_ids(backend):
    ids = np.array([[1, 3, 3, 0], [3, 1, 4, 3]])  # id 3 four times: its gradient rows must accumulate
    result = compare_with_torch(_on(nn.Embedding(5, 6), backend, (4,)), torch.nn.Embedding(5, 6), ids)
    assert result["y"].shape == (2, 4, 6)


@pytest.mark.parametrize("padding_idx", [3, -2])
def test_embedding_padding_idx_matches_torch(padding_idx, backend):
    ids = np.array([[1, 3, 3, 0], [3, 1, 4, 3]])  # the padding id 3 appears four times
    module = torch.nn.Embedding(5, 6, padding_idx=padding_idx)
    with torch.no_grad():
        module.weight[3] = torch.randn(6)  # a non-zero padding row: still no gradient
    result = compare_with_torch(_on(nn.Embedding(5, 6, padding_idx=padding_idx), backend, (4,)), module, ids)
    assert result["y"].shape == (2, 4, 6)


def test_embedding_padding_row_starts_at_zero_and_never_trains():
    layer = nn.Embedding(5, 3, padding_idx=-1)
    assert layer.padding_idx == 4 and repr(layer) == "Embedding(5, 3, padding_idx=4)"
    layer.build((2,))
    np.testing.assert_array_equal(layer.params["weight"][4], 0.0)
    assert np.all(layer.params["weight"][:4] != 0.0)
    layer.zero_grad()
    layer.forward(np.array([[4, 1], [4, 4]]))
    layer.backward(np.ones((2, 2, 3), np.float32))
    np.testing.assert_array_equal(layer.grads["weight"][4], 0.0)
    np.testing.assert_array_equal(layer.grads["weight"][1], 1.0)
    again = nn.Embedding(**layer.get_config())
    assert again.padding_idx == 4


@pytest.mark.parametrize("bad", [5, -6])
def test_embedding_padding_idx_out_of_range(bad):
    with pytest.raises(nn.errors.ConfigError,
                       match=rf"Embedding\(5, 2\): padding_idx must be in \[-5, 5\), got {bad}"):
        nn.Embedding(5, 2, padding_idx=bad)


def test_embedding_gradcheck():
    check_gradients(nn.Embedding(4, 3), np.array([[0, 2, 2], [3, 2, 0]]))


@pytest.mark.parametrize("bad", [5, -1])
def test_embedding_id_out_of_range_names_layer_id_and_range(bad, backend):
    layer = _on(nn.Embedding(5, 2), backend, (3,))
    with pytest.raises(ValueError, match=rf"Embedding\(5, 2\): id {bad} out of range \[0, 5\)"):
        layer.forward(layer.ops.asarray(np.array([[0, bad, 1]])))


def test_embedding_rejects_float_ids():
    model = nn.Sequential(nn.Embedding(5, 2))
    model.build((3,))
    with pytest.raises(nn.ShapeError, match=r"Embedding\(5, 2\).*integer ids"):
        model.forward(np.zeros((1, 3), np.float32))


def test_sinusoidal_encoding_matches_formula_and_is_not_state(backend):
    layer = _on(nn.PositionalEncoding(10, 6), backend, (7, 6))
    x = np.random.default_rng(0).standard_normal((2, 7, 6))
    y = layer.ops.to_numpy(layer.forward(layer.ops.asarray(x)))
    p = torch.arange(7, dtype=torch.float64)[:, None]
    div = torch.pow(10000.0, torch.arange(0, 6, 2, dtype=torch.float64) / 6)
    pe = torch.zeros(7, 6, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(p / div), torch.cos(p / div)
    np.testing.assert_allclose(y, x + pe.numpy()[None], atol=1e-12)
    dy = layer.ops.asarray(np.ones_like(x))
    np.testing.assert_array_equal(layer.ops.to_numpy(layer.backward(dy)), np.ones_like(x))
    assert layer.state_dict() == {} and layer.num_params() == 0


def test_sinusoid_table_odd_dim():
    t = sinusoid_table(4, 5)
    assert t.shape == (4, 5) and np.allclose(t[1, 4], np.sin(1 / 10000 ** (4 / 5)))


class LearnedPositions(torch.nn.Module):
    def __init__(self, max_len, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(max_len, dim))

    def forward(self, x):
        return x + self.weight[: x.shape[1]]


def test_learned_encoding_matches_torch(backend):
    x = np.random.default_rng(1).standard_normal((3, 5, 4))
    layer = _on(nn.PositionalEncoding(8, 4, learned=True), backend, (5, 4))
    compare_with_torch(layer, LearnedPositions(8, 4), x)  # rows 5..7 get a zero gradient


def test_learned_encoding_gradcheck():
    x = np.random.default_rng(2).standard_normal((2, 4, 3))
    check_gradients(nn.PositionalEncoding(6, 3, learned=True), x)


@pytest.mark.parametrize("learned", [False, True])
def test_sequence_longer_than_max_len(learned):
    model = nn.Sequential(nn.PositionalEncoding(4, 3, learned=learned))
    model.build((4, 3))
    with pytest.raises(nn.ShapeError, match=r"PositionalEncoding\(4, 3.*length 6 exceeds max_len 4"):
        model.forward(np.zeros((1, 6, 3), np.float32))
    with pytest.raises(nn.ShapeError, match=r"\(N, T, 3\).*\(N, 4, 2\)"):
        nn.PositionalEncoding(4, 3).build((4, 2))


def test_embedding_backward_accumulates_many_repeats():
    layer = nn.Embedding(65, 64)
    ids = np.random.default_rng(3).integers(0, 65, (64, 256))
    layer(ids, training=True)
    layer.backward(np.ones((64, 256, 64), np.float32))
    np.testing.assert_allclose(layer.grads["weight"].sum(1), np.bincount(ids.ravel(), minlength=65) * 64)
