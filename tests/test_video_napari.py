"""napari view of a localized narrative: screenshot under Xvfb shows the frame and the heat map colour."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.viewer


@pytest.fixture
def narrative_row(tmp_path):
    from PIL import Image

    h, w = 120, 160
    frame = np.full((h, w, 3), (200, 150, 190), np.uint8)  # pink tissue-like
    Image.fromarray(frame).save(tmp_path / "f.png")
    heat = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    heat[:] = np.exp(-((xx - 110) ** 2 + (yy - 40) ** 2) / (2 * 8.0**2))
    np.save(tmp_path / "h.npy", heat)
    return {"video": "v.mp4", "chunk": 0, "start": 0.0, "end": 2.0, "frame": str(tmp_path / "f.png"),
            "width": w, "height": h, "caption": "Notice the tumour here.",
            "cursor": [[0.1 * k, 100 + 5 * np.cos(k), 40 + 5 * np.sin(k)] for k in range(12)],
            "groundings": [{"text": "Notice the tumour here.", "start": 0.0, "end": 2.0, "box": [20, 70, 70, 110]}],
            "heatmap": str(tmp_path / "h.npy")}


def test_show_narrative_screenshot(narrative_row):
    from pathkit.viz.napari import show_narrative

    viewer = show_narrative(narrative_row, show=True)
    try:
        assert [layer.name for layer in viewer.layers] == ["frame", "heatmap", "groundings", "cursor", "cursor trace"]
        viewer.layers["cursor"].visible = False
        viewer.layers["cursor trace"].visible = False
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
        assert shot.mean() > 30, "black canvas"
        # map image coordinates to screenshot pixels through the displayed frame's extent
        H, W = shot.shape[:2]
        scale = min(W / 160, H / 120)
        ox, oy = (W - 160 * scale) / 2, (H - 120 * scale) / 2

        def px(x, y):
            return shot[int(oy + y * scale), int(ox + x * scale)]

        hot, cold = px(110, 40), px(30, 20)
        assert abs(cold - [200, 150, 190]).max() < 25, cold  # the frame colour where the heat is ~0
        # inferno at 1.0 is pale yellow: additive blending pushes R and G up at the hot spot
        assert hot[0] >= 250 and hot[1] > cold[1] + 40, (hot, cold)
        box_edge = px(45, 70)
        assert box_edge[2] > 200 and box_edge[1] > 200 and box_edge[0] < 150, box_edge  # cyan box edge
    finally:
        viewer.close()
