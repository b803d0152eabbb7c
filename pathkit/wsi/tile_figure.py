"""The tiling job's picture of a slide: thumbnail, tissue-mask outline and the kept tile grid
(``<out>/<stem>.png`` beside each coords file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathkit.io import atomic_path

# Lazy imports: matplotlib (matplotlib, ~0.2-0.6 s). They load inside the functions that need them, not when
# this module is imported.


def draw_tile_grid(ax, thumbnail: np.ndarray, scale: float, coords: np.ndarray, footprint: float,
                   mask: np.ndarray | None = None, values: np.ndarray | None = None, title: str | None = None,
                   cmap: str = "viridis") -> None:
    """Draw on a matplotlib axis: the thumbnail, the mask outline (cyan), kept tiles (boxes or coloured)."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    ax.imshow(thumbnail)
    if mask is not None and mask.any():
        ys = np.linspace(0, thumbnail.shape[0], mask.shape[0], endpoint=False)
        xs = np.linspace(0, thumbnail.shape[1], mask.shape[1], endpoint=False)
        ax.contour(xs, ys, mask.astype(float), levels=[0.5], colors=["cyan"], linewidths=1.2)
    side = footprint / scale
    rects = [Rectangle((x / scale, y / scale), side, side) for x, y in np.asarray(coords)]
    if rects:
        if values is None:
            ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor="yellow", linewidth=0.4))
        else:
            pc = PatchCollection(rects, cmap=cmap, alpha=0.55, edgecolor="none")
            pc.set_array(np.asarray(values, dtype=float))
            ax.add_collection(pc)
    ax.set_xlim(0, thumbnail.shape[1])
    ax.set_ylim(thumbnail.shape[0], 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def tile_grid_figure(thumbnail: np.ndarray, scale: float, coords: np.ndarray, footprint: float,
                     mask: np.ndarray | None = None, title: str | None = None,
                     out_path: str | Path | None = None, dpi: int = 110):
    """A one-panel figure of the kept tile grid over the thumbnail; saved as PNG when ``out_path`` is given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = thumbnail.shape[:2]
    fig = Figure(figsize=(6, 6 * h / max(w, 1) + 0.4))
    FigureCanvasAgg(fig)  # no pyplot: safe in worker processes and under any GUI backend
    ax = fig.add_subplot(1, 1, 1)
    draw_tile_grid(ax, thumbnail, scale, coords, footprint, mask=mask,
                   title=title or f"{len(coords)} tiles")
    fig.tight_layout()
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    return fig
