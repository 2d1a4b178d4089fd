"""Keep Numba's disk cache honest when a kernel's helper file changes.

Numba keys a cached kernel by the kernel's own source file only. Our kernels inline the float32
functions of ``fastmath.py``, the GEMM of ``packed_gemm.py``, the row passes of ``vector_rows.py`` and the
pair shuffles of ``pair_rows.py`` (their IR helpers in ``llvm_vectors.py``), and ``attention_kernels.py``
calls the softmax of ``kernels.py`` (``fastmath.KERNEL_HELPERS``); after an edit to such a file alone they
would keep running the old code from the cache.
``drop_stale_caches`` stores a digest of the helper files beside the cache and deletes the cached
kernels of the package when the digest changes, so they recompile.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from pathlib import Path

from .._atomic import atomic_path

STAMP = "neuronet-kernel-helpers.sha256"


def cache_folders(source_dir: Path) -> list[Path]:
    """Where Numba caches the kernels of ``source_dir``, asked of Numba's own cache locators (in its
    order: ``NUMBA_CACHE_DIR``, the sources' ``__pycache__``, a user-wide folder when that is read-only)."""
    from numba.core.caching import CacheImpl

    probe = next(source_dir.glob("*.py"), None)
    for locator in getattr(CacheImpl, "_locator_classes", []) if probe else []:
        found = locator.from_function(cache_folders, str(probe))
        if found is not None:
            return [Path(found.get_cache_path())]
    return [source_dir / "__pycache__"]


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


def announce_if_cold(source_dir: Path) -> bool:
    """Print one line to stderr when Numba has no cached kernel of ``source_dir`` (a first run, or the
    cache was just dropped): the kernels are then compiled on first use, which takes seconds. Returns
    whether it printed."""
    if any(next(folder.glob("*.nbi"), None) is not None for folder in cache_folders(source_dir)):
        return False
    print("neuronet: compiling kernels on first use (first run only, about 10 s; cached afterwards)",
          file=sys.stderr, flush=True)
    return True
