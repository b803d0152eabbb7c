"""How much the view changed between two analysis frames, with the pointer masked out, and the :class:`Chunk`
(a span where it did not change) that :mod:`pathkit.video.chunks` cuts from that signal and
:mod:`pathkit.video.chunk_refine` refines; whether a frame is blank."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.


@dataclass
class Chunk:
    start: float  # seconds
    end: float

    def to_json(self) -> dict[str, float]:
        return {"start": round(self.start, 3), "end": round(self.end, 3)}



def cursor_masked_difference(prev: np.ndarray, cur: np.ndarray, pixel_threshold: float = 12.0,
                             blob_fraction: float = 0.02, max_blob_extent: float = 0.2) -> float:
    """Mean absolute grey difference of two frames over pixels that changed by more than ``pixel_threshold``,
    after masking small, compact changed blobs (the pointer).

    A blob is the pointer's when it covers less than ``blob_fraction`` of the frame and its bounding box's
    longer side is at most ``max_blob_extent`` of the frame's width: a new line of text in a slide build is
    as small but long, and counts. Changes a few pixels apart (the letters of a line) are one blob.
    """
    import cv2

    diff = cv2.absdiff(prev, cur)
    # sub-threshold change (compression flicker at a new keyframe) is not change
    if diff.dtype == np.uint8:
        diff = cv2.threshold(diff, pixel_threshold, 0, cv2.THRESH_TOZERO)[1]  # one OpenCV pass
    else:
        diff = diff * (diff > pixel_threshold)
    n_changed = cv2.countNonZero(diff)
    if n_changed > 0.5 * diff.size:  # a cut or pan: masking moot
        return float(diff.sum(dtype=np.float64)) / diff.size
    if n_changed == 0:
        return 0.0
    changed = (diff > 0).view(np.uint8)
    if _pointer_sized(changed, n_changed, blob_fraction, max_blob_extent):
        return 0.0  # one small compact change (the usual case: the pointer moved a little)
    total = float(diff.sum(dtype=np.float64))
    n, labels, _, small = _pointer_blobs(changed, blob_fraction, max_blob_extent)
    if small is not None and small.any():
        per_label = np.bincount(labels, weights=diff.ravel()[changed.ravel().view(bool)], minlength=n)
        total -= float(per_label[1:][small].sum())
    return max(0.0, total) / diff.size


def _pointer_sized(changed: np.ndarray, n_changed: int, blob_fraction: float, max_blob_extent: float) -> bool:
    """Whether every blob of a 0/1 change map is pointer-sized, told without labelling them: together they are
    smaller than one may be, and all lie within a box as short as one's extent (the usual case: the pointer
    moved a little)."""
    import cv2

    if n_changed >= blob_fraction * changed.size:
        return False
    _, _, bw, bh = cv2.boundingRect(changed)
    return max(bw, bh) + 4 <= max_blob_extent * changed.shape[1]  # +4: blobs are grown by the 5 x 5 joining


def _pointer_blobs(changed: np.ndarray, blob_fraction: float, max_blob_extent: float):
    """Connected blobs of a 0/1 change map (changes a few pixels apart joined) and which are small and compact
    (the pointer's): ``(n_labels, labels, area, small)``: the blob of each changed pixel (raster order), and per
    blob 1..n-1 its changed pixels and whether it is small; ``area`` and ``small`` are None when there is no blob.
    """
    import cv2

    joined = cv2.dilate(changed, np.ones((5, 5), np.uint8))
    # the sequential algorithm: on frames this small, OpenCV's parallel labelling costs more than it saves
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(joined, 8, cv2.CV_32S, cv2.CCL_SPAGHETTI)
    labels = labels.ravel()[changed.ravel().view(bool)]  # only changed pixels count: fewer to bin
    if n <= 1:
        return n, labels, None, None
    area = np.bincount(labels, minlength=n)[1:]
    extent = np.maximum(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
    return n, labels, area, (area < blob_fraction * changed.size) & (extent <= max_blob_extent * changed.shape[1])


def spread_change(a: np.ndarray, b: np.ndarray, pixel_threshold: float = 2.0, blob_fraction: float = 0.02,
                  max_blob_extent: float = 0.2) -> float:
    """Share of the frame that changed by more than ``pixel_threshold`` grey levels from ``a`` to ``b``, small
    compact blobs (the pointer) left out: the faint, frame-wide change that starts an eased pan, zoom or fade
    long before any one pixel passes the differencing threshold."""
    import cv2

    changed = (cv2.absdiff(a, b) > pixel_threshold).view(np.uint8)
    n_changed = cv2.countNonZero(changed)
    if n_changed == 0 or n_changed > 0.5 * changed.size:
        return n_changed / changed.size
    if _pointer_sized(changed, n_changed, blob_fraction, max_blob_extent):
        return 0.0
    _, _, area, small = _pointer_blobs(changed, blob_fraction, max_blob_extent)
    if small is not None:
        n_changed -= float(area[small].sum())
    return max(0.0, n_changed) / changed.size


def is_blank(grey: np.ndarray, keep: np.ndarray | None = None, blank_std: float = 8.0) -> bool:
    """Nearly every pixel (of those ``keep`` marks) at the frame's median grey: a black or uniform screen (a
    pointer on it, or a webcam box left out by ``keep``, does not make it content)."""
    import cv2

    px = grey if keep is None else grey[keep]
    if px.size == 0:
        return False
    if px.dtype != np.uint8:
        med = float(np.median(px))
        return float(np.mean(np.abs(px.astype(np.float32) - med) <= blank_std)) >= 0.97
    # most frames of content are told in two cheap passes: in a blank frame the grey's variance is at most
    # 0.97 * blank_std^2 + 0.03 * (max - min)^2 (its spread around the median, which bounds it, when 97 % lie
    # within blank_std of the median and the rest within max - min)
    darkest, brightest = cv2.minMaxLoc(px)[:2]
    var = float(cv2.meanStdDev(px)[1][0, 0]) ** 2
    if var > 1.0001 * max(blank_std ** 2, 0.97 * blank_std ** 2 + 0.03 * (brightest - darkest) ** 2) + 1e-6:
        return False
    # one pass (OpenCV's histogram: faster than np.bincount): the median and the share near it
    hist = cv2.calcHist([np.ascontiguousarray(px)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    med = int(np.searchsorted(np.cumsum(hist), (px.size + 1) // 2))
    lo, hi = max(0, int(np.ceil(med - blank_std))), min(255, int(np.floor(med + blank_std)))
    return int(hist[lo:hi + 1].sum()) >= 0.97 * px.size
