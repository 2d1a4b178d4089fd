"""The torch backend's two routes for the recurrent cells and the attention softmax agree.

On CPU float32/float64 tensors TorchOps runs the NumPy backend's Numba kernels on the tensors' memory;
elsewhere (CUDA, bfloat16, ...) it runs torch ops. Both must give the NumPy backend's numbers.
"""

import numpy as np
import pytest
import torch

from neuronet.backend import get_ops
from neuronet.backend import torch_ops as torch_ops_module

N, H = 3, 5


@pytest.fixture(params=["numba", "torch-ops"])
def route(request, monkeypatch):
    if request.param == "torch-ops":
        monkeypatch.setattr(torch_ops_module, "_NUMBA_DTYPES", ())
    return request.param


def _arrays(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _run(ops, method, arrays):
    """Call ops.<method> on copies of ``arrays`` on that backend; return every argument afterwards."""
    args = [ops.asarray(a.copy()) for a in arrays]
    getattr(ops, method)(*args)
    return [np.asarray(ops.to_numpy(a)) for a in args]


CELLS = {
    "lstm_cell": [(N, 4 * H), (N, 4 * H), (4 * H,), (N, H), (N, H), (N, H), (N, H)],
    "gru_cell": [(N, 3 * H), (N, 3 * H), (3 * H,), (3 * H,), (N, H), (N, H), (N, H)],
    "gru_cell_backward": [(N, 3 * H), (N, H), (N, H), (N, H), (N, 3 * H), (N, 3 * H), (N, H)],
}


@pytest.mark.parametrize("method", list(CELLS))
def test_cells_match_numpy_backend(method, route):
    arrays = _arrays(CELLS[method], 0)
    if method == "gru_cell_backward":  # gates are activations in (0, 1)
        arrays[0] = 1.0 / (1.0 + np.exp(-arrays[0]))
    expected = _run(get_ops("numpy"), method, arrays)
    got = _run(get_ops("torch"), method, arrays)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_lstm_cell_backward_matches_numpy_backend(route):
    gates = 1.0 / (1.0 + np.exp(-_arrays([(N, 4 * H)], 1)[0]))
    c_prev, tanh_c, dh, dc = _arrays([(N, H)] * 4, 2)
    tanh_c = np.tanh(tanh_c)
    arrays = [gates, c_prev, tanh_c, dh, dc, np.zeros((N, 4 * H))]
    expected = _run(get_ops("numpy"), "lstm_cell_backward", arrays)
    got = _run(get_ops("torch"), "lstm_cell_backward", arrays)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_softmax_and_backward_match_numpy_backend(causal, route):
    scores, dprobs = _arrays([(2, 3, 4, 4)] * 2, 3)
    numpy_ops, ops = get_ops("numpy"), get_ops("torch")
    want = numpy_ops.attention_softmax(scores.copy(), np.empty_like(scores), causal, 0.5)
    got = ops.attention_softmax(ops.asarray(scores), ops.asarray(scores), causal, 0.5)  # out is scores
    np.testing.assert_allclose(ops.to_numpy(got), want, rtol=1e-12, atol=1e-15)
    dwant = numpy_ops.attention_softmax_backward(dprobs.copy(), want, np.empty_like(want), 0.5)
    dgot = ops.attention_softmax_backward(ops.asarray(dprobs), got, torch.empty_like(got), 0.5)
    np.testing.assert_allclose(ops.to_numpy(dgot), dwant, rtol=1e-12, atol=1e-15)
    if causal and route == "torch-ops":  # the mask (an additive bias) is made once per size, not per call
        masks = dict(ops._causal_biases)
        ops.attention_softmax(ops.asarray(scores), ops.asarray(scores), True, 0.5)
        assert ops._causal_biases.keys() == masks.keys() and (4, "cpu", torch.float64) in masks
        assert all(ops._causal_biases[key] is bias for key, bias in masks.items())


def test_bfloat16_takes_the_torch_ops_route():
    ops = get_ops("torch")
    scores = torch.randn(2, 4, 4).to(torch.bfloat16)
    probs = ops.attention_softmax(scores, scores.clone(), True, 1.0)
    assert probs.dtype == torch.bfloat16
    torch.testing.assert_close(probs.float().sum(-1), torch.ones(2, 4), atol=1e-2, rtol=0)
    assert float(probs[0, 0, 1]) == 0.0


@pytest.mark.parametrize("threads, min_work", [(1, 0), (2, 0), (1, None)], ids=["one", "two", "one-small"])
def test_products_on_one_torch_thread_go_to_openblas_and_agree(threads, min_work, monkeypatch,
                                                                spy_host_kernels):
    """With torch on one thread the products run in NumPy's OpenBLAS on the tensors' memory (plain,
    transposed views, stacked heads; the weight gradient accumulated); with more, or below
    OPENBLAS_MIN_WORK multiply-adds (these are; None, on an Intel CPU: every product), in torch."""
    ops, rng = get_ops("torch"), np.random.default_rng(4)
    if min_work is not None:
        monkeypatch.setattr(torch_ops_module, "OPENBLAS_MIN_WORK", min_work)
    calls = spy_host_kernels(("matmul", "matmul_acc"))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        heads = rng.standard_normal((2, 5, 3, 4, 6)).astype(np.float32)  # (N, T, parts, H, hd) rows
        q, k = (np.swapaxes(heads[:, :, i], 1, 2) for i in (0, 1))
        a, b = rng.standard_normal((7, 9)).astype(np.float32), rng.standard_normal((7, 11)).astype(np.float32)
        scores = torch.empty(2, 4, 5, 5)
        ops.matmul(torch.from_numpy(heads)[:, :, 0].transpose(1, 2),
                   torch.from_numpy(heads)[:, :, 1].transpose(1, 2).transpose(-1, -2), out=scores)
        np.testing.assert_allclose(scores.numpy(), q @ np.swapaxes(k, -1, -2), rtol=1e-5, atol=1e-5)
        out = torch.empty(9, 11)
        ops.matmul(torch.from_numpy(a).T, torch.from_numpy(b), out=out)
        np.testing.assert_allclose(out.numpy(), a.T @ b, rtol=1e-5, atol=1e-5)
        acc = torch.ones(9, 11)
        ops.matmul_acc(torch.from_numpy(a).T, torch.from_numpy(b), acc, torch.empty(9, 11))
        np.testing.assert_allclose(acc.numpy(), 1 + a.T @ b, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)
    assert calls == (["matmul", "matmul", "matmul_acc"] if threads == 1 and min_work == 0 else [])


def _assert_backends_agree(make_layer, x, dy, threads: int) -> None:
    """One forward and backward of ``make_layer()`` on the NumPy and the torch backend (same seed), torch
    on ``threads`` threads: the same output, dL/dx and gradients."""
    import neuronet as nn

    results = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for backend in ("numpy", "torch"):
            nn.manual_seed(0)
            model = nn.Sequential(make_layer(nn)).to(backend)
            model.build(x.shape[1:])
            ops = model.ops
            y = ops.to_numpy(model.forward(ops.asarray(x)))
            model.zero_grad()
            dx = ops.to_numpy(model.backward(ops.asarray(dy)))
            results.append((np.array(y), np.array(dx), np.array(ops.to_numpy(model.flat_grads))))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recurrent_layers_on_one_torch_thread_run_the_numpy_loops(kind, spy_host_kernels):
    """With torch on one thread the torch backend runs an LSTM/GRU's time loops in the NumPy backend's
    kernels on the tensors' memory (W_hh packed), bidirectional and stacked: the NumPy backend's
    values and gradients."""
    steps = f"{kind.lower()}_steps"
    calls = spy_host_kernels((steps, f"{steps}_backward"))
    rng = np.random.default_rng(5)
    _assert_backends_agree(
        lambda nn: nn.Bidirectional(getattr(nn, kind)(3, 5, return_sequences=True, num_layers=2)),
        rng.standard_normal((4, 6, 3)).astype(np.float32), rng.standard_normal((4, 6, 10)).astype(np.float32),
        threads=1)
    assert calls.count(steps) == 4 and calls.count(f"{steps}_backward") == 4


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_attention_on_few_torch_threads_runs_the_fused_kernel(threads, spy_host_kernels):
    """With torch on at most FUSED_ATTENTION_THREADS threads a causal transformer block with attention
    dropout runs attention's core in the NumPy backend's fused kernel on the tensors' memory (with more,
    in torch's products): the NumPy backend's values and gradients either way."""
    calls = spy_host_kernels(("attention", "attention_backward"))
    rng = np.random.default_rng(6)
    _assert_backends_agree(lambda nn: nn.TransformerBlock(8, 2, 16, causal=True, dropout=0.1),
                           rng.standard_normal((3, 40, 8)).astype(np.float32),
                           rng.standard_normal((3, 40, 8)).astype(np.float32), threads)
    fused = threads <= torch_ops_module.FUSED_ATTENTION_THREADS
    assert calls == (["attention", "attention_backward"] if fused else [])
