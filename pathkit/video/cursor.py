"""Detect and track the narrator's mouse pointer: template matching plus motion cues.

Quilt detected the pointer in every frame but never released how. pathkit's detector:

* **templates** of common pointers (the classic arrow, a pointing hand) at a few integer scales around
  the scale a screen of this height shows, matched on grey frames with masked normalised
  cross-correlation (``cv2.TM_CCOEFF_NORMED`` over the pointer's own pixels only, so the background
  under the transparent corners does not matter); a fractional scale (a larger screen downscaled into
  the video) gets one template per sub-pixel phase, searched coarse to fine (one phase over the frame,
  all phases within ``refine_radius`` of its best match) and held to a ``phase_margin`` higher threshold;
* **motion cue**: a pointer that appears or moves changes the pixels under it while the view stays still,
  so the full-frame search keeps only candidates whose footprint covers changed pixels and that matched
  clearly worse at that spot a frame before (which rejects static look-alikes in the tissue, the failure
  mode of small, blurred pointers); with no change at all
  the search is skipped (a strict, ungated search still runs every ``recheck`` frames and on cuts);
* **tracking**: once found, the pointer is searched first with the same template in a window around its
  last position, accepted at a lower score when it stayed put (a dwell) or moved onto changed pixels.

Output: one row per frame where a pointer is seen: ``{"t", "x", "y", "score", "shape"}`` with (x, y) the
hotspot (arrow tip, fingertip) in pixels of the original frame. Frames without a pointer have no row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pathkit.video.cursor_shapes import SHAPES, CursorShape, cursor_scale_for, resized_shape
from pathkit.video.decode import iter_frames, probe

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.


@dataclass(frozen=True)
class CursorTemplate:
    shape: CursorShape
    grey: np.ndarray  # float32 (h, w)
    mask: np.ndarray  # uint8 (h, w)

    @property
    def name(self) -> str:
        return self.shape.name


def build_templates(frame_height: int, kinds: tuple[str, ...] = ("arrow", "hand"),
                    scales: tuple[float, ...] | None = None, phases: int = 3) -> list[CursorTemplate]:
    """Templates for each pointer kind at the scale a screen of this height shows and its neighbours,
    including the fractional scales of recordings downscaled from a larger screen (0.67, 0.75).

    A fractional scale gets ``phases`` x ``phases`` templates, one per sub-pixel position (0, 1/3, 2/3 of
    a pixel in x and y), all with the same name: a pointer blurred by rescaling looks different at each.
    """
    if scales is None:
        base = cursor_scale_for(frame_height)
        scales = tuple(sorted({base * f for f in (0.67, 0.75, 1.0, 1.5, 2.0) if base * f >= 0.6}))
    out = []
    for kind in kinds:
        for s in scales:
            n = 1 if float(s).is_integer() else max(1, phases)
            for py in range(n):
                for px in range(n):
                    shape = resized_shape(SHAPES[kind], s, (px / n, py / n))
                    out.append(CursorTemplate(shape, shape.grey.astype(np.float32), shape.mask.astype(np.uint8)))
    return out


def match_template(grey: np.ndarray, tpl: CursorTemplate, roi: tuple[int, int, int, int] | None = None,
                   gate: np.ndarray | None = None) -> tuple[float, int, int]:
    """Best masked-correlation score and the hotspot (x, y) of ``tpl`` in ``grey``.

    ``roi`` ``(x0, y0, x1, y1)`` limits the hotspot positions searched; ``gate`` (a uint8 map of changed
    pixels, frame-sized) keeps only positions where the template's footprint covers some change.
    """
    import cv2

    h, w = tpl.grey.shape
    H, W = grey.shape
    hx, hy = tpl.shape.hotspot
    if roi is None:
        x0, y0, x1, y1 = 0, 0, W, H
    else:  # roi in hotspot coords -> template top-left window
        x0, y0 = max(0, roi[0] - hx), max(0, roi[1] - hy)
        x1, y1 = min(W, roi[2] - hx + w), min(H, roi[3] - hy + h)
    img = grey[y0:y1, x0:x1]
    if img.shape[0] < h or img.shape[1] < w:
        return -1.0, 0, 0
    res = cv2.matchTemplate(img, tpl.grey, cv2.TM_CCOEFF_NORMED, mask=tpl.mask)
    res = np.nan_to_num(res, nan=-1.0, posinf=-1.0, neginf=-1.0)
    if gate is not None:
        moved = cv2.boxFilter(gate[y0:y1, x0:x1].astype(np.float32), -1, (w, h), anchor=(0, 0), normalize=False,
                              borderType=cv2.BORDER_CONSTANT)[: res.shape[0], : res.shape[1]]
        res = np.where(moved >= 3, res, -1.0)
    _, best, _, loc = cv2.minMaxLoc(res)
    return float(best), x0 + loc[0] + hx, y0 + loc[1] + hy


@dataclass
class CursorTracker:
    """Per-frame pointer detection with tracking; feed frames in time order with :meth:`update`.

    Thresholds: ``detect_threshold`` where the frame changed around the candidate (a pointer that moved),
    ``static_threshold`` for a search with no motion evidence (first frame, periodic re-check, cuts), and
    ``track_threshold`` near the last position, where a candidate must either not have moved (a dwell) or
    sit on changed pixels: a tracker must not jump onto a static look-alike in the tissue.
    """

    templates: list[CursorTemplate]
    detect_threshold: float = 0.72
    static_threshold: float = 0.85
    track_threshold: float = 0.7
    search_radius: int = 48
    recheck: int = 10
    motion_threshold: float = 12.0
    max_motion_fraction: float = 0.03  # above this the view itself changed (cut, pan): motion says nothing
    phase_margin: float = 0.05  # added to every threshold for a pointer matched over several sub-pixel phases
    arrival_drop: float = 0.1  # a pointer that moved to (x, y) matched there this much worse a frame before
    refine_slack: float = 0.2  # coarse matches this far below the threshold are refined over sub-pixel phases
    refine_radius: int = 2  # pixels around a coarse match searched with the other phases
    near_radius: int = 12  # a tracked pointer is first searched this close to its last position

    def __post_init__(self) -> None:
        self._family: dict[str, list[CursorTemplate]] = {}  # name -> its sub-pixel phases
        for tpl in self.templates:
            self._family.setdefault(tpl.name, []).append(tpl)
        self._last: tuple[int, int, CursorTemplate] | None = None
        self._prev: np.ndarray | None = None
        self._prev_f32: np.ndarray | None = None
        self._since_full = 0

    def _motion(self, grey: np.ndarray) -> np.ndarray | None:
        """uint8 map of changed pixels, or None when there is no usable motion evidence."""
        import cv2

        if self._prev is None or self._prev.shape != grey.shape:
            return None
        changed = (cv2.absdiff(self._prev, grey) > self.motion_threshold).view(np.uint8)
        if changed.mean() > self.max_motion_fraction:
            return None
        return changed

    def update(self, grey_u8: np.ndarray) -> tuple[float, float, float, str] | None:
        """Detect in one grey uint8 frame; returns ``(x, y, score, shape_name)`` or None."""
        grey = grey_u8.astype(np.float32)
        first = self._prev is None
        motion = self._motion(grey_u8)
        prev_grey, self._prev, self._prev_f32 = self._prev_f32, grey_u8, grey
        if self._last is not None:
            px, py, tpl = self._last
            r = self.search_radius
            # across a cut or pan (no motion evidence) only a confident match keeps the track
            needed = self.static_threshold if motion is None else self.track_threshold
            # every phase of the tracked pointer near its last position; if it is not there, the wider
            # window with the phase it had, refined over its phases
            n = self.near_radius
            score, x, y, tpl = max(((*match_template(grey, t, (px - n, py - n, px + n + 1, py + n + 1)), t)
                                    for t in self._family[tpl.name]), key=lambda hit: hit[0])
            if score < needed + self._margin(tpl):
                tpl = self._last[2]
                score, x, y = match_template(grey, tpl, (px - r, py - r, px + r + 1, py + r + 1))
                score, x, y, tpl = self._refine(grey, tpl, score, x, y)
            if score >= needed + self._margin(tpl):
                still = abs(x - px) <= 1 and abs(y - py) <= 1
                if still or motion is None or (self._moved_here(motion, tpl, x, y)
                                               and self._arrived(prev_grey, tpl, x, y, score)):
                    self._last = (x, y, tpl)
                    return float(x), float(y), score, tpl.name
            self._last = None
        self._since_full += 1
        has_motion = motion is not None and bool(motion.any())
        if not (first or has_motion or motion is None or self._since_full >= self.recheck):
            return None  # nothing changed and nothing was there: a pointer cannot have appeared
        self._since_full = 0
        gate = motion if has_motion else None
        threshold = self.detect_threshold if gate is not None else self.static_threshold
        roi = None
        if gate is not None:  # candidates must overlap the change: search only around it (same result)
            import cv2

            bx, by, bw, bh = cv2.boundingRect(gate)
            pad = max(max(t.grey.shape) for t in self.templates)
            roi = (bx - pad, by - pad, bx + bw + pad, by + bh + pad)
        best = (-1.0, 0, 0, None)
        for family in self._family.values():  # coarse: one phase per pointer and scale, then its phases nearby
            score, x, y = match_template(grey, family[0], roi=roi, gate=gate)
            tpl = family[0]
            if score >= threshold - self.refine_slack:
                score, x, y, tpl = self._refine(grey, tpl, score, x, y, gate)
            if score > best[0]:
                best = (score, x, y, tpl)
        score, x, y, tpl = best
        if tpl is None or score < threshold + self._margin(tpl):
            return None
        if gate is not None and not self._arrived(prev_grey, tpl, x, y, score):
            return None  # it was already there a frame ago: a static look-alike near some change
        self._last = (x, y, tpl)
        return float(x), float(y), score, tpl.name

    def _refine(self, grey: np.ndarray, tpl: CursorTemplate, score: float, x: int, y: int,
                gate: np.ndarray | None = None) -> tuple[float, int, int, CursorTemplate]:
        """Best sub-pixel phase of ``tpl``'s pointer within 2 px of a match at (x, y)."""
        best = (score, x, y, tpl)
        for t in self._family[tpl.name]:
            if t is not tpl:
                s, tx, ty = match_template(grey, t, (x - self.refine_radius, y - self.refine_radius, x + self.refine_radius + 1, y + self.refine_radius + 1), gate=gate)
                if s > best[0]:
                    best = (s, tx, ty, t)
        return best

    def _margin(self, tpl: CursorTemplate) -> float:
        """The best of several phases scores higher on anything, look-alikes included: ask more of it."""
        return self.phase_margin if len(self._family[tpl.name]) > 1 else 0.0

    def _arrived(self, prev: np.ndarray | None, tpl: CursorTemplate, x: int, y: int, score: float) -> bool:
        """Motion cue, second half: a pointer that moved to (x, y) was not there in the previous frame, while a
        static look-alike in the tissue matched there just as well."""
        import cv2

        if prev is None:
            return True
        h, w = tpl.grey.shape
        x0, y0 = x - tpl.shape.hotspot[0], y - tpl.shape.hotspot[1]
        if x0 < 0 or y0 < 0 or x0 + w > prev.shape[1] or y0 + h > prev.shape[0]:
            return True
        before = cv2.matchTemplate(prev[y0:y0 + h, x0:x0 + w], tpl.grey, cv2.TM_CCOEFF_NORMED, mask=tpl.mask)
        before = float(np.nan_to_num(before[0, 0], nan=-1.0))
        return before < score - self.arrival_drop

    @staticmethod
    def _moved_here(motion: np.ndarray, tpl: CursorTemplate, x: int, y: int) -> bool:
        h, w = tpl.grey.shape
        x0, y0 = max(0, x - tpl.shape.hotspot[0]), max(0, y - tpl.shape.hotspot[1])
        return int(motion[y0:y0 + h, x0:x0 + w].sum()) >= 3


def track_cursor(path: str | Path, fps: float | None = None, kinds: tuple[str, ...] = ("arrow", "hand"),
                 progress: bool = False) -> list[dict]:
    """Pointer rows ``{"t", "x", "y", "score", "shape"}`` for the frames of a video (all, or ~``fps``/s)."""
    info = probe(path)
    tracker = CursorTracker(build_templates(info.height, kinds))
    rows = []
    frames = iter_frames(path, fps=fps, grey=True)
    if progress:
        frames = tqdm(frames, total=info.n_frames if not fps else int(info.duration * fps) + 1,
                      desc=f"cursor {Path(path).name}", unit="frame")
    for f in frames:
        hit = tracker.update(f.image)
        if hit is not None:
            x, y, score, name = hit
            rows.append({"t": round(f.t, 4), "x": x, "y": y, "score": round(score, 4), "shape": name})
    return rows
