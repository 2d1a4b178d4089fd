"""The float32 elementary functions behind the NumPy backend's kernels, against float64 references."""

import math

import numba
import numpy as np
import pytest

from neuronet.backend import fastmath as fm

REFERENCES = {
    "exp": (np.exp, -87.0, 88.0, "rel", 2e-7),
    "erf": (np.vectorize(math.erf), -6.0, 6.0, "abs", 5e-7),
    "tanh": (np.tanh, -12.0, 12.0, "abs", 4e-7),
    "sigmoid": (lambda v: 1.0 / (1.0 + np.exp(-v)), -40.0, 40.0, "abs", 4e-7),
}


@numba.njit
def _apply(name_code, x, out):
    for i in range(x.size):
        v = x[i]
        if name_code == 0:
            out[i] = fm.exp(v)
        elif name_code == 1:
            out[i] = fm.erf(v)
        elif name_code == 2:
            out[i] = fm.tanh(v)
        else:
            out[i] = fm.sigmoid(v)


def _run(name, x):
    out = np.empty_like(x)
    _apply(list(REFERENCES).index(name), x, out)
    return out


@pytest.mark.parametrize("name", list(REFERENCES))
def test_float32_version_is_accurate_to_float32_rounding(name):
    reference, lo, hi, kind, tol = REFERENCES[name]
    x = np.concatenate([np.random.default_rng(0).uniform(lo, hi, 200_000),
                        np.linspace(-1, 1, 2001), [0.0, -0.0]]).astype(np.float32)
    got = _run(name, x).astype(np.float64)
    want = reference(x.astype(np.float64))
    err = np.abs(got - want) / (np.abs(want) if kind == "rel" else 1.0)
    assert err.max() < tol, f"{name}: max {kind} error {err.max():.2e} at x = {x[err.argmax()]}"


@pytest.mark.parametrize("name", list(REFERENCES))
def test_float64_uses_the_exact_function(name):
    reference, lo, hi, _, _ = REFERENCES[name]
    x = np.random.default_rng(1).uniform(max(lo, -30), min(hi, 30), 1000)
    np.testing.assert_allclose(_run(name, x), reference(x), rtol=1e-15, atol=1e-300)


def test_tanh_and_sigmoid_saturate_exactly_where_float32_does():
    """1 - tanh(x)^2 must be exactly 0 where float32 tanh is +-1 (GELU-tanh and LSTM derivatives)."""
    x = np.array([9.5, 12.0, 50.0, -9.5, -50.0], np.float32)
    np.testing.assert_array_equal(_run("tanh", x), np.sign(x))
    np.testing.assert_array_equal(_run("sigmoid", np.array([40.0], np.float32)), [1.0])


def test_prefer_512_bit_vectors_marks_only_the_calling_kernel():
    @numba.njit
    def wide(x):
        fm.prefer_512_bit_vectors()
        return x + 1.0

    @numba.njit
    def default(x):
        return x + 1.0

    attribute = '"prefer-vector-width"="512"'
    wide(1.0), default(1.0)
    assert attribute in next(iter(wide.inspect_llvm().values()))
    assert attribute not in next(iter(default.inspect_llvm().values()))


def test_the_activation_kernels_prefer_512_bit_vectors():
    from neuronet.backend import kernels

    fresh = numba.njit(kernels.activation_forward.py_func)  # cached code cannot be inspected
    x = np.ones(8, np.float32)
    fresh(7, 0.0, x, np.empty_like(x))
    assert '"prefer-vector-width"="512"' in next(iter(fresh.inspect_llvm().values()))
