"""A bounds check of a GGUF file's header before the ``gguf`` package parses it.

GGUFReader trusts the counts it reads: a metadata array whose 8-byte count was flipped to 2^40 made
gguf 0.19 build a Python object per claimed element, growing without bound (24 GB and the OOM killer in
the loader fuzz test). This walk reads the same layout (GGUF v2/v3: magic, version, tensor count,
metadata count, key/value pairs, tensor infos) from a memory map and checks every length and count
against the bytes left, so that the parser only ever sees counts the file can hold; it allocates nothing
in proportion to them and reads each header byte at most once.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from ..errors import NnetFormatError

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType
_STRING, _ARRAY = 8, 9
MAX_DIMS = 8  # GGML_MAX_DIMS is 4; a tensor info claiming more is malformed
_MAX_NESTING = 16


class _Header:
    def __init__(self, buf, order: str, where: str):
        self.buf, self.order, self.where, self.at = buf, order, where, 0

    def fail(self, what: str) -> NnetFormatError:
        return NnetFormatError(f"{self.where} is not a readable GGUF file ({what} at byte {self.at})")

    def take(self, size: int) -> int:
        """The offset of the next ``size`` bytes, which must lie in the file."""
        if size < 0 or size > len(self.buf) - self.at:
            raise self.fail(f"{size} bytes claimed, {len(self.buf) - self.at} left")
        start, self.at = self.at, self.at + size
        return start

    def number(self, code: str) -> int:
        return struct.unpack_from(self.order + code, self.buf, self.take(struct.calcsize(code)))[0]

    def string(self) -> None:
        self.take(self.number("Q"))

    def value(self, kind: int, depth: int = 0) -> None:
        if kind in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[kind])
        elif kind == _STRING:
            self.string()
        elif kind == _ARRAY and depth < _MAX_NESTING:
            element, count = self.number("I"), self.number("Q")
            if element in _SCALAR_SIZES:
                self.take(count * _SCALAR_SIZES[element])
                return
            if count > (len(self.buf) - self.at) // 8:  # every string or array element takes >= 8 bytes
                raise self.fail(f"an array of {count} elements claimed")
            for _ in range(count):
                self.value(element, depth + 1)
        else:
            raise self.fail(f"value type {kind}")


def check_gguf_layout(path: str | Path, where: str) -> None:
    """Raise NnetFormatError unless every count and length in the header of the GGUF file at ``path``
    fits in the file."""
    with open(path, "rb") as f:
        if f.seek(0, 2) < 24:
            raise NnetFormatError(f"{where} is not a readable GGUF file (shorter than its header)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise NnetFormatError(f"{where} is not a GGUF file (no GGUF magic)")
            # gguf's own test: a version whose low 16 bits read zero was written big-endian
            order = ">" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF == 0 else "<"
            header = _Header(buf, order, where)
            header.take(8)
            tensors, fields = header.number("Q"), header.number("Q")
            for _ in range(fields):
                header.string()
                header.value(header.number("I"))
            if tensors > (len(buf) - header.at) // 24:  # name length, dims count, type, offset
                raise header.fail(f"{tensors} tensors claimed")
            for _ in range(tensors):
                header.string()
                dims = header.number("I")
                if dims > MAX_DIMS:
                    raise header.fail(f"a tensor of {dims} dimensions")
                header.take(8 * dims + 12)
