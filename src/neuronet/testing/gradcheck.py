"""Central-difference gradient checks in float64 for any layer (inputs and every parameter)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.layer import Layer


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, perturbing ``x`` in place (and restoring it)."""
    grad = np.zeros(x.shape, dtype=np.float64)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return grad


def check_gradients(layer: Layer, x: np.ndarray, *, training: bool = True, seed: int = 0, eps: float = 1e-6,
                    atol: float = 1e-6, rtol: float = 1e-4, check_input: bool = True,
                    params: list[str] | None = None, reseed: Callable[[], None] | None = None) -> None:
    """Compare ``layer.backward`` with central differences of L = sum(forward(x) * dy) in float64.

    The layer is built in float64 from ``x.shape[1:]`` if it is not built yet. ``reseed`` is called
    before each forward (for layers that draw random numbers, e.g. dropout). Raises AssertionError
    naming the tensor and the worst element.
    """
    if not layer.built or layer.dtype != np.float64:
        layer.build(x.shape[1:], dtype="float64")
    floating = np.issubdtype(x.dtype, np.floating)
    x = x.astype(np.float64) if floating else x
    reseed = reseed or (lambda: None)
    reseed()
    y = np.array(layer.forward(x.copy(), training=training))
    dy = np.random.default_rng(seed).standard_normal(y.shape)

    def loss() -> float:
        reseed()
        return float(np.sum(np.asarray(layer.forward(x, training=training)) * dy))

    reseed()
    layer.forward(x, training=training)
    layer.zero_grad()
    dx = np.array(layer.backward(dy.copy()))
    analytic = {name: np.array(g) for name, g in layer.grads.items()}
    if check_input and floating:
        _assert_close("input", dx, numerical_gradient(loss, x, eps), atol, rtol)
    for name in params if params is not None else list(layer.params):
        _assert_close(name, analytic[name], numerical_gradient(loss, layer.params[name], eps), atol, rtol)


def _assert_close(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> None:
    err = np.abs(got - want) - (atol + rtol * np.abs(want))
    if err.size and err.max() > 0:
        i = np.unravel_index(np.argmax(err), err.shape)
        where = tuple(int(k) for k in i)
        raise AssertionError(f"gradient of {name!r} differs at {where}: analytic {float(got[i])!r}, "
                             f"numerical {float(want[i])!r} (max abs diff {np.abs(got - want).max():.3g})")
