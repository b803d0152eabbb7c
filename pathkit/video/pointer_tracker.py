"""Track the narrator's pointer with the learned detector (:mod:`pathkit.video.pointer_net`) and motion cues.

The detector finds arrows and hands of any theme, polarity, colour and size; the motion cue decides where,
and how sure, it must be:

* **nothing changed** near the last position: the pointer is still there (no network call); nothing changed
  anywhere and no pointer was seen: none appeared;
* **some pixels changed** (the pointer moved, a small part of the view changed): the detector runs only on the
  changed area and around the last position; a candidate near the last position needs ``track_threshold``,
  one on changed pixels ``detect_threshold``, one on still pixels (a look-alike in the tissue that the
  change merely came near) ``static_threshold``;
* **no motion evidence** (first frame, cut, crossfade, pan; or every ``recheck`` frames): the whole frame is
  searched and a new pointer needs ``static_threshold``; so does a tracked one that has never moved since it
  was found (a look-alike in the content, taken for the pointer as the real one left, never moves);
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
    # tripled the false detections with the second detector)
    static_threshold: float = 0.65
    track_threshold: float = 0.3
    # themes put the hotspot a pixel or two inside the drawn tip, the renders on it: measured on the dev clips
    hotspot_offset: tuple[float, float] = (1.0, 2.0)
    motion_threshold: float = 14.0  # grey levels: less is compression noise
    max_motion_fraction: float = 0.05  # above this the view itself changed: motion says nothing
    recheck: int = 25  # frames between full searches while a pointer is tracked through still frames
    arrival_drop: float = 0.2  # a pointer that moved onto changed pixels scored this much less there a frame before
    near: int = 24  # a candidate this close (pixels) to the last position continues the track
    window: int = 56  # half-size of the window searched around the last position
    reacquire: int = 10  # frames after losing the pointer during which it is looked for near where it was
    pad: int = 48  # around the changed pixels (a pointer extends ~this far from its hotspot)
    # pathkit's own pointer art (its synthetic lectures) matched this well near the detection: its exact hotspot
    snap_threshold: float = 0.9
    snap_radius: int = 4

    def __post_init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._last: tuple[float, float, float] | None = None
        self._prev_rgb: np.ndarray | None = None
        self._moved = False  # the tracked pointer has moved since it was found (a look-alike in the content never does)
        self._lost: tuple[float, float, float] | None = None  # where the pointer was last seen, once lost
        self._lost_for = 0
        self._since_full = 0
        self._templates: tuple[int, list] | None = None  # (frame height, pathkit's art at that height's scales)

    def _motion(self, grey: np.ndarray) -> np.ndarray | None:
        import cv2

        prev, self._prev = self._prev, grey
        if prev is None or prev.shape != grey.shape:
            return None
        changed = (cv2.absdiff(prev, grey) > self.motion_threshold).view(np.uint8)
        return None if changed.mean() > self.max_motion_fraction else changed

    def update(self, frame: np.ndarray) -> tuple[float, float, float] | None:
        """Detect in one frame (RGB, or grey); returns ``(x, y, score)`` or None."""
        import cv2

        rgb = frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, 2)
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        motion = self._motion(grey)
        prev_rgb, self._prev_rgb = self._prev_rgb, rgb
        H, W = grey.shape
        self._since_full += 1
        if motion is not None and self._since_full < self.recheck:
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
        x0, y0, x1, y1 = roi
        prob, xy = heatmap(self.net, rgb[y0:y1, x0:x1])
        best = None
        snapped = {}  # (x, y) -> pathkit's art matched there (or None): matched once per candidate and frame
        seen = self._last or (self._lost if self._lost_for <= self.reacquire else None)
        for score, x, y in peaks(prob, xy, min(self.track_threshold, self.detect_threshold), k=5):
            x, y = x + x0, y + y0
            if not (0 <= x < W and 0 <= y < H):
                continue
            dist = np.inf if seen is None else np.hypot(x - seen[0], y - seen[1])
            if self._last is not None and dist <= self.near and (self._moved or roi != (0, 0, W, H)):
                need = self.track_threshold
            elif self._last is not None and dist <= self.near:  # a re-check of a track that never moved
                need = self.static_threshold
            elif ((self._last is not None and motion is None and dist <= self.window)  # moving through a pan/fade
                  or dist <= self.near):  # back where it was lost a moment ago
                need = self.detect_threshold
            elif motion is not None and self._changed_near(motion, x, y):  # moved onto changed pixels ...
                # ... unless it was there a frame before (a look-alike next to a webcam box or the pointer's exit)
                need = self.detect_threshold if self._arrived(prev_rgb, x, y, score) else self.static_threshold
            else:
                need = self.static_threshold
            if self.detect_threshold <= score < need:
                snapped[x, y] = self._snap(grey, x, y)
                if snapped[x, y] is not None:
                    need = self.detect_threshold  # pathkit's own pointer art, matched to the pixel: no look-alike
            if score >= need and (best is None or score - need > best[2] - best[3]):
                best = (x, y, score, need)
        if best is None:
            if self._last is not None:
                self._lost, self._lost_for = self._last, 0
            self._lost_for += 1
            self._last = None
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

    def _arrived(self, prev_rgb: np.ndarray | None, x: float, y: float, score: float) -> bool:
        """Whether the detector scored (x, y) clearly lower in the previous frame: a pointer that moved there."""
        if prev_rgb is None or prev_rgb.shape != self._prev_rgb.shape:
            return True
        H, W = prev_rgb.shape[:2]
        r = 48
        cx0, cy0 = max(0, int(x) - r) // 4 * 4, max(0, int(y) - r) // 4 * 4
        prob, xy = heatmap(self.net, prev_rgb[cy0:min(H, int(y) + r), cx0:min(W, int(x) + r)])
        near = np.hypot(xy[..., 0] + cx0 - x, xy[..., 1] + cy0 - y) <= 6
        return not near.any() or float(prob[near].max()) < score - self.arrival_drop

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
    rows = []
    for f in frames:
        hit = tracker.update(f.image)
        if hit is not None:
            rows.append({"t": round(f.t, 4), "x": round(hit[0], 2), "y": round(hit[1], 2), "score": round(hit[2], 4),
                         "shape": "pointer"})
    return rows
