"""Tiling at a true mpp, tissue mask and grid, checked against the synthetic slides' ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from pathkit.synthetic.slides import label_field, write_slide
from pathkit.wsi.slide import Slide
from pathkit.wsi.tiling import plan_tiles, read_tile, tile_grid
from pathkit.wsi.tissue import box_fraction, tissue_mask


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsi_tiling")
    return {
        "half": write_slide(root / "half.tiff", 2560, 2048, mpp=0.5, seed=11, diagnosis="fibrosis"),
        "quarter": write_slide(root / "quarter.svs", 4096, 3072, mpp=0.25, seed=12, fmt="svs",
                               diagnosis="adenocarcinoma"),
        "odd": write_slide(root / "odd.tiff", 2100, 1500, mpp=0.5, seed=13, diagnosis="lymphoma"),
    }


def _gt_fraction(truth, coords, footprint):
    """Ground-truth tissue fraction of each tile, from the analytic regions (8 px sampling)."""
    out = []
    for x, y in coords:
        w = min(footprint, truth.width - x)
        h = min(footprint, truth.height - y)
        labels = label_field(truth.regions, x, y, max(1, w // 8), max(1, h // 8), 8)
        out.append((labels > 0).sum() * (w * h) / labels.size / footprint**2)
    return np.array(out)


@pytest.mark.parametrize("name, level, read_size, footprint", [("half", 0, 256, 256), ("quarter", 1, 256, 512)])
def test_mpp_conversion_picks_level_and_footprint(slides, name, level, read_size, footprint):
    with Slide(slides[name].slide) as slide:
        plan = plan_tiles(slide, mpp=0.5, size=256)
        assert (plan.level, plan.read_size, plan.patch_size_level0, plan.stride_level0) == (
            level, read_size, footprint, footprint)
        assert not plan.needs_resize
        # 1 mpp from a 0.5 mpp slide: level 1 (downsample 2) read 256 px; from 0.25 mpp: level 2.
        coarse = plan_tiles(slide, mpp=1.0, size=256)
        assert coarse.patch_size_level0 == 2 * footprint and coarse.level == level + 1
        # 0.75 mpp has no matching level: read more pixels from a finer level and resize down.
        odd = plan_tiles(slide, mpp=0.75, size=200)
        assert odd.needs_resize and odd.read_size > 200
        assert odd.patch_size_level0 == round(200 * 0.75 / slides[name].mpp)
        assert odd.read_size == round(odd.patch_size_level0 / slide.level_downsamples[odd.level])


def test_tile_read_from_a_level_matches_resized_level0(slides):
    truth = slides["quarter"]
    with Slide(truth.slide) as slide:
        plan = plan_tiles(slide, mpp=0.5, size=256)
        grid = tile_grid(slide, mpp=0.5, size=256, min_tissue=0.5)
        x, y = grid.coords[len(grid.coords) // 2]
        tile = read_tile(slide, x, y, plan).astype(np.float32)
        import cv2

        level0 = slide.read_region(x, y, 0, 512, 512)
        reference = cv2.resize(level0, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)
        assert tile.shape == (256, 256, 3)
        assert np.abs(tile - reference).mean() < 6  # same tissue, JPEG differences only


@pytest.mark.parametrize("name", ["half", "quarter", "odd"])
def test_grid_inside_on_grid_tissue_honoured_no_background(slides, name):
    truth = slides[name]
    with Slide(truth.slide) as slide:
        grid = tile_grid(slide, mpp=0.5, size=256, min_tissue=0.25)
    plan, coords = grid.plan, grid.coords
    assert coords.dtype == np.int64 and coords.shape[1] == 2 and len(coords) > 5
    assert (coords >= 0).all() and (coords[:, 0] < truth.width).all() and (coords[:, 1] < truth.height).all()
    assert (coords % plan.stride_level0 == 0).all()
    # The full grid covers a slide whose size is not a multiple of the tile: ceil(W / footprint) columns.
    cols = len(np.unique(grid.all_coords[:, 0]))
    rows = len(np.unique(grid.all_coords[:, 1]))
    assert (cols, rows) == (-(-truth.width // plan.patch_size_level0), -(-truth.height // plan.patch_size_level0))
    gt = _gt_fraction(truth, coords, plan.patch_size_level0)
    assert (gt > 0).all(), "a kept tile lies on pure background"
    assert (gt >= 0.25 - 0.15).all() and np.median(gt) > 0.5
    assert (grid.tissue >= 0.25).all()
    # Recall: nearly every tile that is mostly tissue in the ground truth is kept.
    all_gt = _gt_fraction(truth, grid.all_coords, plan.patch_size_level0)
    kept = {tuple(c) for c in coords}
    mostly = [tuple(c) for c, f in zip(grid.all_coords, all_gt, strict=True) if f >= 0.6]
    assert sum(c in kept for c in mostly) >= 0.9 * len(mostly)


def test_overlap_changes_stride(slides):
    with Slide(slides["half"].slide) as slide:
        plan = plan_tiles(slide, mpp=0.5, size=256, overlap=64)
        assert plan.stride_level0 == 192 and plan.patch_size_level0 == 256


@pytest.mark.parametrize("name", ["half", "quarter", "odd"])
def test_tissue_mask_iou_against_ground_truth(slides, name):
    truth = slides[name]
    with Slide(truth.slide) as slide:
        thumb, scale = slide.thumbnail(1024)
    mask = tissue_mask(thumb, scale)
    gt = label_field(truth.regions, 0, 0, mask.mask.shape[1], mask.mask.shape[0], scale) > 0
    iou = (mask.mask & gt).sum() / (mask.mask | gt).sum()
    assert iou >= 0.85, iou


def test_tissue_mask_of_empty_glass_is_empty():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 2, (300, 400, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass).mask.any()


def test_box_fraction_matches_brute_force():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 50)) < 0.4
    scale = 8.0
    xs, ys = rng.integers(0, 380, 30), rng.integers(0, 300, 30)
    got = box_fraction(mask, scale, xs, ys, 100)
    big = np.kron(mask, np.ones((8, 8), bool))
    big = np.pad(big, ((0, 200), (0, 200)))
    want = [big[y:y + 100, x:x + 100].mean() for x, y in zip(xs, ys, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-9)
