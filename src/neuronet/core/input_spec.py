"""Declarative input shapes: the pattern a layer states as ``input_spec``, held against every input.

A spec is a tuple for the shape without the batch axis: an int is an exact size, a string names an axis of
any size >= 1 ("T", "H"), ``...`` stands for any number of axes (at most one). ``(..., 8)`` reads
"(N, ..., 8)"; ``("T", 8)`` reads "(N, T, 8) with T >= 1".
"""

from __future__ import annotations

from ..errors import ShapeError


def matches(spec: tuple, shape: tuple) -> bool:
    """Whether ``shape`` (no batch axis) fits ``spec``."""
    if ... in spec:
        cut = spec.index(...)
        head, tail = spec[:cut], spec[cut + 1:]
        return len(shape) >= len(head) + len(tail) and matches(head, shape[:len(head)]) and \
            matches(tail, shape[len(shape) - len(tail):])
    return len(shape) == len(spec) and all(
        size >= 1 if isinstance(want, str) else size == want for want, size in zip(spec, shape, strict=True))


def describe(spec: tuple) -> str:
    """The spec as the error messages print it: "(N, T, 8) with T >= 1"."""
    dims = ", ".join("..." if d is ... else str(d) for d in ("N", *spec))
    named = [d for d in spec if isinstance(d, str)]
    return f"({dims})" + (f" with {', '.join(f'{d} >= 1' for d in named)}" if named else "")


def check(owner, spec: tuple, shape: tuple, got: str) -> None:
    """Raise a ShapeError naming ``owner`` when ``shape`` does not fit ``spec``; ``got`` prints the input."""
    if not matches(spec, shape):
        raise ShapeError(f"{owner!r}: expected input of shape {describe(spec)}, got {got}")
