"""napari slide viewer under Xvfb: lazy multiscale slide visible, per-tile overlay drawn."""

from __future__ import annotations

import numpy as np
import pytest

from pathkit.synthetic.slides import write_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("viewer") / "v.tiff", 2048, 2048, mpp=0.5, seed=41,
                       diagnosis="lymphoma")


def test_level_array_reads_like_openslide(slide):
    import openslide

    from pathkit.viz.napari.slide import slide_pyramid

    pyramid = slide_pyramid(slide.slide)
    assert pyramid[0].shape == (2048, 2048, 3) and pyramid[1].shape == (1024, 1024, 3)
    direct = np.asarray(openslide.OpenSlide(slide.slide).read_region((512, 256), 1, (100, 60)))[..., :3]
    np.testing.assert_array_equal(pyramid[1][128:188, 256:356], direct)
    assert pyramid[1][128:188:2, 256:356:4].shape == (30, 25, 3)


@pytest.mark.viewer
def test_show_slide_screenshot_has_slide_and_overlay(slide):
    import napari

    from pathkit.viz.napari import show_slide
    from pathkit.wsi.slide import Slide
    from pathkit.wsi.tiling import tile_grid

    with Slide(slide.slide) as s:
        grid = tile_grid(s, mpp=0.5, size=256, min_tissue=0.5)
    viewer = napari.Viewer(show=True)
    try:
        show_slide(slide.slide, grid.coords, values=np.ones(len(grid.coords)), viewer=viewer, colormap="red")
        viewer.layers["value"].visible = False
        plain = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
        viewer.layers["value"].visible = True
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    finally:
        viewer.close()
    assert plain.mean() > 60, "the canvas is black: the slide did not render"
    # tissue is purple (blue > green), glass near white: both are in the view
    assert ((plain[..., 2] - plain[..., 1]) > 30).mean() > 0.02
    redder = (shot[..., 0] - shot[..., 2]) - (plain[..., 0] - plain[..., 2])
    assert (redder > 40).mean() > 0.02, "the per-tile overlay colour does not appear"
