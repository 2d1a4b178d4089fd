import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch, step_allocations

TORCH_RNN = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


def make(kind, input_size, hidden, return_sequences, bidirectional):
    layer = getattr(nn, kind)(input_size, hidden, return_sequences=return_sequences)
    return nn.Bidirectional(layer) if bidirectional else layer


def torch_forward(return_sequences):
    """nn.LSTM/GRU output in our layout: all steps (N, T, D*H), or [h_n of each direction] (N, D*H)."""
    def run(module, x):
        out, state = module(x)
        if return_sequences:
            return out
        h_n = state[0] if isinstance(state, tuple) else state  # (D, N, H)
        return h_n.permute(1, 0, 2).reshape(x.shape[0], -1)
    return run


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_torch_values_and_all_gradients(kind, return_sequences, bidirectional, batch):
    torch.manual_seed(0)
    module = TORCH_RNN[kind](4, 5, batch_first=True, bidirectional=bidirectional)
    x = np.random.default_rng(1).standard_normal((batch, 6, 4))
    compare_with_torch(make(kind, 4, 5, return_sequences, bidirectional), module, x,
                       torch_forward=torch_forward(return_sequences), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_float32_fast_kernels_match_torch(kind):
    torch.manual_seed(1)
    module = TORCH_RNN[kind](8, 16, batch_first=True, bidirectional=True)
    x = (2 * np.random.default_rng(2).standard_normal((4, 7, 8))).astype(np.float32)
    compare_with_torch(make(kind, 8, 16, True, True), module, x, torch_forward=torch_forward(True),
                       dtype="float32", atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradcheck(kind, return_sequences, bidirectional):
    x = np.random.default_rng(3).standard_normal((2, 3, 3))
    check_gradients(make(kind, 3, 2, return_sequences, bidirectional), x)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype,atol", [("float64", 1e-12), ("float32", 2e-6)])
def test_torch_backend_matches_numpy(kind, dtype, atol):
    x = np.random.default_rng(4).standard_normal((3, 5, 4)).astype(dtype)
    dy = np.random.default_rng(5).standard_normal((3, 5, 12)).astype(dtype)
    results = []
    for backend in ("numpy", "torch"):
        nn.manual_seed(0)
        layer = make(kind, 4, 6, True, True)
        layer.build((5, 4), dtype=dtype)
        layer.to(backend)
        y = layer.ops.to_numpy(layer.forward(layer.ops.asarray(x)))
        layer.zero_grad()
        dx = layer.ops.to_numpy(layer.backward(layer.ops.asarray(dy)))
        results.append((np.array(y), np.array(dx), np.array(layer.ops.to_numpy(layer.flat_grads))))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)


def test_torch_state_dict_loads_into_sequential_and_predicts_the_same():
    torch.manual_seed(2)
    lstm = torch.nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    head = torch.nn.Linear(8, 2)
    model = nn.Sequential(nn.Bidirectional(nn.LSTM(3, 4)), nn.Dense(8, 2))
    model.build((5, 3))
    state = {f"0.{k}": v for k, v in lstm.state_dict().items()}
    state.update({f"1.{k}": v for k, v in head.state_dict().items()})
    assert list(dict(model.named_parameters())) == list(state)
    model.load_state_dict(state)
    x = np.random.default_rng(6).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        h_n = lstm(torch.from_numpy(x))[1][0]
        want = head(h_n.permute(1, 0, 2).reshape(2, 8)).numpy()
    np.testing.assert_allclose(model.predict(x), want, atol=1e-5)


def test_variable_sequence_length_and_backward_accumulates():
    layer = nn.GRU(2, 3)
    layer.build((4, 2), dtype="float64")
    x = np.random.default_rng(7).standard_normal((2, 9, 2))
    dy = np.ones((2, 3))
    layer.zero_grad()
    layer.forward(x)
    layer.backward(dy)
    once = np.array(layer.flat_grads)
    layer.backward(dy)
    np.testing.assert_allclose(layer.flat_grads, 2 * once)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_wrong_feature_size_names_the_layer(kind):
    model = nn.Sequential(getattr(nn, kind)(4, 3))
    model.build((5, 4))
    with pytest.raises(nn.ShapeError, match=rf"{kind}\(4, 3\).*\(N, T, 4\).*\(2, 5, 6\)"):
        model.forward(np.zeros((2, 5, 6), np.float32))
    with pytest.raises(nn.ShapeError, match=rf"{kind}\(4, 3\).*got \(2, 4\)"):
        model.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(nn.ShapeError, match=r"Bidirectional\(LSTM\(4, 3\)\)"):
        nn.Sequential(nn.Bidirectional(nn.LSTM(4, 3))).build((5, 2))


def test_bidirectional_config_round_trip_and_bad_argument():
    layer = nn.Bidirectional(nn.GRU(3, 2, return_sequences=True))
    again = nn.Bidirectional(**layer.get_config())
    assert repr(again) == repr(layer) == "Bidirectional(GRU(3, 2, return_sequences=True))"
    with pytest.raises(TypeError, match="LSTM or GRU"):
        nn.Bidirectional(nn.Dense(3, 2))


def test_lstm_train_step_allocates_nothing():
    x = np.random.default_rng(8).standard_normal((16, 7, 8)).astype(np.float32)
    y = np.random.default_rng(9).integers(0, 4, 16)
    model = nn.Sequential(nn.LSTM(8, 32), nn.Dense(32, 4))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss())
    growth, peak = step_allocations(lambda: model.train_step(x, y))
    assert growth < 64 * 1024, growth
    assert peak < 256 * 1024, peak
