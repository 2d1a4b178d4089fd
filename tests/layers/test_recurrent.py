import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import assert_step_allocates_nothing, check_gradients, compare_with_torch

TORCH_RNN = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


def make(kind, input_size, hidden, return_sequences, bidirectional, **kwargs):
    layer = getattr(nn, kind)(input_size, hidden, return_sequences=return_sequences, **kwargs)
    return nn.Bidirectional(layer) if bidirectional else layer


def torch_forward(return_sequences):
    """nn.LSTM/GRU output in our layout: all steps (N, T, D*H), or [h_n of each direction of the top layer]
    (N, D*H)."""
    def run(module, x):
        out, state = module(x)
        if return_sequences:
            return out
        h_n = state[0] if isinstance(state, tuple) else state  # (layers * D, N, H)
        directions = 2 if module.bidirectional else 1
        return h_n[-directions:].permute(1, 0, 2).reshape(x.shape[0], -1)
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
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


# --------------------------------------------------------------------------- row blocks on threads
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_row_blocks_on_threads_gradcheck(kind, rows_on_threads):
    check_gradients(make(kind, 3, 2, True, True), np.random.default_rng(12).standard_normal((4, 3, 3)))


def test_row_blocks_on_threads_train_step_allocates_nothing(rows_on_threads):
    x = np.random.default_rng(13).standard_normal((48, 7, 8)).astype(np.float32)
    y = np.random.default_rng(14).integers(0, 4, 48)
    model = nn.Sequential(nn.Bidirectional(nn.GRU(8, 32, return_sequences=True)), nn.LSTM(64, 32),
                          nn.Dense(32, 4))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss())
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


def test_stacked_row_blocks_train_step_allocates_nothing(rows_on_threads):
    """Stacked passes of different input widths (each layer's W_ih^T packed apart) and every row block's
    own gradient sums, in the steady state."""
    x = np.random.default_rng(15).standard_normal((9, 5, 6)).astype(np.float32)
    y = np.random.default_rng(16).integers(0, 3, 9)
    model = nn.Sequential(nn.Bidirectional(nn.LSTM(6, 8, num_layers=2, return_sequences=True)),
                          nn.GRU(16, 8, num_layers=2), nn.Dense(8, 3))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss())
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


# --------------------------------------------------------------------------- stacked layers and dropout
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("row_blocks", ["one", "per row"])
def test_stacked_matches_torch_on_both_backends(kind, return_sequences, bidirectional, backend, row_blocks,
                                                request):
    if row_blocks == "per row":  # the NumPy backend runs each row's time loop on its own thread
        request.getfixturevalue("rows_on_threads")
    torch.manual_seed(3)
    module = TORCH_RNN[kind](4, 5, num_layers=3, batch_first=True, bidirectional=bidirectional)
    layer = make(kind, 4, 5, return_sequences, bidirectional, num_layers=3)
    layer.build((6, 4), dtype="float64")
    layer.to(backend)
    x = np.random.default_rng(10).standard_normal((3, 6, 4))
    compare_with_torch(layer, module, x, torch_forward=torch_forward(return_sequences), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_stacked_dropout_in_eval_mode_matches_torch(kind):
    torch.manual_seed(4)
    module = TORCH_RNN[kind](3, 4, num_layers=2, dropout=0.5, batch_first=True, bidirectional=True)
    x = np.random.default_rng(11).standard_normal((2, 5, 3))
    compare_with_torch(make(kind, 3, 4, True, True, num_layers=2, dropout=0.5), module, x, training=False,
                       torch_forward=torch_forward(True), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_gradcheck(kind, bidirectional):
    x = np.random.default_rng(12).standard_normal((2, 3, 3))
    check_gradients(make(kind, 3, 2, True, bidirectional, num_layers=2), x)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dropout_between_layers_gradcheck(kind):
    x = np.random.default_rng(13).standard_normal((3, 4, 3))
    check_gradients(make(kind, 3, 3, False, True, num_layers=3, dropout=0.4), x,
                    reseed=lambda: nn.manual_seed(5))


def test_dropout_acts_between_layers_only_while_training():
    x = np.random.default_rng(14).standard_normal((4, 5, 3))
    nn.manual_seed(0)
    dropped = make("LSTM", 3, 6, True, False, num_layers=2, dropout=0.5)
    dropped.build((5, 3), dtype="float64")
    plain = make("LSTM", 3, 6, True, False, num_layers=2)
    plain.build((5, 3), dtype="float64")
    plain.load_state_dict(dropped.state_dict())
    np.testing.assert_array_equal(dropped.forward(x, training=False), plain.forward(x, training=False))
    assert not np.allclose(dropped.forward(x, training=True), plain.forward(x, training=True))
    # torch's dropout: zero with probability p, scale the rest by 1 / (1 - p), on layer 0's outputs
    mask = dropped.workspace("mask_l1", (5, 4, 6), bool)  # (T, N, H), one byte per element
    assert mask.dtype == bool and 0.3 < np.mean(~mask) < 0.7
    np.testing.assert_array_equal(dropped.workspace("dropped_l1", (5, 4, 6)),
                                  dropped.workspace("seq_l0", (5, 4, 6)) * mask * 2.0)
    single = make("GRU", 3, 6, True, False, dropout=0.5)  # one layer: nothing to drop, as torch
    single.build((5, 3), dtype="float64")
    np.testing.assert_array_equal(single.forward(x, training=True), single.forward(x, training=False))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_stacked_dropout_torch_backend_matches_numpy(kind):
    x = np.random.default_rng(15).standard_normal((3, 5, 4))
    dy = np.random.default_rng(16).standard_normal((3, 5, 12))
    results = []
    for backend in ("numpy", "torch"):
        nn.manual_seed(0)
        layer = make(kind, 4, 6, True, True, num_layers=2, dropout=0.3)
        layer.build((5, 4), dtype="float64")
        layer.to(backend)
        nn.manual_seed(1)  # the same masks: both backends draw them from neuronet's generator
        y = layer.ops.to_numpy(layer.forward(layer.ops.asarray(x)))
        layer.zero_grad()
        dx = layer.ops.to_numpy(layer.backward(layer.ops.asarray(dy)))
        results.append((np.array(y), np.array(dx), np.array(layer.ops.to_numpy(layer.flat_grads))))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12, rtol=1e-7)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_torch_state_dict_loads_unchanged(bidirectional):
    torch.manual_seed(5)
    lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=bidirectional)
    layer = make("LSTM", 3, 4, True, bidirectional, num_layers=2)
    layer.build((5, 3))
    assert list(dict(layer.named_parameters())) == list(lstm.state_dict())
    layer.load_state_dict(lstm.state_dict())
    x = np.random.default_rng(17).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        want = lstm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(layer(x), want, atol=1e-5)


def test_stacked_bidirectional_saves_and_loads(tmp_path):
    model = nn.Sequential(nn.Bidirectional(nn.GRU(3, 4, num_layers=2, dropout=0.25)), nn.Dense(8, 2))
    model.build((5, 3))
    model.save(tmp_path / "m.nnet")
    loaded = nn.load(tmp_path / "m.nnet")
    assert repr(loaded[0]) == "Bidirectional(GRU(3, 4, num_layers=2, dropout=0.25))"
    x = np.random.default_rng(18).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_stacked_bidirectional_train_step_allocates_nothing():
    x = np.random.default_rng(19).standard_normal((16, 7, 8)).astype(np.float32)
    y = np.random.default_rng(20).integers(0, 4, 16)
    model = nn.Sequential(nn.Bidirectional(nn.LSTM(8, 16, num_layers=2, dropout=0.2)), nn.Dense(32, 4))
    model.compile(optimizer=nn.Adam(1e-3), loss=nn.CrossEntropyLoss())
    assert_step_allocates_nothing(lambda: model.train_step(x, y))


@pytest.mark.parametrize("kwargs,match", [({"num_layers": 0}, "num_layers must be >= 1, got 0"),
                                          ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0")])
def test_bad_num_layers_or_dropout(kwargs, match):
    for kind in ("LSTM", "GRU"):
        with pytest.raises(nn.errors.ConfigError, match=f"{kind}: {match}"):
            getattr(nn, kind)(3, 4, **kwargs)


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_torch_backend_float32_runs_the_fused_lstm_and_matches_torch(return_sequences, bidirectional):
    """float32 on the CPU: each layer-direction is one oneDNN LSTM call (ops.lstm_sequence)."""
    torch.manual_seed(3)
    module = torch.nn.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)
    layer = make("LSTM", 4, 5, return_sequences, bidirectional, num_layers=2)
    layer.build((6, 4), dtype="float32")
    layer.to("torch")
    x = np.random.default_rng(11).standard_normal((3, 6, 4)).astype(np.float32)
    compare_with_torch(layer, module, x, torch_forward=torch_forward(return_sequences), atol=2e-5, rtol=1e-4,
                       dtype="float32")
    assert len(layer._fused) == 2 * (2 if bidirectional else 1)
    # The zeros it passes oneDNN (initial states, dL/dc_T, dL/d(outputs) of the last layer) stay zeros.
    zeros = layer.ops.__dict__["_zero_cache"]
    assert {name for name, _, _ in zeros} >= {"lstm.h0", "lstm.c0", "lstm.dc"} | \
        (set() if return_sequences else {"lstm.dout"})
    assert all(not z.any() for z in zeros.values())


def test_fused_lstm_steps_aside_for_mixed_precision():
    layer = nn.LSTM(4, 5)
    layer.build((6, 4))
    layer.to("torch")
    with layer.ops.compute_in("bfloat16"):
        layer.forward(layer.ops.asarray(np.ones((2, 6, 4), np.float32)))
    assert layer._fused == {}  # the cells ran, their products in bfloat16
