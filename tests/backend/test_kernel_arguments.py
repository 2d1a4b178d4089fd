"""No jitted kernel takes exactly 20 arguments: Numba 0.68 on CPython 3.11 keeps ~200 bytes per call of such
a function (19 or 21: nothing), which a steady-state training step must not do (the functional ResNet's
allocation test found it in the convolution backward; a trivial kernel of 20 arguments keeps 199 bytes per
call over 2000 calls). This scans every kernel of the backend."""

import importlib
import inspect
import pkgutil

import numba

import neuronet.backend as backend


def _kernels():
    for info in pkgutil.iter_modules(backend.__path__):
        module = importlib.import_module(f"neuronet.backend.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher) and value.__module__ == module.__name__:
                yield f"{info.name}.{name}", value


def test_no_kernel_takes_twenty_arguments():
    counts = {name: len(inspect.signature(k.py_func).parameters) for name, k in _kernels()}
    assert counts, "no kernels found"
    assert [name for name, n in counts.items() if n == 20] == []

