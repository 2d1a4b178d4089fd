"""Fixtures of the backend tests."""

import pytest


@pytest.fixture
def spy_host_kernels(monkeypatch):
    """``spy(names)``: the list, in call order, of the names of the NumPy-backend kernels the torch backend
    calls on CPU tensors' memory (``torch_ops._CPU``) among ``names``."""
    torch_ops = pytest.importorskip("neuronet.backend.torch_ops")

    def spy(names) -> list:
        calls = []
        for name in names:
            original = getattr(torch_ops._CPU, name)
            monkeypatch.setattr(torch_ops._CPU, name,
                                lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
        return calls
    return spy
