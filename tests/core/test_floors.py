"""The package's floors: a module imports only from its own package and from floors below it.

Checked on the source (relative imports, also those inside functions), so a lazy import cannot hide
an upward dependency or a cycle between two packages of one floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "neuronet"
FLOORS = [
    {"errors", "_atomic", "_optional"},
    {"plotting"},
    {"backend"},
    {"core"},
    {"layers", "losses", "metrics", "optim", "data"},
    {"callbacks"},
    {"io", "distributed"},
    {"model"},
    {"testing"},
    {"cli"},
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}


def _imports(path: Path):
    """(line, top-level package imported) for every relative import of ``path``."""
    package = list(path.relative_to(SRC).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            parts = base + (node.module.split(".") if node.module else [])
            targets = [parts[0]] if parts else [alias.name for alias in node.names]
            for target in targets:
                yield node.lineno, target


def test_no_import_from_a_higher_floor_or_across_one_floor():
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":  # the top-level namespace gathers everything
            continue
        assert own in FLOOR, f"{rel}: add its package to FLOORS"
        for line, target in _imports(path):
            if target in FLOOR and target != own and FLOOR[target] >= FLOOR[own]:
                wrong.append(f"{rel}:{line} imports {target} (floor {FLOOR[target]}) from floor {FLOOR[own]}")
    assert not wrong, "\n".join(wrong)
