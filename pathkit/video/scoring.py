"""Scoring detections against ground truth: chunk matches at a time tolerance, box IoU.

Used by the video benchmark, the tests and the notebooks, so every number is computed one way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def precision_recall_f1(hits: int, n_detected: int, n_true: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from match counts (nothing to find and nothing found scores 1)."""
    p = hits / n_detected if n_detected else (1.0 if n_true == 0 else 0.0)
    r = hits / n_true if n_true else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def transitions(chunks: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The gaps between consecutive chunks: a cut has zero length, a pan or crossfade its span."""
    return [(chunks[i][1], chunks[i + 1][0]) for i in range(len(chunks) - 1)]


def chunk_scores(detected: Sequence[tuple[float, float]], truth: Sequence[tuple[float, float]],
                 tol: float = 0.5) -> dict[str, float]:
    """Chunks and the transitions between them scored against ground truth at ``tol`` s: match counts (to pool
    over videos) and this video's precision, recall and F1."""
    hits = matched_chunks(detected, truth, tol)
    p, r, f = precision_recall_f1(hits, len(detected), len(truth))
    gap_hits = matched_chunks(transitions(detected), transitions(truth), tol)
    return {"hits": hits, "detected": len(detected), "true": len(truth), "precision": p, "recall": r, "f1": f,
            "transition_hits": gap_hits, "transitions_detected": max(0, len(detected) - 1),
            "transitions_true": max(0, len(truth) - 1)}


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pointer_scores(truth_xy, ambiguous, detected_xy, within: float = 8.0) -> dict[str, float]:
    """Pointer detection per frame against ground truth; frames flagged ``ambiguous`` are left out.

    ``truth_xy`` and ``detected_xy``: (N, 2) hotspots with NaN rows where there is none. Returns recall (a
    detection within ``within`` px of a visible pointer), median and 95th-percentile hotspot error over those
    frames' detections, and the false detection rate over frames without a pointer.
    """
    truth_xy, detected_xy = np.asarray(truth_xy, float), np.asarray(detected_xy, float)
    keep = ~np.asarray(ambiguous, bool)
    visible = keep & np.isfinite(truth_xy[:, 0])
    hidden = keep & ~np.isfinite(truth_xy[:, 0])
    found = np.isfinite(detected_xy[:, 0])
    err = np.hypot(*(detected_xy - truth_xy).T)
    hit = visible & found & (err <= within)
    errs = err[visible & found]
    return {
        "recall": float(hit.sum() / max(1, visible.sum())),
        "median_error_px": float(np.median(errs)) if errs.size else float("nan"),
        "p95_error_px": float(np.percentile(errs, 95)) if errs.size else float("nan"),
        "false_detection_rate": float((hidden & found).sum() / max(1, hidden.sum())),
        "visible_frames": int(visible.sum()),
        "hidden_frames": int(hidden.sum()),
        "ambiguous_frames": int((~keep).sum()),
    }


def per_frame_detections(rows, times):
    """Pointer rows (``{"t", "x", "y", ...}``, frame order) as one (x, y) row per frame of ``times``, NaN where
    none; two frames with the same time stamp (x11grab can stamp two grabs alike) each keep their own row."""
    times = np.asarray(times, float)
    out = np.full((len(times), 2), np.nan)
    i = 0
    for r in rows:
        while i < len(times) and times[i] < r["t"] - 5e-4:
            i += 1
        if i == len(times):
            break
        if abs(times[i] - r["t"]) <= 5e-4:
            out[i] = r["x"], r["y"]
            i += 1
    return out
