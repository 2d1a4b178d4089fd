import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch


class Pool(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


POOLS = {"MeanPooling": lambda x: x.mean(dim=1), "CLSPooling": lambda x: x[:, 0],
         "LastToken": lambda x: x[:, -1]}


@pytest.mark.parametrize("name", list(POOLS))
@pytest.mark.parametrize("shape", [(3, 5, 4), (1, 1, 2)])
def test_matches_torch(name, shape):
    x = np.random.default_rng(0).standard_normal(shape)
    compare_with_torch(getattr(nn, name)(), Pool(POOLS[name]), x)


@pytest.mark.parametrize("name", list(POOLS))
def test_gradcheck(name):
    check_gradients(getattr(nn, name)(), np.random.default_rng(1).standard_normal((2, 3, 4)))


@pytest.mark.parametrize("name", list(POOLS))
def test_bad_input_names_the_layer(name):
    model = nn.Sequential(getattr(nn, name)())
    model.build((4, 5))
    with pytest.raises(nn.ShapeError, match=rf"{name}\(\).*\(N, T, 5\).*got \(2, 4, 6\)"):
        model.forward(np.zeros((2, 4, 6), np.float32))
    with pytest.raises(nn.ShapeError, match=rf"{name}\(\).*got \(N, 5\)"):
        nn.Sequential(getattr(nn, name)()).build((5,))


def test_pooled_lstm_model_trains():
    x = np.random.default_rng(4).standard_normal((32, 6, 3)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1) > 0).astype(np.int64)
    model = nn.Sequential(nn.LSTM(3, 8, return_sequences=True), nn.MeanPooling(), nn.Dense(8, 2))
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss())
    first = model.train_step(x, y)
    for _ in range(80):
        last = model.train_step(x, y)
    assert last < 0.3 * first
