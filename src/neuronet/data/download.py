"""Fetch missing dataset files: download when a network is reachable, else say what to put where."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from .._atomic import atomic_path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are absent and could not be downloaded."""


def ensure_files(root: str | os.PathLike, names: list[str], mirrors: list[str], *, dataset: str,
                 download: bool = True, timeout: float = 10.0) -> Path:
    """Return ``root`` once every file in ``names`` exists there, downloading the missing ones.

    Each missing file is tried at ``mirror + name`` for each mirror in order and written atomically.
    When ``download`` is false or every mirror fails (no network), raises ``DatasetNotFoundError``
    naming the dataset, the missing files and the folder they belong in.
    """
    root = Path(root).expanduser()
    missing = [n for n in names if not (root / n).exists()]
    errors: list[str] = []
    for name in list(missing) if download else []:
        for mirror in mirrors:
            try:
                _fetch(mirror + name, root / name, timeout)
                missing.remove(name)
                break
            except OSError as e:  # URLError, timeouts and HTTP errors are all OSErrors
                errors.append(f"{mirror}{name}: {e}")
    if missing:
        why = f"download failed ({'; '.join(errors[-2:])})" if download else "downloading is disabled"
        raise DatasetNotFoundError(
            f"{dataset}: missing {', '.join(missing)} in {root.resolve()} and {why}. "
            f"Put the files {', '.join(names)} (gzip-compressed or not) in {root.resolve()}, "
            f"or point the loader (or NEURONET_DATA) at a folder that has them.")
    return root


def _fetch(url: str, dest: Path, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as response, \
            atomic_path(dest, "download") as tmp, open(tmp, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)
