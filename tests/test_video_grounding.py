"""Quilt's clustering rules on hand-built pointer traces: k from caption length, IQR outliers, area limits."""

from __future__ import annotations

import numpy as np
import pytest

from pathkit.video.grounding import (
    assign_utterances,
    clusters_for_caption,
    dwell_heatmap,
    ground_utterances,
    iqr_inliers,
    quilt_clusters,
    quilt_string,
)
from pathkit.video.transcript import Utterance

W, H = 400, 300


def _blob(t0, t1, cx, cy, r, n=20, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(t0, t1, n)
    ang = rng.uniform(0, 2 * np.pi, n)
    rad = r * np.sqrt(rng.uniform(0, 1, n))
    return np.stack([t, cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)


@pytest.mark.parametrize("words, k", [(1, 1), (10, 1), (11, 2), (40, 2), (41, 3), (60, 3), (61, 4), (300, 4)])
def test_k_from_caption_length(words, k):
    assert clusters_for_caption(words) == k


def test_number_of_clusters_follows_caption_length():
    trace = np.concatenate([_blob(0, 1, 80, 80, 40, seed=1), _blob(1.5, 2.5, 300, 80, 40, seed=2),
                            _blob(3, 4, 80, 230, 40, seed=3), _blob(4.5, 5.5, 300, 230, 40, seed=4)])
    for words, k in ((5, 1), (30, 2), (50, 3), (80, 4)):
        clusters = quilt_clusters(trace, W, H, words, min_area=0, max_area=1)
        assert len(clusters) == k
    four = quilt_clusters(trace, W, H, 80)
    centres = sorted((round(c.points[:, 1].mean() / 100), round(c.points[:, 2].mean() / 100)) for c in four)
    assert centres == [(1, 1), (1, 2), (3, 1), (3, 2)]  # the four blobs, in time order by mean_t
    assert np.all(np.diff([c.mean_t for c in four]) > 1)


def test_time_decay_is_in_the_features():
    """Two spots visited late (t ~ 20 s) are nearly merged by exp(-0.2 t): weights shrink coordinates."""
    early = np.concatenate([_blob(0, 1, 80, 150, 20, seed=1), _blob(1, 2, 320, 150, 20, seed=2)])
    late = early.copy()
    late[:, 0] += 20
    ce = quilt_clusters(early, W, H, 30, min_area=0, max_area=1)
    assert sorted(len(c.points) for c in ce) == [20, 20]
    # late: features are scaled by ~exp(-4); k-means still splits but on much smaller distances
    feats_scale = np.exp(-0.2 * late[:, 0]).max()
    assert feats_scale < 0.02


def test_iqr_outlier_removed_and_box_from_extent():
    pts = _blob(0, 2, 200, 150, 30, n=40, seed=5)
    outlier = np.array([[1.0, 390.0, 20.0]])
    trace = np.concatenate([pts, outlier])
    assert not iqr_inliers(trace[:, 1:])[-1]
    (c,) = quilt_clusters(trace, W, H, 5)
    assert len(c.points) == 40
    assert c.box_px[2] <= 231 and c.box_px[1] >= 119  # the far point at (390, 20) did not stretch the box
    x1, y1, x2, y2 = c.box
    assert x1 == pytest.approx(pts[:, 1].min() / W) and y2 == pytest.approx(pts[:, 2].max() / H)
    (c_raw,) = quilt_clusters(trace, W, H, 5, remove_outliers=False)
    assert c_raw.box[2] == pytest.approx(390 / W)


def test_area_limits_drop_tiny_and_huge_boxes():
    tiny = _blob(0, 1, 200, 150, 5, seed=1)  # ~10x10 px of 400x300: area 0.001
    (c,) = quilt_clusters(tiny, W, H, 5)
    assert c.area < 0.02 and not c.kept
    corners = np.array([[0, 5, 5], [0.5, 395, 5], [1, 395, 295], [1.5, 5, 295], [2, 200, 150]], float)
    (c,) = quilt_clusters(corners, W, H, 5)
    assert c.area > 0.7 and not c.kept
    mid = _blob(0, 1, 200, 150, 60, seed=2)
    (c,) = quilt_clusters(mid, W, H, 5)
    assert 0.02 <= c.area <= 0.7 and c.kept


def test_utterances_go_to_cluster_nearest_in_time_and_small_clusters_merge():
    trace = np.concatenate([_blob(0, 2, 80, 80, 40, seed=1), _blob(4, 6, 300, 220, 40, seed=2)])
    utts = [Utterance(0, 2, "Here we see a gland with a lumen."), Utterance(4, 6, "And this is necrosis with debris.")]
    clusters = quilt_clusters(trace, W, H, 30)
    kept = assign_utterances(clusters, utts)
    assert [u.text for u in kept[0].utterances] == [utts[0].text] and kept[1].utterances == [utts[1]]
    s = quilt_string(kept, "caption")
    assert s.startswith("Here we see a gland with a lumen. [0.") and s.count("[") == 2
    # a 2-word utterance alone in a cluster is merged into the neighbour with more words
    utts2 = [Utterance(0, 2, "Look here."), Utterance(4, 6, "And this is necrosis with debris.")]
    kept2 = assign_utterances(clusters, utts2)
    assert len(kept2) == 1 and [u.text for u in kept2[0].utterances] == ["Look here.", utts2[1].text]
    # every cluster dropped -> raw caption
    assert quilt_string([], "raw caption") == "raw caption"


def test_ground_utterances_uses_video_times():
    trace = np.concatenate([_blob(10, 12, 80, 80, 40, seed=1), _blob(14, 16, 300, 220, 40, seed=2)])
    utts = [Utterance(10, 12, "Here we see a gland with a lumen and nuclei around it."),
            Utterance(14, 16, "And this is necrosis with pink debris and fragments.")]
    groundings, kept = ground_utterances(trace, utts, W, H, chunk_start=10)
    assert [g.start for g in groundings] == [10, 14]
    assert groundings[0].box[2] < 200 and groundings[1].box[0] > 200


def test_dwell_heatmap():
    heat = dwell_heatmap(np.array([[100, 50]] * 10 + [[300, 200]]), W, H, sigma=6)
    assert heat.shape == (H, W) and heat.dtype == np.float32 and heat.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (50, 100)
    assert heat[200, 300] == pytest.approx(0.1, rel=0.05)  # 1 of 10 dwell units
    assert dwell_heatmap(np.zeros((0, 2)), W, H).max() == 0


def test_densify_trace_fills_the_path_between_samples():
    from pathkit.video.grounding import densify_trace

    trace = np.array([[0.0, 0, 0], [0.2, 40, 0], [5.0, 100, 100]])
    xy, secs = densify_trace(trace, max_gap=0.5, substeps=4)
    assert xy[:4, 0].tolist() == [0, 10, 20, 30]  # interpolated along the 0.2 s stroke
    assert secs[:4].sum() == pytest.approx(0.2)
    assert len(xy) == 4 + 1 + 1  # the 4.8 s gap (pointer hidden) is not filled
