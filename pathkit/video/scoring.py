"""Scoring detections against ground truth: chunk matches at a time tolerance, box IoU.

Used by the video benchmark, the tests and the notebooks, so every number is computed one way.
"""

from __future__ import annotations

from collections.abc import Sequence


def matched_chunks(detected: Sequence[tuple[float, float]], truth: Sequence[tuple[float, float]],
                   tol: float = 0.5) -> int:
    """Count true chunks matched one-to-one by a detected chunk whose start and end are both within ``tol`` s."""
    used: set[int] = set()
    hits = 0
    for start, end in truth:
        for j, (d_start, d_end) in enumerate(detected):
            if j not in used and abs(d_start - start) <= tol and abs(d_end - end) <= tol:
                used.add(j)
                hits += 1
                break
    return hits


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
