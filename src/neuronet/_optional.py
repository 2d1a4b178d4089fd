"""Optional dependencies: import one, or say which extra of neuronet installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, who: str) -> ModuleType:
    """``import module``, or an ImportError naming ``who`` needs it and ``pip install 'neuronet[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{who} needs {module.split('.')[0]}, which is not installed: "
                          f"pip install 'neuronet[{extra}]'") from e
