"""Synthetic slides: real openslide on the pyramidal TIFF / SVS files the generator writes."""

from __future__ import annotations

import math

import numpy as np
import openslide
import pytest

from pathkit.io import PathkitError
from pathkit.synthetic.slides import BACKGROUND_RGB, DIAGNOSES, SlideTruth, ensure_slide_set, write_slide
from pathkit.synthetic.tissue import CLASSES, render_tissue


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    tiff = write_slide(root / "a.tiff", 3000, 2200, mpp=0.5, seed=1, diagnosis="adenocarcinoma")
    svs = write_slide(root / "b.svs", 2048, 2048, mpp=0.25, seed=2, fmt="svs", diagnosis="lymphoma")
    return tiff, svs


def test_generic_tiff_opens_with_right_geometry_and_mpp(slides):
    truth, _ = slides
    s = openslide.OpenSlide(truth.slide)
    assert openslide.OpenSlide.detect_format(truth.slide) == "generic-tiff"
    assert s.dimensions == (3000, 2200)
    # halving until the longest side fits one 256 px tile: 3000 -> 1500 -> 750 -> 375 -> 187
    assert s.level_count == 5
    assert [tuple(d) for d in s.level_dimensions] == [(3000, 2200), (1500, 1100), (750, 550), (375, 275),
                                                      (187, 137)]
    np.testing.assert_allclose(s.level_downsamples[:4], [1, 2, 4, 8], rtol=1e-9)
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-6)
    assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5, rel=1e-6)
    assert truth.level_dimensions == [list(d) for d in s.level_dimensions]


def test_aperio_svs_reports_vendor_mpp_and_objective(slides):
    _, truth = slides
    s = openslide.OpenSlide(truth.slide)
    assert s.properties["openslide.vendor"] == "aperio"
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert float(s.properties["openslide.objective-power"]) == pytest.approx(40)
    assert s.dimensions == (2048, 2048) and s.level_count == 4


def _deep_point(labels: np.ndarray, value: int, margin: int) -> tuple[int, int] | None:
    """A label-map pixel whose (2 margin + 1)^2 neighbourhood is all ``value``."""
    import cv2

    inside = cv2.erode((labels == value).astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    ys, xs = np.nonzero(inside)
    if len(ys) == 0:
        return None
    i = len(ys) // 2
    return int(xs[i]), int(ys[i])


def test_region_at_known_place_has_its_class_colour(slides):
    truth, _ = slides
    s = openslide.OpenSlide(truth.slide)
    labels, ds = truth.label_map(), truth.labels_downsample
    assert labels.shape == (math.ceil(2200 / ds), math.ceil(3000 / ds))
    checked = 0
    for value, name in enumerate(CLASSES, start=1):
        point = _deep_point(labels, value, margin=int(80 / ds) + 1)
        if point is None:
            continue
        x, y = point[0] * ds - 64, point[1] * ds - 64
        region = np.asarray(s.read_region((x, y), 0, (128, 128)).convert("RGB"), dtype=np.float32)
        region_of_class = [r for r in truth.regions if r["label"] == name][-1]
        reference = render_tissue(name, 256, 256, np.random.default_rng(0), stain=region_of_class["stain"],
                                  scale=1 / truth.mpp, **region_of_class["attributes"]).astype(np.float32)
        mean, ref_mean = region.reshape(-1, 3).mean(0), reference.reshape(-1, 3).mean(0)
        assert np.abs(mean - ref_mean).max() < 25, (name, mean, ref_mean)
        assert np.abs(mean - np.array(BACKGROUND_RGB)).max() > 10, name  # not glass
        checked += 1
    assert checked >= 3
    point = _deep_point(labels, 0, margin=int(80 / ds) + 1)  # glass is glass
    glass = np.asarray(s.read_region((point[0] * ds - 64, point[1] * ds - 64), 0, (128, 128)).convert("RGB"))
    assert np.abs(glass.reshape(-1, 3).astype(int) - BACKGROUND_RGB).max() <= 4


def test_truth_sidecar_and_diagnosis_dominance(slides):
    for truth in slides:
        loaded = SlideTruth.load(truth.slide)
        assert loaded == truth
        group = {d: sum(truth.class_fractions[c] for c in cs) for d, cs in DIAGNOSES.items()}
        assert max(group, key=group.get) == truth.diagnosis
        assert truth.report.startswith(f"Diagnosis: {truth.diagnosis}.")
        labels = truth.label_map()
        assert 0.05 < (labels > 0).mean() < 0.8 and truth.tissue_fraction == pytest.approx((labels > 0).mean(),
                                                                                            abs=1e-3)


def test_deterministic_per_seed_and_different_across_seeds(tmp_path):
    a = write_slide(tmp_path / "a.tiff", 512, 512, seed=5)
    b = write_slide(tmp_path / "b.tiff", 512, 512, seed=5)
    c = write_slide(tmp_path / "c.tiff", 512, 512, seed=6)
    ra = np.asarray(openslide.OpenSlide(a.slide).read_region((0, 0), 0, (512, 512)))
    rb = np.asarray(openslide.OpenSlide(b.slide).read_region((0, 0), 0, (512, 512)))
    rc = np.asarray(openslide.OpenSlide(c.slide).read_region((0, 0), 0, (512, 512)))
    assert np.array_equal(ra, rb) and a.regions == b.regions
    assert not np.array_equal(ra, rc)


def test_fast_mode_and_no_mpp_slide(tmp_path):
    fast = write_slide(tmp_path / "fast.tiff", 2000, 1000, fast=True, level_factor=4, quality=60, seed=3)
    s = openslide.OpenSlide(fast.slide)
    assert s.dimensions == (2000, 1000) and s.level_count == 3  # 2000 -> 500 -> 125
    np.testing.assert_allclose(s.level_downsamples, [1, 4, 16], rtol=0.01)  # 1000 // 16 = 62
    nompp = write_slide(tmp_path / "nompp.tiff", 512, 512, record_mpp=False)
    assert "openslide.mpp-x" not in openslide.OpenSlide(nompp.slide).properties
    with pytest.raises(PathkitError, match="diagnosis"):
        write_slide(tmp_path / "x.tiff", 512, 512, diagnosis="flu")


def test_ensure_slide_set_balanced_and_reused(tmp_path):
    from pathkit.config import SyntheticConfig

    cfg = SyntheticConfig(slide_count=4, slide_size=512)
    first = ensure_slide_set(tmp_path, cfg, seed=0)
    assert sorted(t.diagnosis for t in first) == sorted(DIAGNOSES)
    assert {t.fmt for t in first} == {"tiff", "svs"}
    mtimes = [tmp_path.joinpath(t.slide).stat().st_mtime_ns for t in first]
    again = ensure_slide_set(tmp_path, cfg, seed=0)
    assert again == first
    assert mtimes == [tmp_path.joinpath(t.slide).stat().st_mtime_ns for t in again]
