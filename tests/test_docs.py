"""The documentation's code runs: every ```python block of the pages below, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXECUTED = ["writing-a-layer.md", "layers.md", "callbacks.md", "functional.md", "conv.md",
            "getting-started.md", "data.md", "reliability.md", "backends.md"]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("name", EXECUTED)
def test_page_code_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pages that save files write here
    blocks = python_blocks(DOCS / name)
    assert blocks, f"{name} has no python code"
    namespace: dict = {"__name__": f"docs_{name}"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{name}[block {i}]", "exec"), namespace)
        except Exception as e:  # name the block that broke
            raise AssertionError(f"docs/{name}, python block {i} failed: {type(e).__name__}: {e}") from e
