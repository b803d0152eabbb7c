"""Stable chunks: spans of a lecture where the view does not change (Quilt's "static background" frames).

Quilt never released its detector. pathkit's:

1. grey frames, downscaled to ``analysis_width``, at ``analysis_fps``, lightly blurred (compression noise);
2. difference of consecutive analysis frames; only pixels that changed by more than ``pixel_threshold`` grey
   levels count (a keyframe's global flicker does not), they form connected blobs, and blobs smaller than
   ``blob_fraction`` of the frame (a moving pointer, compression noise) are masked out **before**
   averaging, so a pointer never splits a chunk;
3. an **adaptive** threshold from the video's own signal: ``median + k * MAD`` (MAD scaled to a standard
   deviation), never below ``median + min_delta`` (a perfectly static video has MAD 0);
4. a pair of frames above the threshold separates chunks; runs shorter than ``min_chunk_seconds`` (frames
   inside a pan or zoom) are dropped;
5. a representative frame per chunk: the per-pixel median of up to ``max_frames`` of its frames, with
   the detected pointer masked out of each (holes no frame fills are inpainted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pathkit.config import VideoConfig
from pathkit.video.chunk_refine import refine_chunks
from pathkit.video.decode import iter_frames, probe
from pathkit.video.frame_difference import Chunk, cursor_masked_difference, is_blank

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.


@dataclass
class ChunkDetection:
    """Chunks plus the evidence: analysis times, the difference signal and the threshold used."""

    chunks: list[Chunk]
    times: np.ndarray  # (T,) seconds of the analysis frames
    signal: np.ndarray  # (T,) difference of frame t to frame t-1 (0 for the first)
    threshold: float
    step: float  # seconds between analysis frames
    extras: dict = field(default_factory=dict)


class DifferenceSignal:
    """Streaming version of :func:`difference_signal`: ``push(frame)`` returns that frame's value, so
    a long video never has to sit in memory. It keeps a half-size copy of each analysis frame (80 x 45 at the
    default width: ~60 MB per hour at 5 frames/s) and whether it is blank, for :mod:`pathkit.video.chunk_refine`."""

    def __init__(self, pixel_threshold: float = 12.0, blob_fraction: float = 0.02, blank_std: float = 8.0):
        self.pixel_threshold, self.blob_fraction, self.blank_std = pixel_threshold, blob_fraction, blank_std
        self._prev: np.ndarray | None = None
        self.values: list[float] = []
        self.small: list[np.ndarray] = []
        self.blank: list[bool] = []

    def push(self, frame: np.ndarray) -> float:
        import cv2

        cur = cv2.GaussianBlur(frame, (3, 3), 0)
        value = 0.0 if self._prev is None else cursor_masked_difference(self._prev, cur, self.pixel_threshold,
                                                                        self.blob_fraction)
        self._prev = cur
        self.values.append(value)
        h, w = cur.shape[:2]
        self.small.append(cv2.resize(cur, (max(8, w // 2), max(8, h // 2)), interpolation=cv2.INTER_AREA))
        self.blank.append(is_blank(cur, blank_std=self.blank_std))
        return value


def difference_signal(frames, pixel_threshold: float = 12.0, blob_fraction: float = 0.02) -> np.ndarray:
    """(T,) cursor-masked difference of each frame to the previous one; 0 for the first frame."""
    return np.array(_pushed(frames, pixel_threshold, blob_fraction).values, np.float64)


def _pushed(frames, pixel_threshold: float, blob_fraction: float) -> DifferenceSignal:
    sig = DifferenceSignal(pixel_threshold, blob_fraction)
    for f in frames:
        sig.push(f)
    return sig


def adaptive_threshold(signal: np.ndarray, k: float = 6.0, min_delta: float = 1.0) -> float:
    """``median + k * 1.4826 * MAD`` of the signal (frames after the first), at least ``median + min_delta``."""
    s = np.asarray(signal[1:], np.float64)
    if s.size == 0:
        return float("inf")
    med = float(np.median(s))
    mad = float(np.median(np.abs(s - med))) * 1.4826
    return med + max(k * mad, min_delta)


def chunks_from_signal(times: np.ndarray, signal: np.ndarray, threshold: float, step: float,
                       min_seconds: float, duration: float | None = None) -> list[Chunk]:
    """Runs of analysis frames joined by below-threshold differences, at least ``min_seconds`` long."""
    T = len(times)
    if T == 0:
        return []
    moving = np.asarray(signal) > threshold
    end_cap = duration if duration is not None else float(times[-1]) + step
    chunks, j = [], 0
    for i in range(1, T + 1):
        if i == T or moving[i]:  # pair (i-1, i) changes: the run j..i-1 ends here
            start, end = float(times[j]), min(float(times[i - 1]) + step, end_cap)
            if end - start >= min_seconds - 1e-6:
                chunks.append(Chunk(start, end))
            j = i
    return chunks


def stable_chunks(path: str | Path | None = None, cfg: VideoConfig | None = None, *,
                  times: np.ndarray | None = None, frames=None, signal: np.ndarray | None = None,
                  duration: float | None = None, pixel_threshold: float = 12.0, blob_fraction: float = 0.02,
                  min_delta: float = 1.0, progress: bool = False, stream: DifferenceSignal | None = None,
                  refine: bool = True) -> ChunkDetection:
    """Detect stable chunks of a video file (or of already decoded small grey ``frames`` at ``times``, or
    of an already computed difference ``signal`` at ``times``, or of a filled ``stream`` at ``times``).

    With ``refine`` (and frames to look at), :func:`pathkit.video.chunk_refine.refine_chunks` masks a webcam
    box, splits slow crossfades and pans and drops blank spans.
    Returns a :class:`ChunkDetection` whose ``chunks`` are ``[start, end]`` seconds.
    """
    cfg = cfg or VideoConfig()
    if stream is not None:
        signal = np.array(stream.values, np.float64)
    elif frames is None and signal is None:  # stream: decode, downscale and difference one frame at a time
        info = probe(path)
        stream = DifferenceSignal(pixel_threshold, blob_fraction)
        times_list = []
        frames_iter = iter_frames(path, fps=cfg.analysis_fps, width=cfg.analysis_width, grey=True)
        if progress:
            frames_iter = tqdm(frames_iter, total=int(info.duration * cfg.analysis_fps) + 1, unit="frame",
                               desc=f"chunks {Path(path).name}")
        for f in frames_iter:
            times_list.append(f.t)
            stream.push(f.image)
        times, signal = np.array(times_list), np.array(stream.values, np.float64)
        duration = duration or (info.n_frames / info.fps)
    elif signal is None:
        stream = _pushed(frames, pixel_threshold, blob_fraction)
        signal = np.array(stream.values, np.float64)
    times = np.asarray(times, np.float64)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / cfg.analysis_fps
    if refine and stream is not None and len(stream.small) == len(times) > 1:
        chunks, signal, thr, extras = refine_chunks(
            times, signal, stream.small, stream.blank, lambda s: adaptive_threshold(s, cfg.mad_k, min_delta), step,
            cfg.min_chunk_seconds, duration, pixel_threshold, blob_fraction)
        return ChunkDetection(chunks, times, signal, thr, step, extras)
    thr = adaptive_threshold(signal, cfg.mad_k, min_delta)
    chunks = chunks_from_signal(times, signal, thr, step, cfg.min_chunk_seconds, duration)
    return ChunkDetection(chunks, times, signal, thr, step)


def cursor_mask(shape_hw: tuple[int, int], x: float, y: float, pad: int = 3,
                cursor_hw: tuple[int, int] = (20, 17)) -> tuple[slice, slice]:
    """Frame slices covering a pointer whose hotspot is at (x, y) (pointers extend down and right)."""
    h, w = shape_hw
    ch, cw = cursor_hw
    y0, y1 = max(0, int(y) - pad - 2), min(h, int(y) + ch + pad)
    x0, x1 = max(0, int(x) - pad - 6), min(w, int(x) + cw + pad)
    return slice(y0, y1), slice(x0, x1)


def median_frame(frames: list[np.ndarray], cursor_xy: list[tuple[float, float] | None] | None = None,
                 cursor_hw: tuple[int, int] = (20, 17)) -> np.ndarray:
    """Per-pixel median of RGB frames with the pointer (hotspot per frame, or None) masked out of each.

    Pixels masked in every frame (a pointer that never moved) are inpainted from their surroundings.
    """
    import cv2

    stack = np.stack(frames).astype(np.float32)  # (N, H, W, 3)
    if cursor_xy is not None:
        for k, xy in enumerate(cursor_xy):
            if xy is not None:
                ys, xs = cursor_mask(stack.shape[1:3], xy[0], xy[1], cursor_hw=cursor_hw)
                stack[k, ys, xs] = np.nan
    # nan-aware median by sorting (NaNs sort last): much faster than np.nanmedian on image stacks
    valid = (~np.isnan(stack)).sum(axis=0)  # (H, W, 3)
    stack.sort(axis=0)
    lo = np.clip((valid - 1) // 2, 0, len(stack) - 1)
    hi = np.clip(valid // 2, 0, len(stack) - 1)
    med = 0.5 * (np.take_along_axis(stack, lo[None], 0)[0] + np.take_along_axis(stack, hi[None], 0)[0])
    med[valid == 0] = np.nan
    holes = np.isnan(med).any(axis=2)
    med = np.nan_to_num(med, nan=0.0)
    out = np.clip(med + 0.5, 0, 255).astype(np.uint8)
    if holes.any():
        out = cv2.inpaint(out, holes.astype(np.uint8), 5, cv2.INPAINT_TELEA)
    return out


def representative_frames(path: str | Path, chunks: list[Chunk], cursor_rows: list[dict] | None = None,
                          max_frames: int = 25, cursor_hw: tuple[int, int] = (20, 17)) -> list[np.ndarray]:
    """One RGB representative frame per chunk (one extra decoding pass over the video)."""
    fps = probe(path).fps
    wanted: dict[int, int] = {}  # frame index -> chunk
    for c, ch in enumerate(chunks):
        first, last = int(round(ch.start * fps)), max(int(round(ch.end * fps)) - 1, int(round(ch.start * fps)))
        for idx in np.unique(np.linspace(first, last, min(max_frames, last - first + 1)).round().astype(int)):
            wanted[int(idx)] = c
    by_t = {}
    if cursor_rows:
        by_t = {int(round(r["t"] * fps)): (r["x"], r["y"]) for r in cursor_rows}
    frames: list[list[np.ndarray]] = [[] for _ in chunks]
    xy: list[list] = [[] for _ in chunks]
    for f in iter_frames(path, grey=False):
        c = wanted.get(f.index)
        if c is not None:
            frames[c].append(f.image)
            xy[c].append(by_t.get(f.index))
    return [median_frame(fr, x if cursor_rows is not None else None, cursor_hw) for fr, x in zip(frames, xy)]
