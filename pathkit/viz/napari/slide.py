"""A whole slide in napari: lazy multiscale image, tile boxes and an optional per-tile value overlay.

The slide is never loaded whole: each pyramid level is wrapped in :class:`OpenSlideLevel`, an array-like whose
``__getitem__`` turns a (y, x, channel) slice into one ``read_region`` of that level, so napari only reads the
pixels of the current view at the current zoom (the idea of napari-lazy-openslide, without zarr).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathkit.wsi.features import read_features

# Lazy imports: openslide (OpenSlide, a system library); napari (napari, Qt and a display). They load inside
# the functions that need them, not when this module is imported.


class OpenSlideLevel:
    """One pyramid level as a read-only (height, width, 3) uint8 array-like, read on demand."""

    def __init__(self, path: str | Path, level: int):
        import openslide

        self.path = str(path)
        self.level = int(level)
        self._handle = openslide.OpenSlide(self.path)
        w, h = self._handle.level_dimensions[self.level]
        self.downsample = float(self._handle.level_downsamples[self.level])
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.size = h * w * 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        y0, y1, ystep = _bounds(ys, self.shape[0])
        x0, x1, xstep = _bounds(xs, self.shape[1])
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        if h == 0 or w == 0:
            out = np.zeros((h, w, 3), np.uint8)
        else:
            # read_region takes the location in level-0 pixels and the size in this level's pixels
            region = self._handle.read_region((int(x0 * self.downsample), int(y0 * self.downsample)), self.level,
                                              (w, h))
            out = np.asarray(region)[..., :3]
        out = out[::ystep, ::xstep]
        if isinstance(ys, (int, np.integer)):
            out = out[0]
            return out[0][cs] if isinstance(xs, (int, np.integer)) else out[:, cs]
        if isinstance(xs, (int, np.integer)):
            return out[:, 0][:, cs]
        return out[:, :, cs]

    def __array__(self, dtype=None, copy=None):  # napari may ask for a small level whole
        arr = self[:, :, :]
        return arr.astype(dtype) if dtype is not None else arr


def _bounds(key, n: int) -> tuple[int, int, int]:
    if isinstance(key, (int, np.integer)):
        k = int(key) + (n if key < 0 else 0)
        return k, k + 1, 1
    start, stop, step = key.indices(n)
    return start, stop, max(1, step)


def slide_pyramid(path: str | Path, min_side: int = 256) -> list[OpenSlideLevel]:
    """The slide's levels as lazy arrays (levels smaller than ``min_side`` dropped, level 0 always kept)."""
    import openslide

    with openslide.OpenSlide(str(path)) as handle:
        count = handle.level_count
        dims = handle.level_dimensions
    return [OpenSlideLevel(path, k) for k in range(count) if k == 0 or min(dims[k]) >= min_side]


def show_slide(path: str | Path, coords: np.ndarray | None = None, values: np.ndarray | None = None,
               viewer=None, footprint: int | None = None, colormap: str = "viridis", show: bool = True,
               value_name: str = "value"):
    """Open ``path`` in napari with optional tile boxes (``coords``, level-0 top-left) and per-tile ``values``.

    Args:
        path: any openslide slide.
        coords: (N, 2) level-0 (x, y); ``footprint`` (level-0 px) defaults to 256, or is read from a features
            file when ``coords`` is a path to one.
        values: (N,) per-tile numbers (attention, a feature PC, a class score) shown as coloured tiles.
        viewer: an existing ``napari.Viewer`` (else one is created with ``show``).
    Returns the viewer.
    """
    import napari

    if isinstance(coords, (str, Path)):
        coords, _, attrs = read_features(coords)
        footprint = footprint or attrs["patch_size_level0"]  # None for files without coords (.pt, SlideChat CSV)
    footprint = int(footprint or 256)
    if viewer is None:
        viewer = napari.Viewer(show=show)
    pyramid = slide_pyramid(path)
    viewer.add_image(pyramid, multiscale=True, rgb=True, name=Path(path).name)
    if coords is not None and len(coords):
        coords = np.asarray(coords, dtype=np.float64)
        rects = [np.array([[y, x], [y + footprint, x + footprint]]) for x, y in coords]
        if values is not None:
            values = np.asarray(values, dtype=np.float64)
            if len(values) != len(coords):
                raise ValueError(f"values has {len(values)} entries for {len(coords)} tiles")
            viewer.add_shapes(rects, shape_type="rectangle", features={value_name: values}, face_color=value_name,
                              face_colormap=colormap, edge_width=0, opacity=0.6, name=value_name)
        viewer.add_shapes(rects, shape_type="rectangle", face_color="transparent", edge_color="yellow",
                          edge_width=max(1.0, footprint / 64), name="tiles")
    viewer.reset_view()
    return viewer
