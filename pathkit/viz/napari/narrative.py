"""napari view of one localized narrative: the frame, its dwell heat map, labelled boxes, the pointer trace."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from pathkit.video.narratives import read_narratives

# Lazy imports: napari (napari, Qt and a display). They load inside the functions that need them, not when
# this module is imported.


def _load_row(row: dict | str | Path, root: Path | None) -> tuple[dict, Path]:
    if isinstance(row, (str, Path)):  # a narratives.jsonl: take its first row

        return read_narratives(row)[0], Path(row)
    return row, root or Path(".")


def show_narrative(row: dict, viewer=None, root: str | Path | None = None, heatmap_opacity: float = 0.5,
                   show: bool = True):
    """Open a narratives row in napari and return the viewer.

    Layers: ``frame`` (RGB), ``heatmap`` (translucent ``inferno`` dwell map, black = 0 is transparent via
    additive blending), ``groundings`` (rectangles labelled with their text), ``cursor`` (the trace as
    points coloured by time, plus a track). Relative ``frame``/``heatmap`` paths resolve against ``root``
    (the narratives folder; rows from :func:`pathkit.video.narratives.read_narratives` are absolute).
    """
    import napari

    row, base = _load_row(row, Path(root) if root else None)
    frame = np.asarray(Image.open(base / row["frame"]).convert("RGB"))
    heat = np.load(base / row["heatmap"])
    if viewer is None:
        viewer = napari.Viewer(title=f"{Path(row['video']).name} chunk {row['chunk']}", show=show)
    viewer.add_image(frame, name="frame", rgb=True)
    viewer.add_image(heat, name="heatmap", colormap="inferno", opacity=heatmap_opacity, blending="additive",
                     contrast_limits=(0.0, max(1e-6, float(heat.max()))))
    groundings = row.get("groundings") or []
    if groundings:
        rects = [np.array([[g["box"][1], g["box"][0]], [g["box"][3], g["box"][2]]], float) for g in groundings]
        texts = ["\n".join(textwrap.wrap(g["text"], 40)[:2]) for g in groundings]
        viewer.add_shapes(rects, shape_type="rectangle", name="groundings", edge_color="cyan", face_color="transparent",
                          edge_width=2, properties={"text": texts},
                          text={"string": "{text}", "size": 8, "color": "cyan", "anchor": "upper_left"})
    cursor = np.asarray(row.get("cursor") or [], float).reshape(-1, 3)
    if len(cursor):
        t = cursor[:, 0]
        viewer.add_points(cursor[:, [2, 1]], name="cursor", size=4, face_color="white", border_color="black",
                          properties={"t": t}, opacity=0.9)
        tracks = np.column_stack([np.zeros(len(cursor)), np.arange(len(cursor)), cursor[:, 2], cursor[:, 1]])
        viewer.add_tracks(tracks, name="cursor trace", tail_length=len(cursor), colormap="viridis")
    viewer.reset_view()
    return viewer
