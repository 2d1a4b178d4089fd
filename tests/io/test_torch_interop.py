"""PyTorch interop: weights go both ways between a neuronet model and its PyTorch counterpart."""

import numpy as np
import pytest

import neuronet as nn

torch = pytest.importorskip("torch")
tnn = torch.nn

RNG = np.random.default_rng(0)


def layer(name, *args, **kwargs):
    if not hasattr(nn, name):
        pytest.skip(f"nn.{name} is not implemented yet")
    return getattr(nn, name)(*args, **kwargs)


class LearnedPositions(tnn.Module):
    """GPT-2's position table: y = x + weight[:T] (neuronet: PositionalEncoding(learned=True))."""

    def __init__(self, max_len, dim):
        super().__init__()
        self.weight = tnn.Parameter(torch.randn(max_len, dim) * 0.02)

    def forward(self, x):
        return x + self.weight[: x.shape[1]]


class CausalBlock(tnn.TransformerEncoderLayer):
    """Pre-norm GELU encoder layer with a causal mask (neuronet: TransformerBlock(causal=True))."""

    def forward(self, x):
        mask = tnn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return super().forward(x, src_mask=mask, is_causal=True)


def block(dim, heads, ff):
    return CausalBlock(dim, heads, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)


def gpt_pair(vocab=30, dim=16, heads=4, ff=32, t=7):
    model = nn.Sequential(layer("Embedding", vocab, dim), layer("PositionalEncoding", 12, dim, learned=True),
                          layer("TransformerBlock", dim, heads, ff, causal=True),
                          layer("TransformerBlock", dim, heads, ff, causal=True), layer("LayerNorm", dim),
                          nn.Dense(dim, vocab))
    model.build((t,))
    module = tnn.Sequential(tnn.Embedding(vocab, dim), LearnedPositions(12, dim), block(dim, heads, ff),
                            block(dim, heads, ff), tnn.LayerNorm(dim), tnn.Linear(dim, vocab))
    return model, module, RNG.integers(0, vocab, (3, t))


def cnn_pair():
    model = nn.Sequential(layer("Conv2D", 1, 4, 3, padding=1), nn.ReLU(), layer("BatchNorm2D", 4),
                          layer("MaxPool2D", 2), nn.Flatten(), nn.Dense(64, 3))
    model.build((1, 8, 8))
    module = tnn.Sequential(tnn.Conv2d(1, 4, 3, padding=1), tnn.ReLU(), tnn.BatchNorm2d(4), tnn.MaxPool2d(2),
                            tnn.Flatten(), tnn.Linear(64, 3))
    module.train()
    with torch.no_grad():  # move the running statistics away from 0 and 1
        for _ in range(3):
            module(torch.randn(6, 1, 8, 8) * 2 + 1)
    return model, module, RNG.standard_normal((4, 1, 8, 8)).astype(np.float32)


def mlp_pair():
    model = nn.Sequential(nn.Dense(5, 8), nn.Tanh(), nn.Dense(8, 2))
    model.build((5,))
    module = tnn.Sequential(tnn.Linear(5, 8), tnn.Tanh(), tnn.Linear(8, 2))
    return model, module, RNG.standard_normal((4, 5)).astype(np.float32)


PAIRS = {"mlp": mlp_pair, "cnn": cnn_pair, "gpt": gpt_pair}


def torch_out(module, x):
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("which", PAIRS)
def test_torch_weights_load_into_neuronet(which):
    model, module, x = PAIRS[which]()
    model.load_state_dict(module.state_dict())
    np.testing.assert_allclose(model.predict(x), torch_out(module, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", PAIRS)
def test_neuronet_weights_load_into_torch(which):
    model, module, x = PAIRS[which]()
    if which == "cnn":  # non-trivial statistics on the neuronet side too
        model.compile(optimizer=nn.SGD(0.01), loss=nn.CrossEntropyLoss())
        model.train_step(x, RNG.integers(0, 3, len(x)))
    state = nn.to_torch_state_dict(model)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    module.load_state_dict(state)  # strict: same names and shapes as PyTorch's own
    np.testing.assert_allclose(torch_out(module, x), model.predict(x), atol=1e-4, rtol=0)


def test_state_dict_tensors_are_copies_in_model_dtype():
    model, _, _ = mlp_pair()
    state = nn.to_torch_state_dict(model)
    assert state["0.weight"].dtype == torch.float32
    state["0.weight"].zero_()
    assert np.abs(model.state_dict()["0.weight"]).sum() > 0
    model64 = nn.Sequential(nn.Dense(2, 2), dtype="float64")
    model64.build((2,))
    assert nn.to_torch_state_dict(model64)["0.bias"].dtype == torch.float64
