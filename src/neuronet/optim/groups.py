"""Parameter groups and frozen layers, as one table of spans over the flat parameter buffer.

A group is ``{"params": pattern or [patterns], "lr": ..., "weight_decay": ...}``; the patterns are
``fnmatch`` patterns over ``state_dict`` names ("*.bias", "0.*"), each parameter joins the FIRST group
that matches it, and the rest keep the optimizer's own settings (group 0). Parameters of layers with
``trainable = False`` join no group: their spans are left out, so the update never touches them.
Neighbouring parameters of the same group merge into one span; with no groups and nothing frozen the
table is a single span over the whole buffer, the same single fused pass as without this machinery.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

from ..backend import Spans
from ..errors import ConfigError

GROUP_KEYS = ("params", "lr", "weight_decay")


def check_groups(owner: str, groups) -> list[dict]:
    """Validate ``groups`` (None or a list of dicts) and return them as a list of plain dicts.

    Raises ConfigError naming the optimizer and the group for a missing/invalid ``params``, an unknown
    key or a learning rate / weight decay that is not a finite number >= 0.
    """
    if groups is None:
        return []
    if not isinstance(groups, (list, tuple)):
        raise ConfigError(f"{owner}: groups must be a list of dicts, got {type(groups).__name__}")
    out = []
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise ConfigError(f"{owner}: groups[{i}] must be a dict, got {type(group).__name__}")
        unknown = sorted(set(group) - set(GROUP_KEYS))
        if unknown:
            raise ConfigError(f"{owner}: groups[{i}] has unknown key(s) {unknown}; a group takes "
                              f"{', '.join(GROUP_KEYS)}")
        patterns = group.get("params")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not (isinstance(patterns, (list, tuple)) and patterns
                and all(isinstance(p, str) for p in patterns)):
            raise ConfigError(f"{owner}: groups[{i}]['params'] must be a name pattern or a non-empty list of "
                              f"them (e.g. '*.bias'), got {group.get('params')!r}")
        for key in ("lr", "weight_decay"):
            value = group.get(key)
            if key in group and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                     and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{owner}: groups[{i}] ({patterns}) {key} must be a finite number >= 0, "
                                  f"got {value!r}")
        out.append({"params": group["params"] if isinstance(group["params"], str) else list(patterns),
                    **{k: float(group[k]) for k in ("lr", "weight_decay") if k in group}})
    return out


def patterns_of(group: dict) -> list[str]:
    return [group["params"]] if isinstance(group["params"], str) else group["params"]


def model_spans(owner: str, model, groups: list[dict]) -> Spans:
    """The spans of ``model``'s flat buffer that ``groups`` and the layers' ``trainable`` flags give.

    Group k + 1 is ``groups[k]``; group 0 is everything no pattern matches. A pattern that matches no
    parameter name of the model raises ConfigError naming it.
    """
    specs = [(name, layer.trainable, math.prod(shape)) for name, layer, _, shape, _ in model.param_specs()]
    names = [name for name, _, _ in specs]
    missing = [p for group in groups for p in patterns_of(group) if not any(fnmatchcase(n, p) for n in names)]
    if missing:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ConfigError(f"{owner}: group pattern(s) {missing} match no parameter of the model "
                          f"(its parameters: {shown})")
    items, offset = [], 0
    for name, trainable, n in specs:
        k = next((i + 1 for i, group in enumerate(groups)
                  if any(fnmatchcase(name, p) for p in patterns_of(group))), 0)
        if trainable and n:
            if items and items[-1][2] == k and items[-1][1] == offset:
                items[-1][1] = offset + n
            else:
                items.append([offset, offset + n, k])
        offset += n
    return Spans.of(items)


def whole(size: int) -> Spans:
    """One span of group 0 over a buffer of ``size`` elements (no model bound)."""
    return Spans.of([(0, size, 0)] if size else [])
