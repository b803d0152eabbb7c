"""A lecture script (:mod:`pathkit.video.lecture_script`) written straight to a video file, no X server: the
synthetic cases of what real lectures do between stable views (crossfades of 0.5 to 2 s between similar views,
slow pans and zooms, a webcam picture-in-picture with a moving face, slide builds, black gaps).

The pointer is pathkit's own pixel art (:mod:`pathkit.video.cursor_shapes`), gliding between random rests; the
ground truth is the script's content holds, in video seconds (the last hold runs to the end of the video).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from pathkit.io import atomic_path
from pathkit.video.cursor_shapes import ARROW, cursor_scale_for, draw_cursor
from pathkit.video.lecture_script import Lecture

# Lazy imports: av (PyAV, FFmpeg's libraries). It loads inside the function that writes a video, not when this
# module is imported.


def pointer_path(n_frames: int, fps: float, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(n_frames, 2) pointer hotspots: rests of 0.5 to 2 s joined by 0.2 to 0.6 s glides."""
    w, h = size
    out = np.zeros((n_frames, 2))
    k, here = 0, rng.uniform([0.1 * w, 0.1 * h], [0.85 * w, 0.85 * h])
    while k < n_frames:
        rest = int(rng.uniform(0.5, 2.0) * fps)
        out[k:k + rest] = here
        k += rest
        there = rng.uniform([0.1 * w, 0.1 * h], [0.85 * w, 0.85 * h])
        glide = max(1, int(rng.uniform(0.2, 0.6) * fps))
        u = np.linspace(0, 1, glide, endpoint=False)[:, None]
        out[k:k + glide] = (here + (there - here) * u)[: max(0, n_frames - k)]
        k, here = k + glide, there
    return out


def write_lecture_video(path: str | Path, lecture: Lecture, size: tuple[int, int] = (320, 180), fps: float = 25.0,
                        crf: int = 28, seed: int = 0) -> list[tuple[float, float]]:
    """Render ``lecture`` with a moving pointer to an x264 mp4 at ``path``; returns the true chunks (seconds)."""
    import av

    path = Path(path)
    n = int(round(lecture.duration * fps))
    xy = pointer_path(n, fps, size, np.random.default_rng([seed, 7]))
    shape = ARROW.scaled(cursor_scale_for(size[1]))
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            for k in range(n):
                frame = np.ascontiguousarray(lecture.frame(k / fps, size))
                draw_cursor(frame, int(xy[k, 0]), int(xy[k, 1]), shape)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    duration = n / fps
    return [(a, duration if b >= lecture.duration - 0.5 / fps else b) for a, b in lecture.chunks()]
