"""Bitmaps of common mouse pointers (arrow, pointing hand) and their hotspots.

The same pixel art draws the pointer in synthetic lectures (pathkit.synthetic.video) and builds the
detector's templates (pathkit.video.cursor): the classic desktop arrow is the same few pixels in every
screen recording, so matching its exact shape is what a real detector does too. Pure numpy: no cv2/av import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.

# B = black outline, W = white fill, . = transparent. Hotspot = the arrow tip / the fingertip.
_ARROW = """
B...........
BB..........
BWB.........
BWWB........
BWWWB.......
BWWWWB......
BWWWWWB.....
BWWWWWWB....
BWWWWWWWB...
BWWWWWWWWB..
BWWWWWWWWWB.
BWWWWWWBBBBB
BWWWBWWB....
BWWBBWWB....
BWB..BWWB...
BB...BWWB...
B.....BWWB..
......BWWB..
.......BB...
"""

_HAND = """
.....BB..........
....BWWB.........
....BWWB.........
....BWWB.........
....BWWB.........
....BWWBBB.......
....BWWBWWBBB....
....BWWBWWBWWBB..
.BB.BWWBWWBWWBWB.
BWWBBWWWWWWWWBWWB
BWWWBWWWWWWWWWWWB
.BWWBWWWWWWWWWWWB
..BWWWWWWWWWWWWWB
..BWWWWWWWWWWWWWB
...BWWWWWWWWWWWB.
...BWWWWWWWWWWWB.
....BWWWWWWWWWB..
....BWWWWWWWWWB..
.....BWWWWWWWB...
.....BBBBBBBBB...
"""


@dataclass(frozen=True)
class CursorShape:
    """A pointer bitmap: ``grey`` (h, w) uint8 (0 outline, 255 fill), ``mask`` (h, w) bool, hotspot (x, y)."""

    name: str
    grey: np.ndarray
    mask: np.ndarray
    hotspot: tuple[int, int]

    def scaled(self, scale: int) -> CursorShape:
        """Nearest-neighbour upscaling by an integer factor (how operating systems draw large cursors)."""
        if scale == 1:
            return self
        grey = np.repeat(np.repeat(self.grey, scale, 0), scale, 1)
        mask = np.repeat(np.repeat(self.mask, scale, 0), scale, 1)
        return CursorShape(f"{self.name}@{scale}", grey, mask, (self.hotspot[0] * scale, self.hotspot[1] * scale))


def resized_shape(shape: CursorShape, scale: float, phase: tuple[float, float] = (0.0, 0.0)) -> CursorShape:
    """The pointer as it looks in a recording rescaled by ``scale`` (e.g. 0.67 for a 1080p screen in a
    720p video): area-averaged, so the outline blurs into the fill. Integer scales stay pixel-exact.

    ``phase`` (x, y), in pixels of the recording (0 to 1): where the pointer's top-left corner falls inside
    the first pixel. After a fractional rescale the same pointer blurs differently at each sub-pixel position,
    so a detector needs a few phases to match it everywhere. The hotspot is the pixel holding the centre of
    the hotspot's source pixel.
    """
    if float(scale).is_integer():
        return shape.scaled(int(scale))
    import cv2

    up = 6  # nearest upsampling, so sub-pixel shifts of 1/6 source pixel are exact
    h, w = shape.grey.shape
    ox, oy = (int(round(p / scale * up)) for p in phase)
    out_w, out_h = int(np.ceil((w + ox / up) * scale)), int(np.ceil((h + oy / up) * scale))
    big_w, big_h = int(round(out_w / scale * up)), int(round(out_h / scale * up))
    grey = np.zeros((big_h, big_w), np.float32)
    mask = np.zeros((big_h, big_w), np.float32)
    g = np.repeat(np.repeat(shape.grey.astype(np.float32) * shape.mask, up, 0), up, 1)[: big_h - oy, : big_w - ox]
    m = np.repeat(np.repeat(shape.mask.astype(np.float32), up, 0), up, 1)[: big_h - oy, : big_w - ox]
    grey[oy:oy + g.shape[0], ox:ox + g.shape[1]] = g
    mask[oy:oy + m.shape[0], ox:ox + m.shape[1]] = m
    m = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_AREA)
    g = cv2.resize(grey, (out_w, out_h), interpolation=cv2.INTER_AREA)
    out = np.clip(g / np.maximum(m, 1e-6), 0, 255).astype(np.uint8)
    hx, hy = shape.hotspot
    hotspot = (int(np.floor((hx + 0.5 + ox / up) * scale)), int(np.floor((hy + 0.5 + oy / up) * scale)))
    return CursorShape(f"{shape.name}@{scale:g}", out, m > 0.5, hotspot)


def _parse(art: str, name: str, hotspot: tuple[int, int]) -> CursorShape:
    rows = [r for r in art.strip("\n").splitlines()]
    width = max(len(r) for r in rows)
    rows = [r.ljust(width, ".") for r in rows]
    chars = np.array([list(r) for r in rows])
    grey = np.where(chars == "W", 255, 0).astype(np.uint8)
    return CursorShape(name, grey, chars != ".", hotspot)


ARROW = _parse(_ARROW, "arrow", (0, 0))
HAND = _parse(_HAND, "hand", (5, 0))
SHAPES: dict[str, CursorShape] = {"arrow": ARROW, "hand": HAND}


def cursor_scale_for(height: int) -> int:
    """The integer cursor scale a screen of this height shows (1 up to ~540 px, 2 at 720p, 3 at 1080p)."""
    return max(1, int(round(height / 360)))


def draw_cursor(frame: np.ndarray, x: int, y: int, shape: CursorShape) -> np.ndarray:
    """Draw ``shape`` onto an RGB frame in place with its hotspot at (x, y); clipped at the borders."""
    h, w = shape.grey.shape
    x0, y0 = x - shape.hotspot[0], y - shape.hotspot[1]
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(frame.shape[1], x0 + w), min(frame.shape[0], y0 + h)
    if fx1 <= fx0 or fy1 <= fy0:
        return frame
    sub_mask = shape.mask[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    sub_grey = shape.grey[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    region = frame[fy0:fy1, fx0:fx1]
    region[sub_mask] = sub_grey[sub_mask][:, None]
    return frame
