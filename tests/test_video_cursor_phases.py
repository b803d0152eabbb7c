"""A pointer downscaled from a larger screen blurs differently at each sub-pixel position: the phase templates
match it wherever it lands, and the tracker finds it, on frames rendered the way a rescaled recording is."""

from __future__ import annotations

import cv2
import numpy as np

from pathkit.video.cursor import CursorTracker, build_templates, match_template
from pathkit.video.cursor_shapes import ARROW, draw_cursor


def _rescaled_frame(screen_x: int, screen_y: int, background: np.ndarray, scale: float = 1.5) -> np.ndarray:
    """Draw the arrow on a ``scale``-times larger screen at (screen_x, screen_y), downscale by area (grey)."""
    h, w = background.shape
    screen = cv2.resize(background, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(screen[..., None], 3, 2).copy()
    draw_cursor(rgb, screen_x, screen_y, ARROW)
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)[..., 0].copy()


def test_phase_templates_match_every_subpixel_position():
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur((rng.random((120, 160)) * 120 + 70).astype(np.uint8), (0, 0), 2)
    templates = [t for t in build_templates(240, ("arrow",)) if t.name == "arrow@0.67"]
    assert len(templates) == 9
    phase0 = templates[0]
    worst_family, worst_phase0 = 1.0, 1.0
    for sx in range(60, 66):  # every screen position modulo 3, in x and y
        for sy in range(60, 66):
            frame = _rescaled_frame(sx, sy, background).astype(np.float32)
            tx, ty = int(np.floor((sx + 0.5) / 1.5)), int(np.floor((sy + 0.5) / 1.5))  # pixel holding the tip
            roi = (tx - 3, ty - 3, tx + 4, ty + 4)
            hits = [match_template(frame, t, roi) for t in templates]
            score, x, y = max(hits)
            worst_family = min(worst_family, score)
            worst_phase0 = min(worst_phase0, match_template(frame, phase0, roi)[0])
            assert abs(x - tx) <= 1 and abs(y - ty) <= 1, (sx, sy, x, y, tx, ty)
    assert worst_family > 0.9 > worst_phase0  # one phase alone misses some positions; the family none


def test_tracker_follows_a_rescaled_pointer_and_reports_nothing_once_it_is_gone():
    rng = np.random.default_rng(1)
    background = cv2.GaussianBlur((rng.random((120, 160)) * 120 + 70).astype(np.uint8), (0, 0), 2)
    tracker = CursorTracker(build_templates(240))
    path = [(40 + 5 * k, 50 + 2 * k) for k in range(30)]  # screen coordinates, every sub-pixel phase
    found = 0
    for sx, sy in path:
        hit = tracker.update(_rescaled_frame(sx, sy, background))
        tx, ty = np.floor((sx + 0.5) / 1.5), np.floor((sy + 0.5) / 1.5)
        if hit is not None:
            assert abs(hit[0] - tx) <= 1 and abs(hit[1] - ty) <= 1, (sx, sy, hit)
            found += 1
    assert found >= 27
    empty = cv2.resize(cv2.resize(background, (240, 180), interpolation=cv2.INTER_LINEAR), (160, 120),
                       interpolation=cv2.INTER_AREA)
    assert all(tracker.update(empty) is None for _ in range(12))
