"""Track the narrator's pointer with the learned detector (:mod:`pathkit.video.pointer_net`) and motion cues.

The detector finds arrows and hands of any theme, polarity, colour and size; the motion cue decides where,
and how sure, it must be:

* **nothing changed** near the last position: the pointer is still there (no network call); nothing changed
  anywhere and no pointer was seen: none appeared;
* **some pixels changed** (the pointer moved, a small part of the view changed): the detector runs only on the
  changed area and around the last position; a candidate near the last position needs ``track_threshold``,
  one on changed pixels ``detect_threshold`` (``moving_threshold`` if it was on changed pixels a few pixels
  off a frame before too: something moving by itself, outside a webcam-like busy area), one on still pixels
  (a look-alike in the tissue that the change merely came near) ``static_threshold``;
* **no motion evidence** (first frame, cut, crossfade, pan; or every ``recheck`` frames, ``recheck_lost``
  while no pointer is tracked): the whole frame is searched and a new pointer needs ``static_threshold``; so
  does a tracked one that has never moved since it was found (a look-alike in the content, taken for the
  pointer as the real one left, never moves);
* **a pending candidate**: the best still candidate above ``pending_threshold`` of such a search, while no
  pointer is tracked (and outside a webcam-like busy area), is held; if it later moves off by itself it was
  the pointer all along, and the frames since it was found are reported late (``backfill``, merged by
  :func:`track_pointer`); it is confirmed too when it is gone from its changed place and a pointer is first
  seen moving within ``window`` pixels in the next ``leaving`` frames (it left fast); anything else changing
  where it stands drops it unless it is still seen there (what is reported back stood still the whole time);
* **context**: every search shows the detector ``context`` pixels around the searched area (in a crop cut
  close, a pointer near the edge scores far lower than in the whole frame);
* **pathkit's own pointer art** (its synthetic lectures) matched at ``snap_threshold`` around the detection
  gives the exact hotspot (and such a candidate needs only ``detect_threshold``); any other pointer gets the
  network's hotspot plus ``hotspot_offset``.

Rows: ``{"t", "x", "y", "score", "shape": "pointer"}`` per frame where a pointer is seen, (x, y) the hotspot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pathkit.video.cursor import build_templates, match_template
from pathkit.video.decode import iter_frames, probe
from pathkit.video.pointer_net import PointerNet, heatmap, load_pointer_net, peaks

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.


@dataclass
class PointerTracker:
    net: PointerNet = field(default_factory=load_pointer_net)
    detect_threshold: float = 0.5
    # third detector: 0.65 on dev/heldout/fresh (0.75 lost small and glassy pointers that scored 0.5-0.75; 0.55
    # tripled the false detections with the second detector); kept for the fourth, whose misses on the seen
    # splits were still pointers scored 0.4-0.65: the pending rule below takes most of them
    static_threshold: float = 0.65
    track_threshold: float = 0.3
    # a candidate seen on changed pixels in two frames running, a few pixels apart (an object moving by itself,
    # as no content does between two still frames), needs only this
    moving_threshold: float = 0.35
    # themes put the hotspot a pixel or two inside the drawn tip, the renders on it: measured on the dev clips
    hotspot_offset: tuple[float, float] = (1.0, 2.0)
    motion_threshold: float = 14.0  # grey levels: less is compression noise
    max_motion_fraction: float = 0.05  # above this the view itself changed: motion says nothing
    recheck: int = 25  # frames between full searches while a pointer is tracked through still frames
    arrival_drop: float = 0.2  # a pointer that moved onto changed pixels scored this much less there a frame before
    drop: float = 0.3  # a tracked pointer's score falling by more than this, below detect_threshold: it left
    near: int = 24  # a candidate this close (pixels) to the last position continues the track
    window: int = 56  # half-size of the window searched around the last position
    reacquire: int = 10  # frames after losing the pointer during which it is looked for near where it was
    pad: int = 48  # around the changed pixels (a pointer extends ~this far from its hotspot)
    # pathkit's own pointer art (its synthetic lectures) matched this well near the detection: its exact hotspot
    snap_threshold: float = 0.9
    snap_radius: int = 4
    # a still candidate below static_threshold, found while no pointer is tracked, is held as pending; it is
    # the pointer (reported back to when it was found: ``backfill``) once it moves off by itself; anything
    # changing where it is drops it
    pending_threshold: float = 0.4
    recheck_lost: int = 8  # frames between full searches while no pointer is tracked
    leaving: int = 4  # frames after a pending candidate's place changed in which a pointer moving nearby confirms it
    context: int = 64  # pixels of the frame around a searched area that the detector sees too

    def __post_init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._last: tuple[float, float, float] | None = None
        self._prev_rgb: np.ndarray | None = None
        self._moved = False  # the tracked pointer has moved since it was found (a look-alike in the content never does)
        self._lost: tuple[float, float, float] | None = None  # where the pointer was last seen, once lost
        self._lost_for = 0
        self._since_full = 0
        self._templates: tuple[int, list] | None = None  # (frame height, pathkit's art at that height's scales)
        self._moving: list[tuple[float, float]] = []  # candidates on changed pixels in the previous frame
        self._frame = -1
        self._busy = np.zeros(0, np.float32)  # per 8 x 8 cell: how often it changed lately (decaying average)
        # (x, y, score, first frame) of a still candidate not yet known to be the pointer
        self._pending: tuple[float, float, float, int] | None = None
        self._left: tuple[tuple[float, float, float, int], int] | None = None  # (pending, frame it went from there)
        self.backfill: list[tuple[int, float, float, float]] = []  # (frame, x, y, score): found late; drained by the caller

    def _motion(self, grey: np.ndarray) -> np.ndarray | None:
        import cv2

        prev, self._prev = self._prev, grey
        if prev is None or prev.shape != grey.shape:
            return None
        changed = (cv2.absdiff(prev, grey) > self.motion_threshold).view(np.uint8)
        if changed.mean() > self.max_motion_fraction:
            return None
        small = cv2.resize(changed, (grey.shape[1] // 8, grey.shape[0] // 8), interpolation=cv2.INTER_AREA) > 0
        self._busy = small * 0.1 + (0.9 * self._busy if self._busy.shape == small.shape else 0.0)
        return changed

    def _is_busy(self, x: float, y: float) -> bool:
        """Whether (x, y) changed in most recent frames (a webcam box: a face there moves by itself too)."""
        if self._busy.ndim < 2:
            return False
        j, i = min(int(x) // 8, self._busy.shape[1] - 1), min(int(y) // 8, self._busy.shape[0] - 1)
        return float(self._busy[max(0, i - 2):i + 3, max(0, j - 2):j + 3].max()) > 0.5

    def update(self, frame: np.ndarray) -> tuple[float, float, float] | None:
        """Detect in one frame (RGB, or grey); returns ``(x, y, score)`` or None."""
        import cv2

        rgb = frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, 2)
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        motion = self._motion(grey)
        prev_rgb, self._prev_rgb = self._prev_rgb, rgb
        moving, self._moving = self._moving, []
        H, W = grey.shape
        self._frame += 1
        self._since_full += 1
        pending = self._pending
        changed_at_pending = False
        if pending is not None:
            bx0, by0, bx1, by1 = self._box(pending[0], pending[1], 0, W, H)
            changed_at_pending = motion is None or bool(motion[by0:by1, bx0:bx1].any())
            if motion is not None and changed_at_pending:
                moving.append(pending[:2])  # it may be leaving: a candidate moving off from it is the pointer
        recheck = self.recheck if self._last is not None else self.recheck_lost
        if motion is not None and self._since_full < recheck:
            if self._last is not None:
                x, y, _ = self._last
                x0, y0, x1, y1 = self._box(x, y, 8, W, H)
                if not motion[y0:y1, x0:x1].any():
                    return self._reported()  # nothing changed where it was: still there
            if not motion.any() and not (self._last is None and self._lost_for <= self.reacquire):
                return self._reported()
            roi = self._roi(motion, W, H)
        else:
            roi = (0, 0, W, H)
            self._since_full = 0
        best = None
        snapped = {}  # (x, y) -> pathkit's art matched there (or None): matched once per candidate and frame
        seen = self._last or (self._lost if self._lost_for <= self.reacquire else None)
        candidates = self.candidates(rgb, roi, min(self.track_threshold, self.detect_threshold, self.moving_threshold))
        for score, x, y in candidates:
            on_changed = motion is not None and self._changed_near(motion, x, y)
            if on_changed:
                self._moving.append((x, y))
            dist = np.inf if seen is None else np.hypot(x - seen[0], y - seen[1])
            if self._last is not None and dist <= self.near and (self._moved or roi != (0, 0, W, H)):
                # the track goes on, unless the score fell from a sure one to a weak one: the pointer left and
                # what it uncovered looks a little like one
                fell = score < self.detect_threshold and score < self._last[2] - self.drop
                need = self.detect_threshold if fell else self.track_threshold
            elif self._last is not None and dist <= self.near:  # a re-check of a track that never moved
                need = self.static_threshold
            elif self._last is not None and motion is None and dist <= self.window:  # moving through a pan/fade ...
                # ... keeps about its score; one far weaker is what the view change brought near as it left
                need = self.detect_threshold if score >= self._last[2] - self.drop else self.static_threshold
            elif dist <= self.near:  # back where it was lost a moment ago (about as sure as it was then: what a
                # pointer uncovered as it vanished scores far lower)
                need = self.detect_threshold if score >= seen[2] - self.drop / 2 else self.static_threshold
            elif on_changed:  # moved onto changed pixels ...
                # ... unless it was there a frame before (a look-alike next to a webcam box or uncovered by the
                # pointer's exit); seen on changed pixels a frame ago too, a little way off: moving by itself
                # (in a busy area, a webcam box, a face moves by itself: such a candidate needs a sure score)
                busy = self._is_busy(x, y)
                arrived = not busy and self._arrived(prev_rgb, x, y, score)
                was_moving = any(2 < np.hypot(x - mx, y - my) <= self.near for mx, my in moving)
                need = (self.static_threshold if not arrived else self.moving_threshold if was_moving
                        else self.detect_threshold)
            else:
                need = self.static_threshold
            if self.detect_threshold <= score < need:
                snapped[x, y] = self._snap(grey, x, y)
                if snapped[x, y] is not None:
                    need = self.detect_threshold  # pathkit's own pointer art, matched to the pixel: no look-alike
            if score >= need and (best is None or score - need > best[2] - best[3]):
                best = (x, y, score, need)
        left, self._left = self._left, None
        if left is not None and pending is None and self._frame - left[1] <= self.leaving:
            if best is None:
                self._left = left
            elif np.hypot(best[0] - left[0][0], best[1] - left[0][1]) <= self.window and best[:2] in self._moving:
                self._confirm(left[0], left[1])  # it left fast: first seen moving a little way off
        if pending is not None:
            if best is not None and np.hypot(best[0] - pending[0], best[1] - pending[1]) <= self.near:
                self._confirm(pending, self._frame)  # the pointer: it was there since it was found
                self._pending = None
            elif best is None and changed_at_pending and motion is not None and not any(
                    score >= self.track_threshold and np.hypot(x - pending[0], y - pending[1]) <= 3
                    for score, x, y in candidates):
                self._left, self._pending = (pending, self._frame), None  # gone from where it stood: leaving?
            elif best is not None or (changed_at_pending and not any(
                    score >= self.track_threshold and np.hypot(x - pending[0], y - pending[1]) <= 3
                    for score, x, y in candidates)):
                # the pointer is elsewhere, or something changed where it is and it is not seen there now: it
                # may have gone (what is reported back must have stood still since it was found)
                self._pending = None
        if best is None:
            if self._last is not None:
                # where the pointer was (a track that never moved may have been a look-alike: not looked for again)
                self._lost, self._lost_for = (self._last if self._moved else None), 0
            self._lost_for += 1
            self._last = None
            if self._pending is None and roi == (0, 0, W, H):
                still = [c for c in candidates if c[0] >= self.pending_threshold and c[1:] not in self._moving
                         and not self._is_busy(*c[1:])]
                if still:
                    self._pending = (still[0][1], still[0][2], still[0][0], self._frame)
        else:
            exact = snapped[best[:2]] if best[:2] in snapped else self._snap(grey, best[0], best[1])
            x, y = exact or (best[0] + self.hotspot_offset[0], best[1] + self.hotspot_offset[1])
            jump = np.inf if self._last is None else np.hypot(x - self._last[0], y - self._last[1])
            if jump > self.near:  # found (again, or elsewhere): not yet seen to move
                self._moved = False
            elif jump > 3:
                self._moved = True
            self._last = (x, y, best[2])
        return self._reported()

    def candidates(self, rgb: np.ndarray, roi: tuple[int, int, int, int], threshold: float
                   ) -> list[tuple[float, float, float]]:
        """Up to 5 detector peaks above ``threshold`` with the hotspot inside ``roi`` (x0, y0, x1, y1), as
        ``(score, x, y)`` in frame pixels, best first. The detector sees ``context`` pixels around the area: its
        receptive field reaches ~60 px, and in a crop cut closer a pointer near the edge scores far lower than in
        the whole frame."""
        H, W = rgb.shape[:2]
        x0, y0, x1, y1 = roi
        cx0, cy0 = max(0, x0 - self.context) // 4 * 4, max(0, y0 - self.context) // 4 * 4
        prob, xy = heatmap(self.net, rgb[cy0:min(H, y1 + self.context), cx0:min(W, x1 + self.context)])
        xy = xy + np.array([cx0, cy0], np.float32)
        inside = (xy[..., 0] >= x0) & (xy[..., 0] < x1) & (xy[..., 1] >= y0) & (xy[..., 1] < y1)
        return peaks(np.where(inside, prob, 0.0), xy, threshold, k=5)

    def _confirm(self, pending: tuple[float, float, float, int], until: int) -> None:
        """Report a pending candidate, now known to be the pointer, in the frames from where it was found."""
        self.backfill.extend((f, pending[0] + self.hotspot_offset[0], pending[1] + self.hotspot_offset[1], pending[2])
                             for f in range(pending[3], until))

    def _arrived(self, prev_rgb: np.ndarray | None, x: float, y: float, score: float) -> bool:
        """Whether the detector scored (x, y) clearly lower in the previous frame: a pointer that moved there."""
        if prev_rgb is None or prev_rgb.shape != self._prev_rgb.shape:
            return True
        before = [s for s, px, py in self.candidates(prev_rgb, (int(x) - 6, int(y) - 6, int(x) + 7, int(y) + 7), 0.0)]
        return not before or before[0] < score - self.arrival_drop

    def _reported(self) -> tuple[float, float, float] | None:
        return self._last

    def _snap(self, grey: np.ndarray, x: float, y: float) -> tuple[float, float] | None:
        """The exact hotspot of pathkit's own pointer art (the synthetic lectures' pointer) when it matches near
        the network's hotspot (x, y); None for any other pointer."""
        H, W = grey.shape
        if self._templates is None or self._templates[0] != H:
            self._templates = (H, build_templates(H))
        r, m = self.snap_radius, max(max(t.grey.shape) for t in self._templates[1])  # m: a template's reach
        cx0, cy0 = max(0, int(x) - r - m), max(0, int(y) - r - m)
        crop = grey[cy0:min(H, int(y) + r + m + 1), cx0:min(W, int(x) + r + m + 1)].astype(np.float32)
        roi = (int(x) - r - cx0, int(y) - r - cy0, int(x) + r + 1 - cx0, int(y) + r + 1 - cy0)
        best = max((match_template(crop, t, roi) for t in self._templates[1]), key=lambda hit: hit[0])
        return (best[1] + cx0, best[2] + cy0) if best[0] >= self.snap_threshold else None

    def _box(self, x: float, y: float, grow: int, W: int, H: int) -> tuple[int, int, int, int]:
        """The pixels a pointer with its hotspot at (x, y) may cover (it hangs down and right), plus ``grow``."""
        return (max(0, int(x) - 6 - grow), max(0, int(y) - 6 - grow),
                min(W, int(x) + 40 + grow), min(H, int(y) + 48 + grow))

    def _changed_near(self, motion: np.ndarray, x: float, y: float) -> bool:
        x0, y0, x1, y1 = self._box(x, y, 0, motion.shape[1], motion.shape[0])
        return int(motion[y0:y1, x0:x1].sum()) >= 3

    def _roi(self, motion: np.ndarray, W: int, H: int) -> tuple[int, int, int, int]:
        import cv2

        bx, by, bw, bh = cv2.boundingRect(motion)
        x0, y0, x1, y1 = bx - self.pad, by - self.pad, bx + bw + self.pad // 2, by + bh + self.pad // 2
        seen = self._last or (self._lost if self._lost_for <= self.reacquire else None)
        if seen is not None:
            x, y, _ = seen
            x0, y0 = min(x0, int(x) - self.window), min(y0, int(y) - self.window)
            x1, y1 = max(x1, int(x) + self.window), max(y1, int(y) + self.window)
        x0, y0 = max(0, x0) // 4 * 4, max(0, y0) // 4 * 4
        return x0, y0, min(W, x1), min(H, y1)


def track_pointer(path: str | Path, fps: float | None = None, progress: bool = False,
                  tracker: PointerTracker | None = None) -> list[dict]:
    """Pointer rows ``{"t", "x", "y", "score", "shape"}`` for the frames of a video (all, or ~``fps``/s)."""
    info = probe(path)
    tracker = tracker or PointerTracker()
    frames = iter_frames(path, fps=fps, grey=False)
    if progress:
        frames = tqdm(frames, total=info.n_frames if not fps else int(info.duration * fps) + 1,
                      desc=f"pointer {Path(path).name}", unit="frame")
    rows, times = {}, []
    for i, f in enumerate(frames):
        times.append(f.t)
        hit = tracker.update(f.image)
        found = [(i, *hit)] if hit is not None else []
        for k, x, y, score in tracker.backfill + found:
            rows[k] = {"t": round(times[k], 4), "x": round(x, 2), "y": round(y, 2), "score": round(score, 4),
                       "shape": "pointer"}
        tracker.backfill.clear()
    return [rows[k] for k in sorted(rows)]
