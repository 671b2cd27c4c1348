"""Grids of photo thumbnails with a caption each, for the plots a person reads in MLflow."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from image_classifier.hints import Figure


def thumbnail_grid(
    load: Callable[[str], np.ndarray],
    cells: Sequence[tuple[str, str]],
    columns: int,
    title: str,
    empty: str,
) -> Figure:
    """One thumbnail per ``(path, caption)``, row by row; ``empty`` is written when there are none."""
    import matplotlib.pyplot as plt

    rows = max(-(-len(cells) // columns), 1)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for cell, (path, caption) in zip(axes.flat, cells, strict=False):
        cell.imshow(load(path))
        cell.set_title(caption, fontsize="small")
    for cell in axes.flat:
        cell.axis("off")
    if not cells:
        axes.flat[0].text(0.5, 0.5, empty, ha="center", va="center")
    figure.suptitle(title)
    # Half an inch on top for the title, which tight_layout alone lets the first captions overlap.
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / figure.get_figheight()))
    return figure
