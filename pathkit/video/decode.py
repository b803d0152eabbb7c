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

# Lazy imports: av (PyAV, FFmpeg's libraries); cv2 (OpenCV, ~0.3 s). They load inside the functions that need
# them, not when this module is imported.


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


# 8-bit formats whose first plane is the luma (Y) plane, one byte per pixel
_LUMA_PLANE_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p",
                                 "yuvj440p", "yuv411p", "yuvj411p", "yuv410p", "nv12", "nv21", "gray"})
# limited ("TV", 16-235) luma to full-range grey, rounded as libswscale rounds it
_TV_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def _luma_plane(frame) -> np.ndarray:
    """(H, W) uint8 view of a decoded frame's Y plane (no copy; rows are ``line_size`` apart)."""
    plane = frame.planes[0]
    buf = np.frombuffer(plane, np.uint8, count=plane.line_size * plane.height)
    return buf.reshape(plane.height, plane.line_size)[:, :plane.width]


class GreyReader:
    """Grey frames the way libswscale makes them (``frame.to_ndarray(format="gray")``), about 20x cheaper.

    libswscale's grey is the luma plane, stretched from limited range (16-235) to 0-255 unless the video is
    full range. A frame is converted both ways and the cheap way (a view of the Y plane, through a
    256-entry lookup table or as is) is used only if it gives libswscale's pixels exactly (checked once per
    pixel format, colour range and colour space); other pixel formats (10-bit, RGB, ...) keep using
    libswscale. Downscaling is OpenCV's area average.
    """

    # (pixel format, colour range, colour space) -> (direct, lut): checked once per process (libswscale's
    # first grey conversion costs about a millisecond)
    _decided: dict[tuple, tuple[bool, np.ndarray | None]] = {}

    def __init__(self):
        self.lut: np.ndarray | None = None
        self.direct: bool | None = None  # None: not decided yet

    def _decide(self, frame) -> None:
        """Settle ``direct`` and ``lut`` for this video (left undecided while a frame cannot tell)."""
        key = (frame.format.name, int(frame.color_range), int(frame.colorspace))
        if key not in self._decided:
            verdict = self._check(frame)
            if verdict is None:
                return
            self._decided[key] = verdict
        self.direct, self.lut = self._decided[key]

    @staticmethod
    def _check(frame) -> tuple[bool, np.ndarray | None] | None:
        """(direct, lut) that reproduces libswscale's grey of ``frame``; None if the frame cannot tell which
        (a flat black frame of a full-range video is the same through the table and without it)."""
        if frame.format.name not in _LUMA_PLANE_FORMATS:
            return False, None
        reference = frame.to_ndarray(format="gray")
        try:
            luma = _luma_plane(frame)
        except ValueError:  # a plane buffer shorter than line_size x height: keep libswscale
            return False, None
        exact = [lut for lut in (_TV_TO_FULL, None) if np.array_equal(luma if lut is None else lut[luma], reference)]
        if len(exact) == 2:
            return None
        return (True, exact[0]) if exact else (False, None)

    def __call__(self, frame, width: int, height: int) -> np.ndarray:
        import cv2

        if self.direct is None:
            self._decide(frame)
        if not self.direct:  # libswscale (also while undecided)
            if (width, height) == (frame.width, frame.height):
                return frame.to_ndarray(format="gray")
            return frame.reformat(width=width, height=height, format="gray", interpolation="AREA").to_ndarray()
        luma = _luma_plane(frame)
        if (width, height) != (frame.width, frame.height):
            small = cv2.resize(luma, (width, height), interpolation=cv2.INTER_AREA)
            return small if self.lut is None else cv2.LUT(small, self.lut)
        return luma.copy() if self.lut is None else cv2.LUT(luma, self.lut)


def iter_frames(path: str | Path, fps: float | None = None, width: int | None = None, grey: bool = True,
                threads: str = "AUTO", skip_nonref: bool = True) -> Iterator[Frame]:
    """Yield decoded frames, optionally only ~``fps`` per second and resized to ``width`` (aspect kept).

    Frames skipped by the analysis rate are not converted, which is where the time goes; with
    ``skip_nonref`` and an analysis rate at most half the source rate, non-reference frames are not even
    decoded. ``grey`` gives libswscale's 8-bit grey, read straight from the decoded luma plane where that is
    exact (see :class:`GreyReader`); ``width`` then downscales with OpenCV's area filter.
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
        grey_reader = GreyReader() if grey else None
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
                if grey_reader is not None:
                    img = grey_reader(frame, out_w, out_h)
                elif (out_w, out_h) != (frame.width, frame.height):
                    img = frame.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA").to_ndarray()
                else:
                    img = frame.to_ndarray(format="rgb24")
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
