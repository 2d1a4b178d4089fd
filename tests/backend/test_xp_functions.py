"""The array namespace is closed: outside the backends, code calls ``ops.xp.<name>`` only for the names in
``XP_FUNCTIONS`` (one list, in backend/ops.py), and every backend's namespace has each of them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import neuronet
from neuronet.backend.ops import XP_FUNCTIONS

SRC = Path(neuronet.__file__).parent
USE = re.compile(r"\bxp\.([A-Za-z_]\w*)")


def uses() -> dict[str, list[str]]:
    """xp.<name> -> the 'file:line' places that use it, in every module outside backend/."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "backend":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for name in USE.findall(line):
                found.setdefault(name, []).append(f"{path.relative_to(SRC)}:{number}")
    return found


def test_layers_and_losses_use_only_the_listed_xp_functions():
    found = uses()
    assert {"multiply", "sum"} <= found.keys()  # the scan sees the layers (it cannot pass by reading nothing)
    unlisted = {name: places for name, places in found.items() if name not in XP_FUNCTIONS}
    assert not unlisted, f"xp functions outside XP_FUNCTIONS (add an Ops method, or extend it): {unlisted}"


@pytest.mark.parametrize("namespace", ["numpy", "torch"])
def test_every_listed_function_exists(namespace):
    xp = np if namespace == "numpy" else pytest.importorskip("torch")
    assert [name for name in sorted(XP_FUNCTIONS) if not callable(getattr(xp, name, None))] == []
