"""Keep Numba's disk cache honest when a kernel's helper file changes.

Numba keys a cached kernel by the kernel's own source file only. Our kernels inline the float32
functions of ``fastmath.py``; after an edit to that file alone they would keep running the old code
from the cache. ``drop_stale_caches`` stores a digest of the helper files beside the cache and
deletes the cached kernels of the package when the digest changes, so they recompile.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numba

from .._atomic import atomic_path

STAMP = "neuronet-kernel-helpers.sha256"


def cache_folders(source_dir: Path) -> list[Path]:
    """Where Numba caches the kernels of ``source_dir``: its ``__pycache__``, and the mirror of its path
    under ``NUMBA_CACHE_DIR`` when that is set."""
    folders = [source_dir / "__pycache__"]
    if numba.config.CACHE_DIR:
        folders.append(Path(numba.config.CACHE_DIR, *source_dir.resolve().parts[1:]))
    return folders


def drop_stale_caches(source_dir: Path, helpers: list[str]) -> None:
    """Delete the cached kernels (``*.nbi``, ``*.nbc``) of ``source_dir`` if ``helpers`` changed since
    the last call. A folder that cannot be written (a read-only install) is left alone."""
    digest = hashlib.sha256(b"".join((source_dir / name).read_bytes() for name in helpers)).hexdigest()
    for folder in cache_folders(source_dir):
        stamp = folder / STAMP
        with contextlib.suppress(OSError):
            if stamp.read_text() == digest:
                continue
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            for cached in [*folder.glob("*.nbi"), *folder.glob("*.nbc")]:
                cached.unlink(missing_ok=True)
            with atomic_path(stamp, "neuronet kernel cache") as tmp:
                tmp.write_text(digest)
