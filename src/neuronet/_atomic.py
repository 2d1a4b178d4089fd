"""Atomic, durable file output: write beside the target, fsync, rename over it, fsync the folder.

A writer killed at any point leaves either the old file or the new one under the target's name,
never a mix; a temp file it leaves behind (``.<name>.<random>.tmp``) is removed by the next
successful write of the same target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, who: str) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success make it durable and rename it to ``path``.

    On success: the temp file is fsynced, renamed over ``path``, the folder is fsynced, and stale temp
    files of ``path`` left by writers that were killed are deleted. On error the temp file is deleted.
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
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    remove_stale_temps(target, keep=Path(tmp))


def remove_stale_temps(target: str | os.PathLike, keep: Path | None = None) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files of ``target`` (left by killed writers); returns what was removed.

    Called after a successful write, when no earlier write of the same target can still be running
    in this process; concurrent writers of one target from several processes are not supported.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    removed = []
    for stale in folder.glob(f".{glob_escape(target.name)}.*.tmp"):
        if stale != keep and stale.is_file():
            with contextlib.suppress(OSError):
                stale.unlink()
                removed.append(stale)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters bracketed, so it matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
