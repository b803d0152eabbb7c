"""Detect and track the narrator's mouse pointer: template matching plus motion cues.

Quilt detected the pointer in every frame but never released how. pathkit's detector:

* **templates** of common pointers (the classic arrow, a pointing hand) at a few integer scales around
  the scale a screen of this height shows, matched on grey frames with masked normalised
  cross-correlation (``cv2.TM_CCOEFF_NORMED`` over the pointer's own pixels only, so the background
  under the transparent corners does not matter);
* **tracking**: once found, the pointer is searched first with the same template in a window around its
  last position (fast, and robust when the pointer crosses busy tissue), accepted at a lower score;
* **motion cue**: when nothing is tracked and the frame did not change since the previous one, a pointer
  cannot have appeared, so the full search is skipped (a full search still runs every ``recheck`` frames).

Output: one row per frame where a pointer is seen: ``{"t", "x", "y", "score", "shape"}`` with (x, y) the
hotspot (arrow tip, fingertip) in pixels of the original frame. Frames without a pointer have no row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathkit.video.cursor_shapes import SHAPES, CursorShape, cursor_scale_for


@dataclass(frozen=True)
class CursorTemplate:
    shape: CursorShape
    grey: np.ndarray  # float32 (h, w)
    mask: np.ndarray  # uint8 (h, w)

    @property
    def name(self) -> str:
        return self.shape.name


def build_templates(frame_height: int, kinds: tuple[str, ...] = ("arrow", "hand"),
                    scales: tuple[int, ...] | None = None) -> list[CursorTemplate]:
    """Templates for each pointer kind at the expected scale for this frame height and its neighbours."""
    if scales is None:
        base = cursor_scale_for(frame_height)
        scales = tuple(sorted({max(1, base - 1), base, base + 1}))
    out = []
    for kind in kinds:
        for s in scales:
            shape = SHAPES[kind].scaled(s)
            out.append(CursorTemplate(shape, shape.grey.astype(np.float32), shape.mask.astype(np.uint8)))
    return out


def match_template(grey: np.ndarray, tpl: CursorTemplate, roi: tuple[int, int, int, int] | None = None
                   ) -> tuple[float, int, int]:
    """Best masked-correlation score and the hotspot (x, y) of ``tpl`` in ``grey`` (optionally in a roi
    ``(x0, y0, x1, y1)`` of hotspot positions)."""
    import cv2

    h, w = tpl.grey.shape
    H, W = grey.shape
    hx, hy = tpl.shape.hotspot
    if roi is None:
        ox, oy, img = 0, 0, grey
    else:  # roi in hotspot coords -> template top-left window
        x0, y0 = max(0, roi[0] - hx), max(0, roi[1] - hy)
        x1, y1 = min(W, roi[2] - hx + w), min(H, roi[3] - hy + h)
        ox, oy, img = x0, y0, grey[y0:y1, x0:x1]
    if img.shape[0] < h or img.shape[1] < w:
        return -1.0, 0, 0
    res = cv2.matchTemplate(img, tpl.grey, cv2.TM_CCOEFF_NORMED, mask=tpl.mask)
    res = np.nan_to_num(res, nan=-1.0, posinf=-1.0, neginf=-1.0)
    _, best, _, loc = cv2.minMaxLoc(res)
    return float(best), ox + loc[0] + hx, oy + loc[1] + hy


@dataclass
class CursorTracker:
    """Per-frame pointer detection with tracking; feed frames in time order with :meth:`update`."""

    templates: list[CursorTemplate]
    detect_threshold: float = 0.8
    track_threshold: float = 0.7
    search_radius: int = 48
    recheck: int = 10
    motion_threshold: float = 12.0

    def __post_init__(self) -> None:
        self._last: tuple[int, int, CursorTemplate] | None = None
        self._prev: np.ndarray | None = None
        self._since_full = 0

    def _changed(self, grey: np.ndarray) -> bool:
        import cv2

        if self._prev is None or self._prev.shape != grey.shape:
            return True
        return bool((cv2.absdiff(self._prev, grey) > self.motion_threshold).any())

    def update(self, grey_u8: np.ndarray) -> tuple[float, float, float, str] | None:
        """Detect in one grey uint8 frame; returns ``(x, y, score, shape_name)`` or None."""
        grey = grey_u8.astype(np.float32)
        changed = self._changed(grey_u8)
        self._prev = grey_u8
        if self._last is not None:
            px, py, tpl = self._last
            r = self.search_radius
            score, x, y = match_template(grey, tpl, (px - r, py - r, px + r + 1, py + r + 1))
            if score >= self.track_threshold:
                self._last = (x, y, tpl)
                return float(x), float(y), score, tpl.name
            self._last = None
        self._since_full += 1
        if not changed and self._since_full < self.recheck:
            return None  # nothing moved and nothing was there: a pointer cannot have appeared
        self._since_full = 0
        best = (-1.0, 0, 0, None)
        for tpl in self.templates:
            score, x, y = match_template(grey, tpl)
            if score > best[0]:
                best = (score, x, y, tpl)
        score, x, y, tpl = best
        if tpl is None or score < self.detect_threshold:
            return None
        self._last = (x, y, tpl)
        return float(x), float(y), score, tpl.name


def track_cursor(path: str | Path, fps: float | None = None, kinds: tuple[str, ...] = ("arrow", "hand"),
                 detect_threshold: float = 0.8, progress: bool = False) -> list[dict]:
    """Pointer rows ``{"t", "x", "y", "score", "shape"}`` for the frames of a video (all, or ~``fps``/s)."""
    from pathkit.video.decode import iter_frames, probe

    info = probe(path)
    tracker = CursorTracker(build_templates(info.height, kinds), detect_threshold=detect_threshold)
    rows = []
    frames = iter_frames(path, fps=fps, grey=True)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=info.n_frames if not fps else int(info.duration * fps) + 1,
                      desc=f"cursor {Path(path).name}", unit="frame")
    for f in frames:
        hit = tracker.update(f.image)
        if hit is not None:
            x, y, score, name = hit
            rows.append({"t": round(f.t, 4), "x": x, "y": y, "score": round(score, 4), "shape": name})
    return rows
