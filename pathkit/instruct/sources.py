"""Generation inputs from pathkit's synthetic data: narratives with whole-video facts, tiles, slide reports.

Quilt-Instruct feeds every prompt the chunk's grounded caption AND facts about the whole video (its diagnosis
and the clues that support it, which GPT-4 extracted from the full transcript). The synthetic lectures know
their truth, so here the facts come from it: each utterance has a tissue label; the video's dominant label is
mapped to a slide-level diagnosis the way the synthetic slides define them (``pathkit.synthetic.slides
.DIAGNOSES``) and the clues are the narrator's sentences about that label from anywhere in the video.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pathkit.io import read_json, read_jsonl
from pathkit.synthetic.slides import DIAGNOSES, SlideTruth
from pathkit.synthetic.text import report_for_slide
from pathkit.synthetic.tissue import CLASSES


def video_facts(truth_path: str | Path) -> dict[str, Any]:
    """{"diagnosis", "clues", "choices"} of one synthetic lecture from its ``.truth.json``."""
    truth = read_json(truth_path)
    diagnoses = dict(DIAGNOSES)
    label_to_dx = {label: dx for dx, labels in diagnoses.items() for label in labels}
    labels = Counter(u.get("label") for u in truth.get("utterances", []) if u.get("label") in label_to_dx)
    facts: dict[str, Any] = {"choices": sorted(diagnoses)}
    if labels:
        top = labels.most_common(1)[0][0]
        facts["diagnosis"] = label_to_dx[top]
        clues = [u["text"] for u in truth["utterances"] if u.get("label") in diagnoses[facts["diagnosis"]]]
        facts["clues"] = list(dict.fromkeys(clues))[:4]
    return facts


def narratives_with_facts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Narratives rows (as they are) plus ``facts`` from each video's ``<stem>.truth.json`` when it exists."""
    cache: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        video = Path(str(row.get("video", "")))
        truth = video.with_suffix(".truth.json")
        if str(truth) not in cache:
            cache[str(truth)] = video_facts(truth) if truth.is_file() else {}
        out.append({**row, "facts": cache[str(truth)]} if cache[str(truth)] else dict(row))
    return out


def tile_rows(tile_root: str | Path, split: str | None = "train", limit: int | None = None) -> list[dict[str, Any]]:
    """Synthetic tile metadata rows with absolute image paths (id, image, label, attributes, caption)."""
    root = Path(tile_root)
    rows = [r for r in read_jsonl(root / "metadata.jsonl") if split is None or r.get("split") == split]
    rows = [{**r, "image": str(root / r["image"])} for r in rows]
    return rows[:limit] if limit else rows


def slide_report_rows(slides_root: str | Path | None = None, n: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """One row per slide: id, report, diagnosis (facts), image (the slide path, or its feature file later).

    Uses the slides under ``slides_root`` when their manifest exists; otherwise writes only the reports
    (``pathkit.synthetic.text.report_for_slide`` with random tissue fractions): no pixels, seconds not minutes.
    """
    diagnoses = dict(DIAGNOSES)
    manifest = Path(slides_root) / "slides.jsonl" if slides_root else None
    if manifest is not None and manifest.is_file():
        out = []
        for r in read_jsonl(manifest):
            t = SlideTruth.load(r["slide"])
            out.append({"id": Path(t.slide).stem, "image": t.slide, "report": t.report,
                        "facts": {"diagnosis": t.diagnosis, "choices": sorted(diagnoses)}})
        return out

    rng = np.random.default_rng(seed)
    names = sorted(diagnoses)
    out = []
    for i in range(n):
        dx = names[i % len(names)]
        fractions = {c: float(rng.uniform(0.0, 0.15)) for c in CLASSES}
        for c in diagnoses[dx]:
            fractions[c] = float(rng.uniform(0.4, 0.7)) / len(diagnoses[dx])
        total = sum(fractions.values())
        report = report_for_slide(dx, {c: f / total for c, f in fractions.items()}, rng)
        out.append({"id": f"report_{i:03d}", "report": report, "facts": {"diagnosis": dx, "choices": names}})
    return out
