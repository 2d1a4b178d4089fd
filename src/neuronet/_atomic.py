"""Atomic file output: write beside the target, then rename over it, so a failed write leaves nothing."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, who: str) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it to ``path``, on error delete it.

    Raises an OSError naming ``who`` and the path when the folder does not exist or is not writable,
    before anything is written.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"{who}: cannot write {str(target)!r}: folder {str(folder)!r} does not exist")
    if target.is_dir():
        raise IsADirectoryError(f"{who}: cannot write {str(target)!r}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise PermissionError(f"{who}: cannot write {str(target)!r}: {err.strerror or err}") from err
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given the file
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
