"""Second look at stable chunks, on the small analysis frames kept from the one decoding pass.

Frame-to-frame differencing (:mod:`pathkit.video.chunks`) misses what real lectures do slowly or in a corner:

* **persistent motion in a small region** (a webcam picture-in-picture with a moving face): pixels that change
  in more than ``persistent_fraction`` of frame pairs, if they cover less than ``max_persistent_area`` of the
  frame, are masked out and the difference signal is recomputed without them;
* **slow transitions** (a 0.5-2 s crossfade between two similar views, a slow pan or zoom) whose every step
  stays under the threshold: a chunk whose first and last frames differ is split into the frames that still
  look like its first frame and those that already look like its last, the frames in between being the
  transition (recursively, so a pan followed by a hold is cut right). "Looks like" is two tests: few pixels
  changed clearly, and the frame has not begun to blend towards the other end (:func:`blend_fraction`: the
  first third of a slow fade between similar views changes every pixel, but each by less than the threshold);
* **the start of an eased transition**: an eased pan or zoom barely moves in its first few tenths of a second
  and a crossfade between similar views changes every pixel by less than the threshold at first, so the pair
  that crosses it comes up to half a second late; the frames at a chunk's end that already differ faintly,
  frame-wide, from its middle are cut off (:func:`transition_onset`);
* **blank frames** (black or uniform screens between sections): a chunk whose frames are mostly blank is no
  chunk of content and is dropped.
"""

from __future__ import annotations

import numpy as np

from pathkit.video.frame_difference import Chunk, cursor_masked_difference, is_blank, spread_change

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.


def persistent_motion_mask(small: list[np.ndarray], pixel_threshold: float = 12.0, persistent_fraction: float = 0.2,
                           max_persistent_area: float = 0.15) -> np.ndarray | None:
    """uint8 map (1 = ignore) of a small region that keeps changing all video long, or None."""
    import cv2

    if len(small) < 10:
        return None
    count = np.zeros(small[0].shape, np.float32)
    for a, b in zip(small[:-1], small[1:]):
        count += cv2.absdiff(a, b) > pixel_threshold
    busy = (count / (len(small) - 1) > persistent_fraction).astype(np.uint8)
    if not busy.any():
        return None
    busy = cv2.dilate(busy, np.ones((5, 5), np.uint8))
    x, y, w, h = cv2.boundingRect(busy)
    if w * h > max_persistent_area * busy.size:
        return None  # the whole view keeps changing (a video inside the lecture): nothing to mask
    mask = np.zeros_like(busy)
    mask[y:y + h, x:x + w] = 1  # the whole box: the face moves around inside it
    return mask


def masked_signal(small: list[np.ndarray], mask: np.ndarray, pixel_threshold: float = 12.0,
                  blob_fraction: float = 0.02) -> np.ndarray:
    """The cursor-masked difference signal of the small frames, with ``mask`` pixels held still."""
    keep = mask == 0
    values = [0.0]
    for a, b in zip(small[:-1], small[1:]):
        values.append(cursor_masked_difference(np.where(keep, a, 0).astype(a.dtype), np.where(keep, b, 0).astype(b.dtype),
                                               pixel_threshold, blob_fraction))
    return np.array(values, np.float64)


def blend_fraction(frame: np.ndarray, a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None,
                   min_contrast: float = 16.0) -> float:
    """Where ``frame`` lies between views ``a`` (0) and ``b`` (1): the median, over the pixels where the two
    differ clearly, of how far each pixel has moved from ``a`` towards ``b`` (a crossfade moves all of them
    together; a pointer or noise moves few, so the median ignores them). NaN when the views hardly differ."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    span = b32 - a32
    sel = np.abs(span) >= min_contrast
    if keep is not None:
        sel &= keep
    if sel.sum() < 20:
        return float("nan")
    return float(np.median((frame.astype(np.float32)[sel] - a32[sel]) / span[sel]))


def split_drifting(i0: int, i1: int, small: list[np.ndarray], threshold: float, mask: np.ndarray | None,
                   pixel_threshold: float = 12.0, blob_fraction: float = 0.02, depth: int = 0,
                   blend_tolerance: float = 0.12) -> list[tuple[int, int]]:
    """Runs ``(first, last)`` of analysis frames inside the run ``i0..i1`` whose ends look alike."""
    keep = None if mask is None else mask == 0

    def diff(i: int, j: int) -> float:
        a, b = small[i], small[j]
        if keep is not None:
            a, b = np.where(keep, a, 0).astype(a.dtype), np.where(keep, b, 0).astype(b.dtype)
        # any small change is the pointer here (two of its positions, seconds apart, may join into one long
        # blob); a slow transition changes most of the view
        return cursor_masked_difference(a, b, pixel_threshold, blob_fraction, max_blob_extent=1.0)

    if i1 - i0 < 2 or depth > 8 or diff(i0, i1) <= threshold:
        return [(i0, i1)]
    # a frame is like an end when it differs little from it and has not begun to blend towards the other end
    # (the first part of a slow crossfade between similar views changes every pixel, each by too little)
    u = [blend_fraction(small[i], small[i0], small[i1], keep) for i in range(i0, i1 + 1)]
    like_first = [diff(i0, i) <= threshold and not u[i - i0] > blend_tolerance for i in range(i0, i1 + 1)]
    like_last = [diff(i, i1) <= threshold and not u[i - i0] < 1 - blend_tolerance for i in range(i0, i1 + 1)]
    p = i0 + (like_first.index(False) - 1 if False in like_first else i1 - i0)  # last frame like the first
    s = i0 + (len(like_last) - like_last[::-1].index(False) if False in like_last else 0)  # first like the last
    if s <= p:  # frames s..p look like both ends (a fade's faint tail): they belong to the later view
        p = s - 1
    args = (small, threshold, mask, pixel_threshold, blob_fraction, depth + 1, blend_tolerance)
    out = split_drifting(i0, p, *args) if p >= i0 else []
    if s <= i1:
        out += split_drifting(s, i1, *args)
    return out


def transition_onset(i0: int, i1: int, small: list[np.ndarray], mask: np.ndarray | None, max_cut: int = 3,
                     min_spread: float = 0.05) -> int:
    """The last frame of the still run ``i0..i1`` before the transition that follows it began.

    Frames at the run's end whose faint, frame-wide change from the run's middle frame
    (:func:`pathkit.video.frame_difference.spread_change`) is more than twice that of any frame of the run's
    middle half (its noise), and more than ``min_spread`` of the frame, are the transition's start. (A large
    pointer at two places, joined into one blob, can cover up to twice the pointer blob size, 2 %: hence 5 %.)
    At most ``max_cut`` frames are cut, never one before the middle: a transition's faint start is short (the
    family's eased moves and fades: 0.15-0.4 s), while a view that drifts slowly all along (a camera's exposure)
    must not lose more.
    """
    n = i1 - i0 + 1
    if n < 5:
        return i1
    keep = None if mask is None else mask == 0

    def spread(i: int, j: int) -> float:
        a, b = small[i], small[j]
        if keep is not None:
            a, b = np.where(keep, a, 0).astype(a.dtype), np.where(keep, b, 0).astype(b.dtype)
        return spread_change(a, b)

    mid = i0 + n // 2
    if spread(mid, i1) <= min_spread:  # the usual case: the run's last frame still shows its view
        return i1
    noise = max(spread(mid, i) for i in range(i0 + n // 4, i0 + (3 * n) // 4 + 1))
    level = max(min_spread, 2 * noise)
    last = i1
    while i1 > max(mid, last - max_cut) and spread(mid, i1) > level:
        i1 -= 1
    return i1


def refine_chunks(times: np.ndarray, signal: np.ndarray, small: list[np.ndarray], blank: list[bool],
                  threshold_fn, step: float, min_seconds: float, duration: float | None,
                  pixel_threshold: float = 12.0, blob_fraction: float = 0.02,
                  max_onset_seconds: float = 0.6) -> tuple[list[Chunk], np.ndarray, float, dict]:
    """Chunks after masking persistent motion, splitting slow transitions, ending chunks where the transition
    after them began (at most ``max_onset_seconds`` earlier) and dropping blank spans.

    ``threshold_fn(signal)`` is the adaptive threshold. Returns ``(chunks, signal, threshold, extras)``.
    """
    mask = persistent_motion_mask(small, pixel_threshold)
    extras: dict = {"persistent_mask_fraction": 0.0 if mask is None else float(mask.mean())}
    if mask is not None:
        signal = masked_signal(small, mask, pixel_threshold, blob_fraction)
        blank = [is_blank(f, mask == 0) for f in small]  # a black screen with the webcam box on it is blank
    thr = threshold_fn(signal)
    moving = np.asarray(signal) > thr
    end_cap = duration if duration is not None else float(times[-1]) + step
    runs, j = [], 0
    for i in range(1, len(times) + 1):
        if i == len(times) or moving[i]:
            runs.append((j, i - 1))
            j = i
    chunks = []
    for a, b in runs:
        for p, q in split_drifting(a, b, small, thr, mask, pixel_threshold, blob_fraction):
            if q < len(times) - 1:  # a transition follows: end the chunk where it began
                q = transition_onset(p, q, small, mask, max(1, int(round(max_onset_seconds / step))))
            if np.mean(blank[p:q + 1]) > 0.5:
                continue
            start, end = float(times[p]), min(float(times[q]) + step, end_cap)
            if end - start >= min_seconds - 1e-6:
                chunks.append(Chunk(start, end))
    return chunks, signal, thr, extras
