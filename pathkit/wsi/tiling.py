"""Tile grid at a true magnification: ``size`` pixels at ``mpp`` microns per pixel, in level-0 coordinates.

CLAM can only choose a pyramid level; the same ``--patch_level 0`` is 0.25 mpp on one scanner and 0.5 mpp on
another, so tiles of "the same" size show different amounts of tissue. Prov-GigaPath (and WSI-LLaVA on top of
it) was trained on 256 px tiles at 0.5 mpp, so pathkit plans by microns:

    footprint (level-0 px) = size * mpp / slide_mpp            e.g. 256 * 0.5 / 0.25 = 512
    level = the coarsest level whose downsample <= footprint / size (never upsample)
    read  = footprint / downsample(level) px at that level, resized to ``size`` when they differ

Grid: top-left corners every ``stride = footprint - overlap`` level-0 pixels from (0, 0) while the corner lies
inside the slide (edge tiles overhang and are padded with white); a tile is kept when the tissue mask covers at
least ``min_tissue`` of its footprint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathkit.io import PathkitError
from pathkit.wsi.slide import Slide
from pathkit.wsi.tissue import TissueMask, box_fraction, tissue_mask

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.


@dataclass(frozen=True)
class TilePlan:
    """How to read one tile of ``size`` px at ``mpp`` from a slide."""

    mpp: float  # of the output tiles
    size: int  # output tile edge (pixels at mpp)
    slide_mpp: float  # level-0 mpp
    level: int  # pyramid level read
    downsample: float  # of that level
    read_size: int  # pixels read at that level (resized to size when different)
    patch_size_level0: int  # footprint in level-0 pixels
    stride_level0: int  # grid step in level-0 pixels

    @property
    def needs_resize(self) -> bool:
        return self.read_size != self.size


def plan_tiles(slide: Slide, mpp: float = 0.5, size: int = 256, overlap: int = 0) -> TilePlan:
    """Choose level and resampling for ``size`` px tiles at ``mpp`` (``overlap`` in output pixels)."""
    if slide.mpp is None:
        raise PathkitError(f"{slide.path}: no microns per pixel; pass --slide-mpp")
    if not 0 <= overlap < size:
        raise PathkitError(f"{slide.path}: overlap={overlap}: must be in [0, size={size})")
    factor = mpp / slide.mpp  # level-0 px per output px
    footprint = int(round(size * factor))
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if ds <= factor * 1.01:  # the 1% slack absorbs rounded level sizes (e.g. 8.0064)
            level = i
    downsample = float(slide.level_downsamples[level])
    read_size = int(round(footprint / downsample))
    if abs(read_size - size) <= max(1, size // 100):  # a level that matches to within a pixel: no resize
        read_size = size
    stride = int(round((size - overlap) * factor))
    return TilePlan(mpp=float(mpp), size=int(size), slide_mpp=float(slide.mpp), level=level,
                    downsample=downsample, read_size=read_size, patch_size_level0=footprint,
                    stride_level0=max(1, stride))


def plan_for_footprint(slide: Slide, patch_size_level0: int, size: int, stride_level0: int | None = None
                       ) -> TilePlan:
    """The plan that reads tiles another tool chose: ``size`` px tiles covering ``patch_size_level0`` level-0 px.

    CLAM and TRIDENT coords files state the level-0 footprint and the tile edge, not an mpp; the level read is
    the deepest one no coarser than the tiles, as :func:`plan_tiles` picks it.
    """
    if slide.mpp is None:
        raise PathkitError(f"{slide.path}: no microns per pixel; pass --slide-mpp")
    factor = patch_size_level0 / size  # level-0 px per output px
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if ds <= factor * 1.01:
            level = i
    downsample = float(slide.level_downsamples[level])
    read_size = int(round(patch_size_level0 / downsample))
    if abs(read_size - size) <= max(1, size // 100):
        read_size = size
    return TilePlan(mpp=float(slide.mpp * factor), size=int(size), slide_mpp=float(slide.mpp), level=level,
                    downsample=downsample, read_size=read_size, patch_size_level0=int(patch_size_level0),
                    stride_level0=int(stride_level0 or patch_size_level0))


def grid_coords(width: int, height: int, stride: int) -> np.ndarray:
    """All grid corners (N, 2) int64 (x, y), row-major, corners inside the slide."""
    xs = np.arange(0, width, stride, dtype=np.int64)
    ys = np.arange(0, height, stride, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


@dataclass
class TileGrid:
    """The kept tiles of one slide and everything needed to read them again."""

    coords: np.ndarray  # (N, 2) int64 level-0 top-left x, y
    tissue: np.ndarray  # (N,) float32 tissue fraction of each kept tile
    plan: TilePlan
    mask: TissueMask
    thumbnail: np.ndarray  # RGB thumbnail the mask was computed on
    all_coords: np.ndarray  # (M, 2) the full grid before the tissue filter


def tile_grid(slide: Slide, mpp: float = 0.5, size: int = 256, min_tissue: float = 0.1, overlap: int = 0,
              thumbnail_size: int = 1024) -> TileGrid:
    """Tissue mask on a thumbnail, grid at ``mpp``, keep tiles with tissue fraction >= ``min_tissue``."""
    plan = plan_tiles(slide, mpp, size, overlap)
    thumb, scale = slide.thumbnail(thumbnail_size)
    mask = tissue_mask(thumb, scale)
    width, height = slide.dimensions
    coords = grid_coords(width, height, plan.stride_level0)
    fraction = box_fraction(mask.mask, mask.scale, coords[:, 0], coords[:, 1], plan.patch_size_level0)
    keep = fraction >= max(min_tissue, 1e-6)  # never keep a tile with no tissue at all
    return TileGrid(coords=coords[keep], tissue=fraction[keep].astype(np.float32), plan=plan, mask=mask,
                    thumbnail=thumb, all_coords=coords)


def read_tile(slide: Slide, x: int, y: int, plan: TilePlan) -> np.ndarray:
    """One tile (size, size, 3) uint8 at the plan's mpp, top-left (x, y) in level-0 pixels."""
    import cv2

    tile = slide.read_region(x, y, plan.level, plan.read_size, plan.read_size)
    if plan.needs_resize:
        interp = cv2.INTER_AREA if plan.read_size > plan.size else cv2.INTER_CUBIC
        tile = cv2.resize(tile, (plan.size, plan.size), interpolation=interp)
    return tile
