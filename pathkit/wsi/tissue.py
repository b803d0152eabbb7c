"""Tissue mask on a slide thumbnail: where is there tissue, and how much of each tile is tissue.

The classic recipe (CLAM, Slideflow, TIAToolbox variants; see shared/reference/ecosystem.md A.0): stained
tissue is coloured, glass is grey-white, so the HSV *saturation* separates them. Median blur removes JPEG and
dust speckle; Otsu picks the threshold between the two modes, with a floor so a slide that is nearly all glass
(where Otsu splits noise) is not turned into tissue; a morphological close bridges pale gaps (fat cells,
lumina); small objects (dust) and small holes are removed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Lazy imports: cv2 (OpenCV, ~0.3 s); skimage (scikit-image's submodules load SciPy). They load inside the
# functions that need them, not when this module is imported.


class TissueMask(NamedTuple):
    mask: np.ndarray  # (h, w) bool
    scale: float  # level-0 pixels per mask pixel
    threshold: float  # saturation threshold used (0-255)


def tissue_mask(thumbnail: np.ndarray, scale: float = 1.0, *, blur: int = 7, floor: float = 20.0,
                close_fraction: float = 0.01, min_object_fraction: float = 0.0005,
                max_hole_fraction: float = 0.01) -> TissueMask:
    """Tissue mask of an RGB uint8 thumbnail; returns ``(mask, scale, threshold)``.

    Args:
        thumbnail: (h, w, 3) uint8 RGB.
        scale: level-0 pixels per thumbnail pixel (passed through, so callers keep mask and scale together).
        blur: median blur kernel (odd, pixels of the thumbnail).
        floor: lowest allowed saturation threshold (Otsu on an almost empty slide would split noise).
        close_fraction: morphological close kernel, as a fraction of the longest side.
        min_object_fraction / max_hole_fraction: remove objects smaller / fill holes smaller than this fraction
            of the thumbnail area.
    """
    import cv2
    from skimage.morphology import remove_small_holes, remove_small_objects

    if thumbnail.ndim != 3 or thumbnail.shape[2] < 3:
        raise ValueError(f"tissue_mask: expected an (h, w, 3) RGB thumbnail, got shape {thumbnail.shape}")
    rgb = np.ascontiguousarray(thumbnail[..., :3], dtype=np.uint8)
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    blur = max(1, int(blur) | 1)
    if blur > 1:
        saturation = cv2.medianBlur(saturation, blur)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(float(otsu), float(floor))
    mask = saturation > threshold
    k = max(3, int(round(close_fraction * max(mask.shape))) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    area = mask.size
    mask = remove_small_objects(mask, max_size=max(1, int(min_object_fraction * area)))
    mask = remove_small_holes(mask, max_size=max(1, int(max_hole_fraction * area)))
    return TissueMask(mask, float(scale), threshold)


def box_fraction(mask: np.ndarray, scale: float, x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
    """Fraction of each level-0 box (x, y, size x size) covered by the mask (area-exact, boxes may overhang).

    Uses the bilinearly interpolated integral image, which is exact for a piecewise-constant mask.
    """
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)

    def at(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        px = np.clip(px, 0, w)
        py = np.clip(py, 0, h)
        x0 = np.minimum(np.floor(px).astype(np.int64), w - 1)
        y0 = np.minimum(np.floor(py).astype(np.int64), h - 1)
        fx, fy = px - x0, py - y0
        i00, i01 = integral[y0, x0], integral[y0, x0 + 1]
        i10, i11 = integral[y0 + 1, x0], integral[y0 + 1, x0 + 1]
        return (i00 * (1 - fx) * (1 - fy) + i01 * fx * (1 - fy) + i10 * (1 - fx) * fy + i11 * fx * fy)

    x0, y0 = np.asarray(x, np.float64) / scale, np.asarray(y, np.float64) / scale
    x1, y1 = x0 + size / scale, y0 + size / scale
    inside = at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)
    return inside / ((size / scale) ** 2)
