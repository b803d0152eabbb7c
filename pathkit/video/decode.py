"""Decode videos with PyAV (threaded), at an analysis rate, optionally downscaled and grey.

Every failure to read a file becomes one :class:`PathkitError` line naming the file: missing, zero-length,
not a video (corrupt header), no video stream, or truncated (decoding stops with an error part-way).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathkit.io import PathkitError


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    n_frames: int  # container estimate (exact for files pathkit writes)
    duration: float  # seconds


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.exists():
        raise PathkitError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PathkitError(f"{path}: zero-length file (0 bytes), not a video")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise PathkitError(f"{path}: cannot open as video, corrupt or truncated "
                           f"({type(err).__name__}: {err.strerror or err})") from err
    if not container.streams.video:
        container.close()
        raise PathkitError(f"{path}: no video stream in the file")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Width, height, frame rate, frame count and duration from the container (no decoding)."""
    with _open(path) as container:
        s = container.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
        duration = float(s.duration * s.time_base) if s.duration else (
            container.duration / 1e6 if container.duration else 0.0)
        n = s.frames or int(round(duration * fps))
        return VideoInfo(Path(path), s.codec_context.width, s.codec_context.height, fps, n, duration)


@dataclass
class Frame:
    index: int  # index in the source video (0-based)
    t: float  # presentation time, seconds
    image: np.ndarray  # (H, W) uint8 grey or (H, W, 3) uint8 RGB


def iter_frames(path: str | Path, fps: float | None = None, width: int | None = None, grey: bool = True,
                threads: str = "AUTO", skip_nonref: bool = True) -> Iterator[Frame]:
    """Yield decoded frames, optionally only ~``fps`` per second and resized to ``width`` (aspect kept).

    Frames skipped by the analysis rate are not converted, which is where the time goes; with
    ``skip_nonref`` and an analysis rate at most half the source rate, non-reference frames are not even
    decoded. ``grey`` converts to 8-bit luma in libswscale (cheap: it is the Y plane).
    """
    import av

    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = threads
        src_fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        step = 1.0 / fps if fps else 0.0
        if fps and skip_nonref and fps <= src_fps / 2:
            # Non-reference frames (most B-frames) are never needed to decode others: at an analysis rate
            # of half the source rate or less, skipping them costs at most a frame of timing and saves
            # roughly half the decoding work.
            stream.codec_context.skip_frame = "NONREF"
        next_t = 0.0
        out_w = out_h = None
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                t = float(frame.time) if frame.time is not None else index / src_fps
                if step and t + 1e-6 < next_t:
                    continue
                next_t = (np.floor((t + 1e-6) / step) + 1) * step if step else 0.0
                if out_w is None:
                    out_w = width or frame.width
                    out_h = int(round(frame.height * out_w / frame.width / 2)) * 2 if width else frame.height
                fmt = "gray" if grey else "rgb24"
                if (out_w, out_h) != (frame.width, frame.height):
                    img = frame.reformat(width=out_w, height=out_h, format=fmt, interpolation="AREA").to_ndarray()
                else:
                    img = frame.to_ndarray(format=fmt)
                yield Frame(int(round(t * src_fps)) if frame.time is not None else index, t, img)
        except av.error.FFmpegError as err:
            raise PathkitError(f"{path}: decoding failed after {index + 1} frames, file truncated or corrupt "
                               f"({type(err).__name__})") from err
        if index < 0:
            raise PathkitError(f"{path}: no decodable frames (truncated or empty stream)")
    finally:
        container.close()


def decode_count(path: str | Path, threads: str = "AUTO") -> int:
    """Decode every frame without converting it: the decode-only speed baseline. Returns the frame count."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = threads
        return sum(1 for _ in container.decode(stream))
    finally:
        container.close()
