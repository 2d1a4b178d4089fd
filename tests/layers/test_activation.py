import numpy as np
import pytest
import torch

import neuronet as nn
from neuronet.testing import check_gradients, compare_with_torch

# (neuronet layer, the PyTorch module it must equal)
CASES = {
    "relu": (lambda: nn.ReLU(), lambda: torch.nn.ReLU()),
    "sigmoid": (lambda: nn.Sigmoid(), lambda: torch.nn.Sigmoid()),
    "tanh": (lambda: nn.Tanh(), lambda: torch.nn.Tanh()),
    "leaky_relu": (lambda: nn.LeakyReLU(), lambda: torch.nn.LeakyReLU()),
    "leaky_relu_0.2": (lambda: nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2)),
    "elu": (lambda: nn.ELU(), lambda: torch.nn.ELU()),
    "elu_0.5": (lambda: nn.ELU(alpha=0.5), lambda: torch.nn.ELU(alpha=0.5)),
    "selu": (lambda: nn.SELU(), lambda: torch.nn.SELU()),
    "gelu": (lambda: nn.GELU(), lambda: torch.nn.GELU()),
    "gelu_tanh": (lambda: nn.Activation("gelu_tanh"), lambda: torch.nn.GELU(approximate="tanh")),
    "silu": (lambda: nn.SiLU(), lambda: torch.nn.SiLU()),
    "softmax": (lambda: nn.Softmax(), lambda: torch.nn.Softmax(dim=-1)),
    "log_softmax": (lambda: nn.LogSoftmax(), lambda: torch.nn.LogSoftmax(dim=-1)),
    "linear": (lambda: nn.Activation("linear"), lambda: torch.nn.Identity()),
}


@pytest.mark.parametrize("case", CASES)
def test_activation_matches_torch(case):
    ours, theirs = CASES[case]
    x = np.random.default_rng(0).standard_normal((4, 3, 5)) * 2
    compare_with_torch(ours(), theirs(), x)


@pytest.mark.parametrize("case", CASES)
def test_activation_float32_matches_torch(case):
    ours, theirs = CASES[case]
    x = np.random.default_rng(1).standard_normal((6, 7)).astype(np.float32) * 3
    compare_with_torch(ours(), theirs(), x, dtype="float32", atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c != "linear"])
def test_activation_gradcheck(case):
    x = np.random.default_rng(2).standard_normal((3, 4))
    x[np.abs(x) < 0.05] = 0.3  # central differences are meaningless across the kink at 0
    check_gradients(CASES[case][0](), x)


@pytest.mark.parametrize("case", ["relu", "leaky_relu", "leaky_relu_0.2", "elu", "elu_0.5", "selu", "gelu",
                                  "silu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_derivative_at_exactly_zero_is_torchs(case, dtype):
    """ReLU'(0) = 0, LeakyReLU'(0) = alpha, ELU/SELU at 0 as torch's autograd (alpha, scale * alpha)."""
    ours, theirs = CASES[case]
    x = np.array([[0.0, -0.0, 0.0]], dtype=dtype)
    dy = np.array([[1.0, 2.0, -3.0]], dtype=dtype)
    out = compare_with_torch(ours(), theirs(), x, dtype=dtype, dy=dy, atol=0, rtol=1e-6)
    assert np.all(np.isfinite(out["dx"]))


def test_known_derivatives_at_zero():
    x = np.zeros((1, 1))
    for layer, want in [(nn.ReLU(), 0.0), (nn.LeakyReLU(0.3), 0.3), (nn.ELU(0.7), 0.7),
                        (nn.SELU(), 1.0507009873554805 * 1.6732632423543772)]:
        layer.build((1,), dtype="float64")
        layer.forward(x)
        assert layer.backward(np.ones((1, 1)))[0, 0] == pytest.approx(want, rel=1e-12), layer


def test_dense_derivative_at_zero_preactivation_matches_torch():
    """The fused Dense + activation path takes the same convention at z = 0 as the standalone layer."""
    pairs = [("relu", torch.nn.ReLU()), ("leaky_relu", torch.nn.LeakyReLU()), ("elu", torch.nn.ELU())]
    for act, mod in pairs:
        module = torch.nn.Sequential(torch.nn.Linear(3, 2), mod)
        with torch.no_grad():
            module[0].weight.zero_()
            module[0].bias.zero_()
        compare_with_torch(nn.Dense(3, 2, activation=act), module, np.ones((4, 3)),
                           name_map={"0.weight": "weight", "0.bias": "bias"})


def test_nan_propagates_like_torch():
    x = np.array([[np.nan, -1.0, 2.0]], np.float32)
    for name in ["relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu", "silu"]:
        y = nn.Activation(name)(x)
        assert np.isnan(y[0, 0]) and np.all(np.isfinite(y[0, 1:])), name


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*relu"):
        nn.Activation("swish")
    with pytest.raises(ValueError, match=r"Dense\(2, 3\).*'foo'"):
        nn.Dense(2, 3, activation="foo")


def test_config_round_trip():
    for layer in [nn.LeakyReLU(0.2), nn.ELU(0.5), nn.ReLU(), nn.Activation("gelu")]:
        again = type(layer)(**layer.get_config())
        assert again.get_config() == layer.get_config() and repr(again) == repr(layer)
