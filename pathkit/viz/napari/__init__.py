"""napari viewers for grounded regions: slides with tile overlays, video frames with cursor heatmaps.

napari (the ``viewer`` extra) is imported only when a viewer is opened.
"""

from __future__ import annotations

from pathkit.viz.napari.narrative import show_narrative as _show_narrative
from pathkit.viz.napari.slide import show_slide as _show_slide


def show_slide(*args, **kwargs):
    """Open a slide as a lazy multiscale layer with tile shapes and optional per-tile values (see slide.py)."""
    return _show_slide(*args, **kwargs)


def show_narrative(*args, **kwargs):
    """Open a localized-narrative row: frame, heatmap, labelled boxes and cursor trace (see narrative.py)."""
    return _show_narrative(*args, **kwargs)


__all__ = ["show_slide", "show_narrative"]
