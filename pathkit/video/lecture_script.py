"""Lecture content for real screencasts: a script of views and transitions, rendered frame by frame.

A *view* is a window onto a source canvas: ``(source, cx, cy, zoom)`` shows a ``W/zoom x H/zoom`` window
centred at ``(cx, cy)`` of a 1024 px canvas. Sources: ``ihc`` (scikit-image's real IHC image), ``tissue``
(pathkit's procedural tissue), ``slide:<title>|<bullet>|...`` (a text slide; ``slide:<...>#k`` shows its first
``k`` bullets, a slide build), ``black`` (a blank screen, not content).

Segments, played in order: ``hold`` (a stable view), ``fade`` (crossfade from one view to the next),
``move`` (a pan and/or zoom between two views of one source, eased). A hold directly after a hold is a cut.
With ``webcam`` the lecturer's face moves in a small picture-in-picture box at the bottom right all along.

The ground-truth chunks are the holds of content (not ``black``) in script time, as ``[start, end]`` seconds.
Rendering is numpy + OpenCV only, so the screencast player (a separate X client) can draw any time ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pathkit.synthetic.video import ihc_background, synthetic_background

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.

CANVAS = 1024


@dataclass(frozen=True)
class View:
    source: str
    cx: float = CANVAS / 2
    cy: float = CANVAS / 2
    zoom: float = 1.0


@dataclass(frozen=True)
class Segment:
    kind: str  # "hold" | "fade" | "move"
    duration: float
    a: View
    b: View | None = None  # the view a fade or move ends on

    def to_json(self) -> dict:
        return {"kind": self.kind, "duration": self.duration, "a": self.a.__dict__,
                "b": None if self.b is None else self.b.__dict__}

    @staticmethod
    def from_json(d: dict) -> Segment:
        return Segment(d["kind"], float(d["duration"]), View(**d["a"]), None if d["b"] is None else View(**d["b"]))


def _text_slide(spec: str) -> np.ndarray:
    """A white slide with a title and bullets (OpenCV's Hershey fonts: no font files needed)."""
    import cv2

    spec, _, shown = spec.partition("#")
    title, *bullets = spec.split("|")
    if shown:
        bullets = bullets[: int(shown)]
    img = np.full((CANVAS, CANVAS, 3), 250, np.uint8)
    cv2.rectangle(img, (0, 0), (CANVAS, 150), (40, 60, 120), -1)
    cv2.putText(img, title, (50, 105), cv2.FONT_HERSHEY_DUPLEX, 2.2, (255, 255, 255), 3, cv2.LINE_AA)
    for i, b in enumerate(bullets):
        y = 260 + 130 * i
        cv2.circle(img, (70, y - 18), 12, (40, 60, 120), -1)
        cv2.putText(img, b, (110, y), cv2.FONT_HERSHEY_SIMPLEX, 1.9, (20, 20, 20), 3, cv2.LINE_AA)
    return img


@lru_cache(maxsize=16)
def source_canvas(source: str) -> np.ndarray:
    """The 1024 x 1024 RGB canvas of a source name."""
    if source == "black":
        return np.zeros((CANVAS, CANVAS, 3), np.uint8)
    if source == "ihc":
        return ihc_background(CANVAS, CANVAS)[0]
    if source.startswith("tissue"):
        seed = int(source[6:] or 0)
        return synthetic_background(CANVAS, CANVAS, np.random.default_rng(seed))[0]
    if source.startswith("slide:"):
        return _text_slide(source[6:])
    raise ValueError(f"unknown lecture source {source!r}")


def render_view(v: View, size: tuple[int, int]) -> np.ndarray:
    """The frame (H, W, 3) a view shows at ``size`` (W, H)."""
    import cv2

    w, h = size
    s = v.zoom * max(w, h) / CANVAS  # zoom 1: the canvas's width fills the frame's longer side
    m = np.array([[s, 0, w / 2 - s * v.cx], [0, s, h / 2 - s * v.cy]], np.float32)
    return cv2.warpAffine(source_canvas(v.source), m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _ease(u: float) -> float:
    return 4 * u**3 if u < 0.5 else 1 - (-2 * u + 2) ** 3 / 2


def _webcam(frame: np.ndarray, t: float) -> None:
    """A picture-in-picture box at the bottom right with a face that sways and nods (persistent motion)."""
    import cv2

    h, w = frame.shape[:2]
    bw, bh = w // 6, h // 5
    x0, y0 = w - bw - 8, h - bh - 8
    box = frame[y0:y0 + bh, x0:x0 + bw]
    box[:] = (70, 80, 95)
    cx = int(bw / 2 + 0.15 * bw * np.sin(2 * np.pi * 0.7 * t))
    cy = int(bh / 2 + 0.08 * bh * np.sin(2 * np.pi * 1.3 * t))
    r = bh // 3
    cv2.ellipse(box, (cx, cy + r + 4), (int(r * 1.4), r), 0, 180, 360, (50, 50, 140), -1)
    cv2.ellipse(box, (cx, cy), (int(r * 0.8), r), 0, 0, 360, (190, 160, 140), -1)
    open_mouth = int(2 + 3 * abs(np.sin(2 * np.pi * 3.1 * t)))
    cv2.ellipse(box, (cx, cy + r // 2), (r // 3, open_mouth), 0, 0, 360, (80, 30, 30), -1)
    for dx in (-r // 3, r // 3):
        cv2.circle(box, (cx + dx, cy - r // 4), max(2, r // 8), (30, 30, 30), -1)


@dataclass
class Lecture:
    segments: list[Segment]
    webcam: bool = False

    @property
    def duration(self) -> float:
        return float(sum(s.duration for s in self.segments))

    def frame(self, t: float, size: tuple[int, int]) -> np.ndarray:
        """The RGB frame shown at script time ``t`` (the last segment's end view after the end)."""
        t0 = 0.0
        seg = self.segments[-1]
        u = 1.0
        for s in self.segments:
            if t < t0 + s.duration:
                seg, u = s, (t - t0) / s.duration
                break
            t0 += s.duration
        if seg.kind == "hold":
            out = render_view(seg.a, size)
        elif seg.kind == "fade":
            a, b = render_view(seg.a, size).astype(np.float32), render_view(seg.b, size).astype(np.float32)
            out = np.clip(a + (b - a) * u + 0.5, 0, 255).astype(np.uint8)
        elif seg.kind == "move":
            e = _ease(u)
            v = View(seg.a.source, *(pa + (pb - pa) * e for pa, pb in
                                      ((seg.a.cx, seg.b.cx), (seg.a.cy, seg.b.cy), (seg.a.zoom, seg.b.zoom))))
            out = render_view(v, size)
        else:
            raise ValueError(f"unknown segment kind {seg.kind!r}")
        if self.webcam:
            out = out.copy()
            _webcam(out, t)
        return out

    def chunks(self) -> list[tuple[float, float]]:
        """Ground-truth stable chunks: the holds of content, ``[start, end]`` in script seconds."""
        out, t0 = [], 0.0
        for s in self.segments:
            if s.kind == "hold" and s.a.source != "black":
                out.append((round(t0, 4), round(t0 + s.duration, 4)))
            t0 += s.duration
        return out

    def to_json(self) -> dict:
        return {"segments": [s.to_json() for s in self.segments], "webcam": self.webcam}

    @staticmethod
    def from_json(d: dict) -> Lecture:
        return Lecture([Segment.from_json(s) for s in d["segments"]], bool(d.get("webcam", False)))


def demo_lecture(seed: int = 0, webcam: bool = False, short: bool = False, fade: float | None = None) -> Lecture:
    """A lecture with every kind of transition: a slide build, a crossfade (0.5 to 2 s) between two similar
    views, a cut, a slow pan + zoom, a black gap. ``seed`` varies places and the fade's length; ~17 s long
    (``short``: the build, the crossfade, a black gap and a cut, ~9 s). Every hold lasts at least 1.4 s, so
    it is a stable chunk at the default ``min_chunk_seconds`` (1 s) even when analysis frames jitter.
    ``fade``: the crossfade's length in seconds (default: drawn from the seed)."""
    rng = np.random.default_rng(seed)
    tissue = f"tissue{seed}"
    slide = "slide:Immunohistochemistry|DAB marks the antigen|Hematoxylin: nuclei"

    def spot(src: str, zoom: float) -> View:
        return View(src, float(rng.uniform(350, 674)), float(rng.uniform(350, 674)), zoom)

    a = spot("ihc", 2.0)
    a2 = View("ihc", a.cx + rng.uniform(40, 70), a.cy + rng.uniform(-40, 40), 2.0)  # a similar, nearby view
    b = spot(tissue, 1.6)
    b2 = View(tissue, b.cx + rng.uniform(-150, 150), b.cy + rng.uniform(60, 120), 2.4)
    fade = round(float(rng.uniform(0.5, 2.0)), 2) if fade is None else fade
    if short:
        return Lecture([
            Segment("hold", 1.6, View(slide + "#1", cy=300)),
            Segment("hold", 1.5, View(slide + "#2", cy=300)),  # slide build: a bullet appears
            Segment("hold", 1.6, a),
            Segment("fade", fade, a, a2),
            Segment("hold", 1.6, a2),
            Segment("hold", 0.6, View("black")),
            Segment("hold", 1.6, b),
        ], webcam)
    return Lecture([
        Segment("hold", 1.8, View(slide + "#1", cy=300)),
        Segment("hold", 1.6, View(slide + "#2", cy=300)),  # slide build: a bullet appears
        Segment("hold", 1.8, a),
        Segment("fade", fade, a, a2),  # crossfade between two similar views
        Segment("hold", 1.8, a2),
        Segment("hold", 1.8, b),  # cut
        Segment("move", 1.5, b, b2),  # slow pan + zoom
        Segment("hold", 1.8, b2),
        Segment("hold", 0.8, View("black")),  # blank gap: not a chunk
        Segment("hold", 1.8, spot("ihc", 3.0)),
    ], webcam)
