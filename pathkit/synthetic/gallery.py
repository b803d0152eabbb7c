"""Figures of the synthetic data with its ground truth: tiles with captions, a slide beside its label map,
lecture frames with the pointer and the sentence being spoken. Used by notebook 01 (matplotlib only)."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np

from pathkit.synthetic.tissue import CLASSES
from pathkit.video.decode import iter_frames
from pathkit.wsi.slide import open_slide

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pathkit.synthetic.tiles import TileDataset

# Lazy imports: matplotlib (matplotlib, ~0.2-0.6 s). They load inside the functions that need them, not when
# this module is imported.

# One colour per class for label maps (index 0 = glass/background).
CLASS_COLOURS: dict[str, str] = {"tumor": "#d62728", "stroma": "#ff9ecf", "lymphocytes": "#1f3fbf",
                                 "necrosis": "#8c564b", "gland": "#2ca02c", "adipose": "#f5d76e"}


def label_colours(label_map: np.ndarray) -> np.ndarray:
    """A label map (0 background, k = CLASSES[k-1]) as RGB uint8 (H, W, 3)."""
    from matplotlib.colors import to_rgb

    lut = np.full((256, 3), 255, np.uint8)
    for k, c in enumerate(CLASSES, start=1):
        lut[k] = (np.array(to_rgb(CLASS_COLOURS[c])) * 255).astype(np.uint8)
    return lut[label_map]


def tile_gallery(ds: TileDataset, per_class: int = 3, split: str = "train", wrap: int = 58) -> Figure:
    """One row per class: ``per_class`` tiles and the caption of the first one."""
    import matplotlib.pyplot as plt

    rows = ds.metadata(split)
    fig, axes = plt.subplots(len(CLASSES), per_class + 1, figsize=(2.0 * per_class + 5.0, 2.0 * len(CLASSES)),
                             gridspec_kw={"width_ratios": [1] * per_class + [2.6]})
    for r, label in enumerate(CLASSES):
        examples = [row for row in rows if row["label"] == label][:per_class]
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(examples):
                ax.imshow(ds.load_image(examples[c]), interpolation="nearest")
                a = examples[c]["attributes"]
                extra = f" g{a['grade']}{' M+' if a.get('mitoses') else ''}" if label == "tumor" else ""
                ax.set_title(f"{label}{extra}", fontsize=9)
        axes[r, -1].axis("off")
        if examples:
            axes[r, -1].text(0.0, 0.5, textwrap.fill(examples[0]["caption"], wrap), fontsize=8,
                             va="center", ha="left", transform=axes[r, -1].transAxes)
    fig.suptitle("Synthetic H&E tiles per class (g = grade, M+ = mitoses) and a ground-truth caption", fontsize=11)
    fig.tight_layout()
    return fig


def slide_and_video_figure(slide_truth: Any, video_truth: Any, n_frames: int = 3, thumb_size: int = 512,
                           wrap: int = 48) -> Figure:
    """Top: a synthetic slide's thumbnail, its ground-truth label map and report. Bottom: lecture frames at
    the middle of spoken sentences that name a region, with the true pointer position ringed and the
    sentence as the caption."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(4.2 * n_frames, 8.6))
    grid = fig.add_gridspec(2, 3 * n_frames)
    with open_slide(slide_truth.slide) as slide:
        thumb, _ = slide.thumbnail(thumb_size)
    span = max(1, n_frames)
    ax = fig.add_subplot(grid[0, 0:span])
    ax.imshow(thumb)
    ax.set_title(f"{slide_truth.fmt} slide, {slide_truth.width}x{slide_truth.height} px at {slide_truth.mpp} mpp",
                 fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, span:2 * span])
    ax.imshow(label_colours(slide_truth.label_map()), interpolation="nearest")
    ax.set_title(f"ground-truth label map (downsample {slide_truth.labels_downsample})", fontsize=9)
    ax.axis("off")
    present = [c for c in CLASSES if slide_truth.class_fractions.get(c, 0) > 0]
    ax.legend(handles=[Patch(color=CLASS_COLOURS[c], label=c) for c in present], fontsize=7, loc="lower right",
              framealpha=0.8)
    ax = fig.add_subplot(grid[0, 2 * span:])
    ax.axis("off")
    ax.text(0, 1, textwrap.fill(slide_truth.report, wrap + 10), fontsize=8, va="top", ha="left",
            transform=ax.transAxes)
    ax.set_title(f"report (diagnosis: {slide_truth.diagnosis})", fontsize=9)

    spoken = [u for u in video_truth.utterances if u.label is not None]
    picks = [spoken[i] for i in np.linspace(0, len(spoken) - 1, min(n_frames, len(spoken))).astype(int)]
    wanted = {int(round((u.start + u.end) / 2 * video_truth.fps)): u for u in picks}
    frames = {f.index: f.image for f in iter_frames(video_truth.path, grey=False) if f.index in wanted}
    for k, (index, u) in enumerate(sorted(wanted.items())):
        ax = fig.add_subplot(grid[1, 3 * k:3 * k + 3])
        ax.imshow(frames[index])
        xy = video_truth.cursor[index] if index < len(video_truth.cursor) else None
        if xy is not None:
            ax.add_patch(plt.Circle((xy[0], xy[1]), 9, fill=False, color="yellow", lw=1.5))
        ax.set_title(f"t = {index / video_truth.fps:.1f} s: " + textwrap.fill(f"\u201c{u.text}\u201d", wrap),
                     fontsize=8)
        ax.axis("off")
    fig.suptitle("A synthetic slide with its ground truth, and a narrated lecture (pointer ringed: true position)",
                 fontsize=11)
    fig.tight_layout()
    return fig


def qa_examples(ds: TileDataset, split: str = "heldout", per_category: int = 1) -> list[dict[str, Any]]:
    """A few evaluation questions per category (for a table in the notebook)."""
    seen: dict[str, int] = {}
    out = []
    for q in ds.questions(split):
        if seen.get(q["category"], 0) < per_category:
            seen[q["category"]] = seen.get(q["category"], 0) + 1
            out.append({k: q[k] for k in ("category", "label", "text", "answer", "answer_type")})
    return out
