"""``check_layer``: the one way to test a layer, built-in or your own.

It rebuilds the layer from its ``get_config()`` for every check, so the layer you pass is a
description, never mutated. Each failed check raises an ``AssertionError`` that names the layer,
the check, the quantity and, for arrays, the worst element.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

from ..core import random as nnrandom
from ..core.layer import Layer
from ..errors import ShapeError
from ..io.nnet import load
from ..losses import MSELoss
from ..model import Sequential
from ..optim import SGD
from .alloc import MAX_GROWTH, MAX_PEAK, step_allocations
from .gradcheck import check_gradients

ALL_CHECKS = ("gradients", "accumulation", "zero_grad", "allocation", "backends", "save_load", "bad_input")


def check_layer(layer: Layer, input_shape: Sequence[int], *, batch: int = 3, integer_high: int | None = None,
                training: bool = True, checks: Sequence[str] = ALL_CHECKS,
                wrong_input: np.ndarray | None = None, atol: float = 1e-6, rtol: float = 1e-4,
                seed: int = 0) -> None:
    """Check ``layer``'s math, memory, backends and file round trip; raise AssertionError on a failure.

    Args:
        layer: the layer to check (rebuilt from ``type(layer)(**layer.get_config())`` for each check).
        input_shape: the input shape without the batch axis.
        batch: the batch size of the random inputs.
        integer_high: for layers that take integer inputs (``Embedding``): inputs are drawn from
            ``[0, integer_high)``, and only parameter gradients are checked.
        training: run forward in training mode (dropout draws are re-seeded before each forward).
        checks: a subset of ``ALL_CHECKS``:
            ``gradients`` float64 central differences of dL/dx and of every parameter;
            ``accumulation`` two backward passes give twice the gradients of one;
            ``zero_grad`` clears every gradient;
            ``allocation`` a steady-state ``train_step`` in a model grows < 64 KiB over 20 steps and
            no step rises > 256 KiB (tracemalloc);
            ``backends`` the NumPy and torch backends agree on output, dL/dx and gradients (skipped when
            torch is not installed);
            ``save_load`` a model holding the layer survives ``save``/``nn.load`` with equal outputs;
            ``bad_input`` ``wrong_input`` raises a ``ShapeError`` naming the layer.
        wrong_input: an input (batch axis included) the layer must reject; default: the random input with
            its last axis one longer.
        atol: absolute tolerance of the float64 comparisons.
        rtol: relative tolerance of the float64 comparisons.
        seed: seeds the inputs, the upstream gradient and the layer's random draws.
    """
    unknown = sorted(set(checks) - set(ALL_CHECKS))
    if unknown:
        raise ValueError(f"check_layer: unknown checks {unknown}; known: {', '.join(ALL_CHECKS)}")
    input_shape = tuple(int(s) for s in input_shape)
    case = _Case(layer, input_shape, batch, integer_high, training, atol, rtol, seed)
    case.wrong = wrong_input
    for name in ALL_CHECKS:
        if name in checks:
            getattr(case, name)()


class _Case:
    """One layer description and the inputs every check draws from it."""

    def __init__(self, layer: Layer, input_shape: tuple, batch: int, integer_high: int | None,
                 training: bool, atol: float, rtol: float, seed: int):
        self.template, self.input_shape = layer, input_shape
        self.training, self.atol, self.rtol, self.seed = training, atol, rtol, seed
        self.integer = integer_high is not None
        rng = np.random.default_rng(seed)
        shape = (batch, *input_shape)
        self.x = rng.integers(0, integer_high, shape) if self.integer else rng.standard_normal(shape)

    # ----------------------------------------------------------------- helpers
    def fresh(self) -> Layer:
        return type(self.template)(**self.template.get_config())

    def fail(self, what: str, detail: str) -> AssertionError:
        return AssertionError(f"check_layer({self.template!r}), {what}: {detail}")

    def reseed(self) -> None:
        nnrandom.manual_seed(self.seed)

    def built64(self, ops: str = "numpy") -> Layer:
        nnrandom.manual_seed(self.seed)  # the same initial parameters for every build
        layer = self.fresh()
        layer.build(self.input_shape, dtype="float64")
        return layer.to(ops) if ops != "numpy" else layer

    def run(self, layer: Layer, dy: np.ndarray | None = None) -> tuple:
        """forward then backward(dy) on ``layer``'s backend: (y, dx, grads) as float64 NumPy arrays."""
        ops = layer.ops
        self.reseed()
        x = self.x if self.integer else self.x.astype(layer.dtype)
        y = layer.forward(ops.asarray(x), training=self.training)
        y = np.array(ops.to_numpy(y), dtype=np.float64)
        if dy is None:
            dy = np.random.default_rng(self.seed + 1).standard_normal(y.shape)
        dx = layer.backward(ops.asarray(dy.astype(layer.dtype)))
        dx = None if dx is None or self.integer else np.array(ops.to_numpy(dx), dtype=np.float64)
        grads = {k: np.array(ops.to_numpy(g), dtype=np.float64) for k, g in layer.grads.items()}
        return y, dx, grads, dy

    def assert_close(self, what: str, quantity: str, got, want, atol: float, rtol: float) -> None:
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            raise self.fail(what, f"{quantity} has shape {got.shape}, expected {want.shape}")
        err = np.abs(got - want) - (atol + rtol * np.abs(want))
        if err.size and (err.max() > 0 or not np.isfinite(got).all()):
            i = np.unravel_index(np.argmax(np.where(np.isfinite(err), err, np.inf)), err.shape)
            where = tuple(int(k) for k in i)
            raise self.fail(what, f"{quantity} differs at {where}: got {got[i]!r}, expected {want[i]!r} "
                                  f"(max abs diff {np.nanmax(np.abs(got - want)):.3g})")

    # ----------------------------------------------------------------- the checks
    def gradients(self) -> None:
        layer = self.built64()
        try:
            check_gradients(layer, self.x.copy(), training=self.training, seed=self.seed, atol=self.atol,
                            rtol=self.rtol, check_input=not self.integer, reseed=self.reseed)
        except AssertionError as e:
            raise self.fail("float64 numerical gradients", str(e)) from None

    def accumulation(self) -> None:
        layer = self.built64()
        layer.zero_grad()
        _, dx1, once, dy = self.run(layer)
        _, dx2, twice, _ = self.run(layer, dy)
        what = "accumulation over two backward passes"
        for name, g in once.items():
            self.assert_close(what, f"gradient of {name!r}", twice[name], 2 * g, 1e-12, 1e-9)
        if dx1 is not None:
            self.assert_close(what, "dL/dx (must not accumulate)", dx2, dx1, 1e-12, 1e-9)

    def zero_grad(self) -> None:
        layer = self.built64()
        self.run(layer)
        layer.zero_grad()
        for name, g in layer.grads.items():
            if np.any(np.asarray(g) != 0):
                raise self.fail("zero_grad", f"gradient of {name!r} is not zero afterwards")

    def allocation(self) -> None:
        model = self._model("float32")
        x = self.x if self.integer else self.x.astype(np.float32)
        target = np.zeros((len(x), *model.output_shape), np.float32)
        model.compile(optimizer=SGD(1e-3), loss=MSELoss())
        growth, peak = step_allocations(lambda: model.train_step(x, target))
        if growth >= MAX_GROWTH or peak >= MAX_PEAK:
            raise self.fail("allocation in the steady state",
                            f"train_step grew {growth} bytes over 20 steps and peaked at {peak} bytes in one "
                            f"step (limits {MAX_GROWTH} and {MAX_PEAK})")

    def backends(self) -> None:
        from ..backend import available

        if "torch" not in available():
            return
        ref = self.built64()
        other = self.built64("torch")
        other.load_state_dict(ref.state_dict())
        ref.zero_grad()
        other.zero_grad()
        y, dx, grads, dy = self.run(ref)
        y_t, dx_t, grads_t, _ = self.run(other, dy)
        what = "NumPy vs torch backend (float64)"
        self.assert_close(what, "output", y_t, y, 1e-9, 1e-7)
        if dx is not None:
            self.assert_close(what, "dL/dx", dx_t, dx, 1e-9, 1e-7)
        for name, g in grads.items():
            self.assert_close(what, f"gradient of {name!r}", grads_t[name], g, 1e-9, 1e-7)

    def save_load(self) -> None:
        model = self._model("float64")
        x = self.x if self.integer else self.x.astype(np.float64)
        self.reseed()
        before = np.array(model.forward(x, training=False))
        fd, path = tempfile.mkstemp(suffix=".nnet")
        os.close(fd)
        try:
            model.save(path)
            loaded = load(path)
        finally:
            os.unlink(path)
        self.reseed()
        after = np.array(loaded.forward(x, training=False))
        for key, value in model.state_dict().items():
            self.assert_close("save/load round trip", f"state {key!r}", loaded.state_dict()[key], value, 0, 0)
        self.assert_close("save/load round trip", "output", after, before, 0, 0)

    def bad_input(self) -> None:
        layer = self.built64()
        wrong = self.wrong
        if wrong is None:
            shape = list(self.x.shape)
            shape[-1] += 1
            wrong = np.zeros(shape, self.x.dtype if self.integer else np.float64)
        try:
            layer.check_input(wrong)
        except ShapeError as e:  # a composite may name the sub-layer that rejected the input
            names = {type(sub).__name__ for _, sub in layer.named_layers()}
            if not any(name in str(e) for name in names):
                raise self.fail("bad input", f"the ShapeError does not name the layer: {e}") from None
            return
        raise self.fail("bad input", f"an input of shape {tuple(wrong.shape)} and dtype {wrong.dtype} (built "
                                     f"for {self.input_shape}) raised no ShapeError")

    def _model(self, dtype: str) -> Sequential:
        nnrandom.manual_seed(self.seed)
        model = Sequential(self.fresh(), dtype=dtype)
        model.build(self.input_shape)
        return model
