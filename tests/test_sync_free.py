"""The sync-free loss path (used on accelerators) gives the same loss, gradients and steps as the default,
and compile(cuda_graph=True) refuses clearly where it cannot capture. Run here on the CPU by forcing
``sync_free``; ``benchmarks/gpu_check.py`` runs this file on CUDA, where it is the default."""

import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.errors import ConfigError

DEVICE = "cuda" if torch.cuda.is_available() else "torch"


def _model(sync_free, backend=DEVICE, ignore_index=-100, weight=None, smoothing=0.0):
    nn.manual_seed(0)
    model = nn.Sequential(nn.LSTM(8, 16), nn.Dense(16, 5))
    loss = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, label_smoothing=smoothing)
    loss.sync_free = sync_free
    model.compile(optimizer=nn.Adam(1e-2), loss=loss)
    model.build((7, 8))
    model.to(backend)
    return model


@pytest.mark.parametrize("options", [{}, {"ignore_index": 2}, {"weight": [1.0, 2.0, 0.5, 1.0, 3.0]},
                                     {"smoothing": 0.1, "weight": [1.0, 2.0, 0.5, 1.0, 3.0]}])
def test_sync_free_loss_trains_like_the_default(options):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 7, 8), dtype=np.float32), rng.integers(0, 5, 6)
    runs = []
    for sync_free in (False, True):
        model = _model(sync_free, **options)
        losses = [model.train_step(x, y) for _ in range(3)]
        assert all(isinstance(v, float) for v in losses)
        runs.append((losses, model.ops.to_numpy(model.flat_params).copy()))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-6)
    # (On the CPU the default computes on the NumPy host twin, the sync-free path in torch: Adam's
    # m / sqrt(v) magnifies their rounding where a gradient is near 0.)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-5, atol=1e-5)


def test_sync_free_loss_is_a_device_scalar_and_never_calls_item(monkeypatch):
    model = _model(True)
    x, y = (model.ops.asarray(a) for a in (np.ones((4, 7, 8), np.float32), np.zeros(4, np.int64)))
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    value = model.loss.forward(model.forward(x), y)
    assert isinstance(value, torch.Tensor) and value.ndim == 0 and not calls
    model.train_step(x, y)
    assert not calls  # the one read-back is float(loss), after the backward


def test_sync_free_non_finite_loss_is_refused_before_the_weights_move():
    model = _model(True, ignore_index=1)
    before = model.ops.to_numpy(model.flat_params).copy()
    with pytest.raises(FloatingPointError, match="nan|inf"):
        model.train_step(np.ones((2, 7, 8), np.float32), np.ones(2, np.int64))  # every target ignored: 0/0
    np.testing.assert_array_equal(model.ops.to_numpy(model.flat_params), before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal off CUDA")
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_cuda_graph_off_cuda_raises_a_clear_error(backend):
    model = _model(None, backend=backend)
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss(), cuda_graph=True)
    with pytest.raises(ConfigError, match="needs the torch backend on a CUDA device"):
        model.train_step(np.ones((2, 7, 8), np.float32), np.ones(2, np.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_matches_eager_steps():
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((6, 7, 8), dtype=np.float32), rng.integers(0, 5, 6)) for _ in range(6)]
    runs = []
    for graph in (False, True):
        model = _model(None)
        model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss(), cuda_graph=graph)
        losses = [model.train_step(x, y) for x, y in batches]
        runs.append((losses, model.ops.to_numpy(model.flat_params).copy()))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_refuses_dropout():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Dense(4, 8), nn.Dropout(0.1), nn.Dense(8, 2))
    model.compile(optimizer="adam", loss="cross_entropy", cuda_graph=True)
    model.build((4,))
    model.to("cuda")
    with pytest.raises(ConfigError, match="dropout"):
        model.train_step(np.ones((2, 4), np.float32), np.ones(2, np.int64))


@pytest.mark.parametrize("layer", [nn.Dropout(0.1), nn.TransformerBlock(8, 2, 16, dropout=0.1),
                                   nn.MoE(8, 16, 4, 2)])
def test_cuda_graph_refuses_host_random_and_data_dependent_layers(layer):
    from types import SimpleNamespace

    from neuronet.model.cuda_graph import _refuse_uncapturable

    model = nn.Sequential(nn.Dense(8, 8), layer)
    model.build((3, 8))
    cuda_ops = SimpleNamespace(name="torch", device="cuda")
    on_cuda = SimpleNamespace(ops=cuda_ops, named_layers=model.named_layers)
    with pytest.raises(ConfigError, match="dropout|data-dependent"):
        _refuse_uncapturable(on_cuda)
    plain = nn.Sequential(nn.Dense(8, 8), nn.TransformerBlock(8, 2, 16))
    plain.build((3, 8))
    _refuse_uncapturable(SimpleNamespace(ops=on_cuda.ops, named_layers=plain.named_layers))  # no error


def _blocks_model(backend, graph=False):
    nn.manual_seed(0)
    model = nn.Sequential(nn.TransformerBlock(8, 2, 16, causal=True),
                          nn.TransformerBlock(8, 2, 16, causal=True, rope=True), nn.Flatten(),
                          nn.Dense(7 * 8, 5))
    model.compile(optimizer=nn.Adam(1e-2), loss=nn.CrossEntropyLoss(), cuda_graph=graph)
    model.build((7, 8))
    model.to(backend)
    return model


def test_a_cuda_graph_holds_every_tensor_its_step_may_touch():
    """buffers_in_use: nested layers' workspaces, this thread's temporaries and the cached tables (rotary
    angles, the losses' row index), which a larger batch or sequence would replace."""
    from neuronet.model.cuda_graph import buffers_in_use

    model = _blocks_model("torch")
    model.loss.sync_free = True  # (its sums in torch, as on a GPU: the row index a tensor)
    rng = np.random.default_rng(2)
    model.train_step(rng.standard_normal((6, 7, 8), dtype=np.float32), rng.integers(0, 5, 6))
    held = {id(b) for b in buffers_in_use(model)}
    attention, linear2 = model.layers[1].children["self_attn"], model.layers[1].children["linear2"]
    expected = [*attention._workspace.values(), *linear2._workspace.values(), *attention._rope,
                model.loss._arange, *model.ops._temporaries.buffers.values()]
    assert len(expected) > 8 and all(id(b) in held for b in expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_steps_survive_a_predict_between_them():
    """A predict of a larger batch between replays gives the blocks' layers shared buffers (dropping their
    own) and grows the temporaries; the graph holds what it captured, so its steps still match eager ones."""
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((6, 7, 8), dtype=np.float32), rng.integers(0, 5, 6)) for _ in range(4)]
    wide = rng.standard_normal((64, 7, 8), dtype=np.float32)
    runs = []
    for graph in (False, True):
        model = _blocks_model("cuda", graph)
        losses = [model.train_step(x, y) for x, y in batches[:2]]
        predicted = model.predict(wide)
        losses += [model.train_step(x, y) for x, y in batches[2:]]
        runs.append((losses, predicted, model.ops.to_numpy(model.flat_params).copy()))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[1][2], runs[0][2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", [
    lambda: nn.CrossEntropyLoss(), lambda: nn.CrossEntropyLoss(ignore_index=2),
    lambda: nn.CrossEntropyLoss(weight=[1.0, 2.0, 0.5, 1.0, 3.0], ignore_index=0),
    lambda: nn.NLLLoss(weight=[1.0, 2.0, 0.5, 1.0, 3.0])], ids=["ce", "ce-ignore", "ce-weights", "nll"])
def test_fused_class_losses_train_like_the_default(loss, monkeypatch):
    """Off the CPU the class-target losses run PyTorch's nll_loss kernels (``ops.nll_loss``): forced here on
    CPU tensors, the same losses and steps as the default over (N, T) targets, with and without sample
    weights (whose per-sample losses then select the rows after the fused forward)."""
    import neuronet.backend.torch_ops as torch_ops

    rng = np.random.default_rng(2)
    x, y, w = rng.standard_normal((6, 7, 8), dtype=np.float32), rng.integers(0, 5, (6, 7)), rng.random(6)
    calls, real = [], torch_ops.TorchOps.nll_loss
    monkeypatch.setattr(torch_ops.TorchOps, "nll_loss", lambda self, *a: calls.append(1) or real(self, *a))
    runs = []
    for fused in (False, True):
        if fused:
            monkeypatch.setattr(torch_ops, "_on_cpu", lambda t: False)
        nn.manual_seed(0)
        model = nn.Sequential(nn.LSTM(8, 16, return_sequences=True), nn.Dense(16, 5),
                              *([nn.LogSoftmax()] if isinstance(loss(), nn.NLLLoss) else []))
        criterion = loss()
        criterion.sync_free = fused
        model.compile(optimizer=nn.Adam(1e-2), loss=criterion)
        model.build((7, 8))
        model.to("torch")
        losses = [model.train_step(x, y), model.train_step(x, y, sample_weight=w), model.train_step(x, y)]
        assert len(calls) == 3 * fused
        runs.append((losses, model.ops.to_numpy(model.flat_params).copy()))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-6)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-5, atol=1e-5)
