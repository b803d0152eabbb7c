"""Visual prompting, Quilt-VQA-RED style: draw a red circle (ellipse) or box around grounded regions.

Quilt-VQA-RED asks the same questions as Quilt-VQA on images where the region the narrator pointed at is
circled in red, to test whether a model uses the visual prompt. Boxes are ``[x1, y1, x2, y2]`` in pixels, or
in 0-1 fractions of the image size when every value is <= 1 (``normalized=None`` decides automatically).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

RED = (255, 0, 0)


def _to_pixels(box: Sequence[float], width: int, height: int, normalized: bool | None) -> tuple[float, ...]:
    if len(box) != 4:
        raise ValueError(f"box {list(box)} must have 4 numbers [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (float(v) for v in box)
    if normalized is None:
        normalized = max(abs(x1), abs(y1), abs(x2), abs(y2)) <= 1.0
    if normalized:
        x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def draw_visual_prompt(image: Any, boxes: Sequence[Sequence[float]], shape: str = "circle",
                       color: tuple[int, int, int] = RED, width: int | None = None, pad: float = 0.1,
                       normalized: bool | None = None):
    """A copy of ``image`` (PIL image, uint8 array or path) with a red ellipse/box around each box.

    Args:
        shape: ``"circle"`` (an ellipse enclosing the box, as Quilt-VQA-RED) or ``"box"``.
        width: line width in pixels (default ~1% of the shorter side, at least 2).
        pad: the ellipse/box is grown by this fraction of the box size on each side.
    """
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            img = im.convert("RGB")
    elif isinstance(image, np.ndarray):
        img = Image.fromarray(image.astype(np.uint8)).convert("RGB")
    else:
        img = image.convert("RGB").copy()
    if shape not in ("circle", "box"):
        raise ValueError(f"shape must be 'circle' or 'box', got {shape!r}")
    w, h = img.size
    line = width or max(2, round(min(w, h) * 0.01))
    draw = ImageDraw.Draw(img)
    for box in boxes:
        x1, y1, x2, y2 = _to_pixels(box, w, h, normalized)
        dx, dy = (x2 - x1) * pad, (y2 - y1) * pad
        rect = [max(0, x1 - dx), max(0, y1 - dy), min(w - 1, x2 + dx), min(h - 1, y2 + dy)]
        if shape == "circle":
            draw.ellipse(rect, outline=color, width=line)
        else:
            draw.rectangle(rect, outline=color, width=line)
    return img


def red_prompt_questions(questions: list[dict[str, Any]], out_dir: str | Path, base: str | Path = ".",
                         shape: str = "circle") -> list[dict[str, Any]]:
    """Copies of questions whose ``boxes`` are drawn on their image (written to ``out_dir``), RED variant."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for q in questions:
        q = dict(q)
        if q.get("boxes") and q.get("image"):
            src = Path(q["image"])
            src = src if src.is_absolute() else Path(base) / src
            dst = out_dir / f"{src.stem}_red_{q['question_id']}.png"
            draw_visual_prompt(src, q["boxes"], shape=shape).save(dst)
            q["image"] = str(dst)
            q["source"] = f"{q.get('source', 'questions')}_red"
        out.append(q)
    return out
