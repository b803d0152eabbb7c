"""Ground speech in the image the Quilt way: cluster the pointer trace, box the clusters, attach utterances.

This follows Quilt-LLaVA's released ``cluster_singlerow.py`` (see reference/seed-systems.md 2.2):

1. each trace point (t seconds from the chunk start, x and y normalised to 0-1) gets the weight
   ``w = exp(-0.2 t)``; the clustering features are ``(x * w, y * w)``;
2. ``k`` comes from the caption's word count: <= 10 -> 1, <= 40 -> 2, <= 60 -> 3, more -> 4;
   ``KMeans(n_clusters=k, n_init=k)``;
3. inside each cluster, points outside 1.5 x IQR (on pixel x and y) are removed;
4. each cluster's box is the extent of its remaining points; boxes whose normalised area is < 0.02 or
   > 0.7 are dropped;
5. each utterance goes to the (kept) cluster whose mean time is closest to the utterance's end time;
   clusters holding <= 3 words are merged into the neighbouring cluster with more words, repeatedly;
6. the text given to the LLM is ``"<utterances> [x1, y1, x2, y2], ..."`` (2 decimals, clipped to 0-1),
   or the raw caption when every cluster was dropped.

Heat maps (described in the paper, not in the released code) are Gaussian-smoothed dwell maps: every
trace point adds its dwell time at its pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pathkit.video.transcript import Utterance

# Lazy imports: sklearn (scikit-learn, ~1.4 s); cv2 (OpenCV, ~0.3 s). They load inside the functions that need
# them, not when this module is imported.

DECAY = 0.2
MIN_AREA, MAX_AREA = 0.02, 0.7


def clusters_for_caption(n_words: int) -> int:
    """Quilt's number of clusters from the caption length: <=10/<=40/<=60/>60 words -> 1/2/3/4."""
    if n_words <= 10:
        return 1
    if n_words <= 40:
        return 2
    if n_words <= 60:
        return 3
    return 4


def iqr_inliers(values: np.ndarray) -> np.ndarray:
    """Boolean mask of rows whose every column lies within [Q1 - 1.5 IQR, Q3 + 1.5 IQR] of that column."""
    values = np.asarray(values, np.float64)
    if len(values) < 4:
        return np.ones(len(values), bool)
    q1, q3 = np.percentile(values, 25, axis=0), np.percentile(values, 75, axis=0)
    iqr = q3 - q1
    return np.all((values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr), axis=1)


@dataclass
class Cluster:
    """One cluster of trace points: kept points (t, x_px, y_px), box (normalised and pixels), mean time."""

    points: np.ndarray  # (M, 3) t, x, y after outlier removal
    box: list[float]  # [x1, y1, x2, y2] normalised 0-1
    box_px: list[int]
    area: float  # normalised box area
    mean_t: float
    kept: bool  # area within [min_area, max_area]
    utterances: list[Utterance] = field(default_factory=list)

    @property
    def n_words(self) -> int:
        return sum(u.n_words for u in self.utterances)


def quilt_clusters(trace: np.ndarray, width: int, height: int, n_words: int, decay: float = DECAY,
                   remove_outliers: bool = True, min_area: float = MIN_AREA, max_area: float = MAX_AREA,
                   seed: int = 0) -> list[Cluster]:
    """Cluster a pointer trace ``(N, 3)`` of ``(t, x, y)`` (t seconds from chunk start, x/y frame pixels).

    Returns every cluster (dropped ones have ``kept=False``) ordered by mean time.
    """
    from sklearn.cluster import KMeans

    trace = np.asarray(trace, np.float64).reshape(-1, 3)
    if len(trace) == 0:
        return []
    t, xn, yn = trace[:, 0], trace[:, 1] / width, trace[:, 2] / height
    w = np.exp(-decay * t)
    feats = np.stack([xn * w, yn * w], axis=1)
    k = min(clusters_for_caption(n_words), len(np.unique(feats, axis=0)))
    if k <= 1:
        labels = np.zeros(len(trace), int)
    else:
        labels = KMeans(n_clusters=k, n_init=k, random_state=seed).fit_predict(feats)
    clusters = []
    for c in np.unique(labels):
        pts = trace[labels == c]
        if remove_outliers:
            pts = pts[iqr_inliers(pts[:, 1:3])]
        x1, y1 = pts[:, 1].min() / width, pts[:, 2].min() / height
        x2, y2 = pts[:, 1].max() / width, pts[:, 2].max() / height
        box = [float(np.clip(v, 0, 1)) for v in (x1, y1, x2, y2)]
        area = (box[2] - box[0]) * (box[3] - box[1])
        box_px = [int(round(box[0] * width)), int(round(box[1] * height)),
                  int(round(box[2] * width)), int(round(box[3] * height))]
        clusters.append(Cluster(pts, box, box_px, area, float(pts[:, 0].mean()),
                                kept=min_area <= area <= max_area))
    return sorted(clusters, key=lambda c: c.mean_t)


def assign_utterances(clusters: list[Cluster], utterances: list[Utterance], min_words: int = 3) -> list[Cluster]:
    """Attach each utterance (times relative to the chunk start) to the kept cluster whose mean time is
    closest to the utterance's end; then merge clusters with <= ``min_words`` words into the neighbour
    (in time) with more words, repeatedly. Returns the kept clusters that hold text, in time order."""
    kept = [Cluster(c.points, c.box, c.box_px, c.area, c.mean_t, c.kept, []) for c in clusters if c.kept]
    if not kept:
        return []
    for u in utterances:
        best = min(kept, key=lambda c: abs(c.mean_t - u.end))
        best.utterances.append(u)
    kept = [c for c in kept if c.utterances]
    while len(kept) > 1:
        small = [i for i, c in enumerate(kept) if c.n_words <= min_words]
        if not small:
            break
        i = small[0]
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(kept)]
        j = max(neighbours, key=lambda j: kept[j].n_words)
        kept[j].utterances = sorted(kept[j].utterances + kept[i].utterances, key=lambda u: u.start)
        del kept[i]
    return kept


def quilt_string(clusters: list[Cluster], caption: str) -> str:
    """Quilt's grounded caption: ``"<utterances> [x1, y1, x2, y2], ..."``; the raw caption if none kept."""
    if not clusters:
        return caption
    parts = []
    for c in clusters:
        text = " ".join(u.text for u in c.utterances)
        box = ", ".join(f"{v:.2f}" for v in c.box)
        parts.append(f"{text} [{box}]")
    return ", ".join(parts)


@dataclass
class Grounding:
    text: str
    start: float  # seconds, video time
    end: float
    box: list[int]  # [x1, y1, x2, y2] frame pixels

    def to_json(self) -> dict:
        return {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3), "box": self.box}


def ground_utterances(trace: np.ndarray, utterances: list[Utterance], width: int, height: int,
                      chunk_start: float = 0.0, decay: float = DECAY, min_area: float = MIN_AREA,
                      max_area: float = MAX_AREA, seed: int = 0) -> tuple[list[Grounding], list[Cluster]]:
    """Quilt clustering on a chunk's trace (video times) and its utterances (video times).

    Returns one :class:`Grounding` per utterance that landed in a kept cluster (the cluster's box), and
    the kept clusters with their utterances.
    """
    trace = np.asarray(trace, np.float64).reshape(-1, 3).copy()
    if len(trace) == 0 or not utterances:
        return [], []
    trace[:, 0] -= chunk_start
    caption = " ".join(u.text for u in utterances)
    clusters = quilt_clusters(trace, width, height, len(caption.split()), decay, True, min_area, max_area, seed)
    rel = [Utterance(u.start - chunk_start, u.end - chunk_start, u.text, u.words) for u in utterances]
    kept = assign_utterances(clusters, rel)
    groundings = []
    for c in kept:
        for u in c.utterances:
            groundings.append(Grounding(u.text, u.start + chunk_start, u.end + chunk_start, c.box_px))
    groundings.sort(key=lambda g: g.start)
    return groundings, kept


def densify_trace(trace: np.ndarray, max_gap: float, substeps: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Points along a ``(N, 3)`` (t, x, y) trace, linearly interpolated between samples at most ``max_gap``
    seconds apart, with the dwell time each point stands for. Returns ``(xy (M, 2), seconds (M,))``."""
    trace = np.asarray(trace, np.float64).reshape(-1, 3)
    if len(trace) < 2:
        return trace[:, 1:], np.full(len(trace), max_gap / 2)
    xy, w = [], []
    for a, b in zip(trace[:-1], trace[1:]):
        dt = b[0] - a[0]
        if 0 < dt <= max_gap:
            u = np.arange(substeps)[:, None] / substeps
            xy.append(a[1:] + u * (b[1:] - a[1:]))
            w.append(np.full(substeps, dt / substeps))
        else:
            xy.append(a[None, 1:])
            w.append(np.array([min(dt, max_gap)]))
    xy.append(trace[-1:, 1:])
    w.append(np.array([max_gap / 2]))
    return np.concatenate(xy), np.concatenate(w)


def dwell_heatmap(xy: np.ndarray, width: int, height: int, sigma: float = 8.0,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 Gaussian-smoothed dwell map of pointer positions, scaled to a maximum of 1 (zeros if
    there are no points)."""
    import cv2

    heat = np.zeros((height, width), np.float32)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(xy):
        xs = np.clip(np.round(xy[:, 0]).astype(int), 0, width - 1)
        ys = np.clip(np.round(xy[:, 1]).astype(int), 0, height - 1)
        w = np.ones(len(xy), np.float32) if weights is None else np.asarray(weights, np.float32)
        np.add.at(heat, (ys, xs), w)
        heat = cv2.GaussianBlur(heat, (0, 0), sigma)
        if heat.max() > 0:
            heat /= heat.max()
    return heat
