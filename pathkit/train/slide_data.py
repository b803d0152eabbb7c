"""Slide-level training and evaluation data for WSI-LLaVA: feature bags + reports -> LLaVA records and questions.

The slides, their tile coordinates and features come from the slide pipeline
(:func:`pathkit.wsi.pipeline.ensure_wsi_features`: synthetic slides -> tissue tiles at the configured mpp -> tile
encoder features in HDF5, DESIGN.md contract). Each LLaVA record's ``image`` is the slide's feature file, as in
WSI-LLaVA's data (``"image": "TCGA-.../<uuid>.pt"``). From each slide's ground truth (diagnosis + report):

* ``captions``: ``<image>`` -> the report (projector alignment on slide-report pairs);
* ``describe``: a report-writing instruction -> the report;
* ``instruct``: WSI-Bench-style questions: the 4-way diagnosis as a lettered choice (options in a fixed order),
  a yes/no question about one diagnosis (balanced), an open "what is the diagnosis" and the report.

Held-out split: within each diagnosis, every fourth slide (sorted by name), so the held-out diagnoses are
balanced and 4-way chance is 0.25.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pathkit.io import PathkitError

REPORT_PROMPTS = ("Write the pathology report for this whole-slide image.",
                  "Describe the findings in this slide.",
                  "Generate a diagnostic report for this slide.")


def diagnoses() -> list[str]:
    from pathkit.synthetic.slides import DIAGNOSES

    return list(DIAGNOSES)


def slide_data_root(cfg, data_dir: str | Path) -> Path:
    """``data_dir`` when the slide settings are the preset's (shared with the slide notebooks), else a sibling
    folder named after them, so a recipe that asks for more or smaller slides never rewrites the shared set."""
    from pathkit.config import Config

    data_dir = Path(data_dir)
    s, ref = cfg.synthetic, Config.from_name(cfg.preset).synthetic
    if (s.slide_count, s.slide_size, s.slide_mpp) == (ref.slide_count, ref.slide_size, ref.slide_mpp):
        return data_dir
    return data_dir / f"slides_{s.slide_count}x{s.slide_size}"


def slide_set(cfg, data_dir: str | Path) -> list[dict[str, Any]]:
    """Slide records (slide, features, diagnosis, report, split) from the slide pipeline; built when missing."""
    from pathkit.wsi.pipeline import ensure_wsi_features

    records = ensure_wsi_features(slide_data_root(cfg, data_dir), cfg, seed=cfg.seed)
    by_dx: dict[str, list[dict[str, Any]]] = {}
    for rec in sorted(records, key=lambda r: Path(r["slide"]).name):
        by_dx.setdefault(rec["diagnosis"], []).append(rec)
    out = []
    for recs in by_dx.values():
        for i, rec in enumerate(recs):
            out.append({**rec, "id": Path(rec["slide"]).stem, "split": "heldout" if i % 4 == 0 else "train"})
    return sorted(out, key=lambda r: r["id"])


def slide_questions_for(rec: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """Questions about one slide record (its ``diagnosis``); see :func:`pathkit.synthetic.text.slide_questions`."""
    from pathkit.synthetic.text import slide_questions as questions

    return questions(rec["diagnosis"], index, diagnoses())


def slide_records(cfg, data_dir: str | Path, fmt: str, split: str = "train") -> list[dict[str, Any]]:
    """LLaVA records (``image`` = the slide's feature file) for a stage's data format."""
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(r for r in slide_set(cfg, data_dir) if r["split"] == split):
        base = {"image": rec["features"], "label": rec["diagnosis"]}
        if fmt in ("captions", "describe"):
            question = "<image>\n" if fmt == "captions" else f"<image>\n{REPORT_PROMPTS[i % len(REPORT_PROMPTS)]}"
            out.append({**base, "id": f"{rec['id']}_report", "conversations": [
                {"from": "human", "value": question}, {"from": "gpt", "value": rec["report"]}]})
        elif fmt == "instruct":
            for k, q in enumerate(slide_questions_for(rec, i) + slide_questions_for(rec, i + 1)[1:2]):
                out.append({**base, "id": f"{rec['id']}_{q['category']}_{k}", "conversations": [
                    {"from": "human", "value": f"<image>\n{q['text']}"}, {"from": "gpt", "value": q["answer"]}]})
            out.append({**base, "id": f"{rec['id']}_report", "conversations": [
                {"from": "human", "value": f"<image>\n{REPORT_PROMPTS[i % len(REPORT_PROMPTS)]}"},
                {"from": "gpt", "value": rec["report"]}]})
        else:
            raise PathkitError(f"slide_records: format {fmt!r} must be captions, describe or instruct")
    return out


def slide_questions(cfg, data_dir: str | Path, split: str = "heldout") -> list[dict[str, Any]]:
    """Evaluation questions (DESIGN.md format, ``image`` = feature file) for the slides of ``split``."""
    out = []
    for i, rec in enumerate(r for r in slide_set(cfg, data_dir) if r["split"] == split):
        for q in slide_questions_for(rec, i):
            out.append({"question_id": f"{rec['id']}_{q['category']}", "image": rec["features"],
                        "label": rec["diagnosis"], **q})
    return out
