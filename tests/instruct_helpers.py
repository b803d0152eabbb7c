"""Shared helpers for the instruct tests: small input files with structured ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_inputs(folder: Path, n: int = 6, with_images: bool = True) -> Path:
    """IN.jsonl with n rows mixing generic, narratives-shaped and tile-metadata-shaped rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = f"img_{i}.png"
        if with_images:
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / img)
        if i % 3 == 0:
            rows.append({"id": f"item-{i}", "image": img,
                         "caption": f"Sheets of atypical cells with necrosis number {i}. Mitoses are frequent.",
                         "groundings": [{"text": "atypical cells", "start": 0.0, "end": 1.0,
                                         "box": [10, 20, 110, 90]}],
                         "width": 200, "height": 100,
                         "facts": {"diagnosis": "adenocarcinoma", "clues": ["gland formation"]}})
        elif i % 3 == 1:
            rows.append({"video": "case_a.mp4", "chunk": i, "frame": img, "width": 32, "height": 32,
                         "caption": f"Lymph node with reactive follicles, chunk {i}.", "cursor": [],
                         "groundings": [{"text": "follicles", "start": 0, "end": 1, "box": [1, 2, 20, 30]}]})
        else:
            rows.append({"id": f"tile-{i}", "image": img, "label": "tumor", "split": "train",
                         "attributes": {"nuclear_density": 0.5 + i / 100, "grade": 2},
                         "caption": f"Tumor tissue with grade 2 nuclei, tile {i}."})
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def expected_ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        ids.append(row.get("id") or f"{Path(row['video']).stem}-{row['chunk']}")
    return ids
