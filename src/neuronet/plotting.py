"""Pictures of a run, as PNG files written atomically (matplotlib with its Agg backend: no display).

``plot_history`` draws the loss and metric curves of ``fit``'s history (``neuronet train --plot``);
``save_images`` lays images out in rows, one row per array, as torchvision's ``save_image`` does a grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from ._optional import require


def _pyplot(who: str):
    """matplotlib.pyplot on the Agg backend, or an ImportError naming ``pip install 'neuronet[plot]'``."""
    require("matplotlib", "plot", who).use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path, dpi: int) -> Path:
    with atomic_path(Path(path), "plot") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_history(history: dict, path: str | Path, title: str = "") -> Path:
    """Loss and metric curves per epoch (train solid, validation dashed), one panel per name, as a PNG.

    Args:
        history (dict): ``fit(...).history``: name -> one value per epoch; ``val_<name>`` joins ``<name>``.
        path (str | Path): the PNG to write.
        title (str, optional): the figure's title.
    """
    plt = _pyplot("plotting the training history")
    names = [k for k in history if not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label=f"train {name}")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], "--", label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(plt, fig, path, dpi=100)


def save_images(path: str | Path, rows: Sequence[np.ndarray], labels: Sequence[str] | None = None, *,
                image_shape: tuple[int, int] = (28, 28), value_range: tuple[float, float] = (0.0, 1.0),
                tile_inches: float = 0.9, dpi: int = 100) -> Path:
    """Grayscale images in rows as a PNG: row r shows the images of ``rows[r]``, labelled ``labels[r]``.

    Args:
        path (str | Path): the PNG to write.
        rows (sequence of arrays): each (n, H * W) or (n, ..., H, W), the same n in every row.
        labels (sequence of str, optional): one per row, written left of it.
        image_shape (tuple, optional): (H, W) of one image. Default: (28, 28).
        value_range (tuple, optional): the values drawn black and white. Default: (0, 1).
        tile_inches (float, optional): the side of one image in the figure. Default: 0.9.
        dpi (int, optional): dots per inch of the PNG. Default: 100.
    """
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) == 0:
        raise ValueError(f"save_images: rows must be non-empty arrays of one length, got lengths "
                         f"{[len(r) for r in rows]}")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"save_images: {len(labels)} labels for {len(rows)} rows")
    plt = _pyplot("saving images")
    n = len(rows[0])
    fig, axes = plt.subplots(len(rows), n, figsize=(n * tile_inches, len(rows) * tile_inches), squeeze=False)
    low, high = value_range
    for r, images in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.asarray(images[c]).reshape(image_shape), cmap="gray", vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.axis("on" if labels is not None else "off")
        if labels is not None:
            axes[r, 0].set_ylabel(labels[r], fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path, dpi)
