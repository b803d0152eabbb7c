"""The tutorial's data as files: synthetic tiles and slides -> LLaVA JSON training files and questions JSONL.

Training reads only files (``pathkit train --train-data FILE``); this module is the producer the tutorial uses
when no file is given. For a recipe, :func:`tutorial_data` builds (or reuses) the synthetic data a stage's
``DataSpec`` names and returns one training file per stage and the held-out questions file:

* tiles (:func:`pathkit.synthetic.tiles.ensure_tile_dataset`): ``train_captions.json`` (one ``<image>`` ->
  caption record per tile: the ``captions`` and ``describe`` views), ``train_pairs.json`` (the same, and the
  held-out tiles marked ``"split": "heldout"`` for the contrastive stage's retrieval scores),
  ``train_llava.json`` (the ``instruct`` view), ``train_instruct_closed<N>.json`` (``train_llava.json`` plus N single-turn closed questions
  per tile from its ground-truth label: PA-LLaVA's ``extra_closed``), ``heldout_questions.jsonl``;
* slides (:func:`pathkit.workdir.ensure_wsi_features`): ``wsi/llava/train_<format>.json`` whose ``image`` is
  the slide's feature file, ``wsi/llava/pairs.json`` (every slide and its report, for the WSI-text contrastive
  stage) and ``wsi/llava/heldout_questions.jsonl``.

Data sets are keyed by their settings and the data seed (``cfg.synthetic.seed``, not the training seed
``cfg.seed``): the preset's set with data seed 0 lives at ``<data>/synthetic/tiles`` (shared with the
notebooks), any other beside it under its own name, so a run never rebuilds a folder another run reads. Builds
hold a lock (:func:`pathkit.io.folder_lock`); tiles are built in a temporary folder renamed into place.

Slide splits: within each diagnosis every fourth slide (sorted by name) is held out, so held-out diagnoses are
balanced and 4-way chance is 0.25.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pathkit.config import Config
from pathkit.io import PathkitError, folder_lock, read_json, write_json, write_jsonl
from pathkit.models.encoders import load_encoder
from pathkit.synthetic.slides import DIAGNOSES, ensure_slide_set
from pathkit.synthetic.text import choice_question, questions_for
from pathkit.synthetic.text import slide_questions as questions_about_slide
from pathkit.synthetic.tiles import TileDataset, ensure_tile_dataset
from pathkit.wsi.pipeline import extract_features, tile_slides

REPORT_PROMPTS = ("Write the pathology report for this whole-slide image.",
                  "Describe the findings in this slide.",
                  "Generate a diagnostic report for this slide.")


# ------------------------------------------------------------------------------------------------ tiles


def tile_root(cfg: Config, data_dir: str | Path) -> Path:
    """Where the tile set of ``cfg.synthetic`` lives: ``synthetic/tiles`` for the preset's set at data seed 0,
    else a sibling named after its seed and sizes."""
    s, ref = cfg.synthetic, Config.from_name(cfg.preset).synthetic
    key = (s.seed, s.tile_size, s.tiles_per_class, s.heldout_fraction)
    base = Path(data_dir) / "synthetic"
    if key == (0, ref.tile_size, ref.tiles_per_class, ref.heldout_fraction):
        return base / "tiles"
    return base / f"tiles_s{s.seed}_{s.tile_size}px_{s.tiles_per_class}x_h{s.heldout_fraction:g}"


def tile_set(cfg: Config, data_dir: str | Path, progress: bool = False) -> TileDataset:
    return ensure_tile_dataset(tile_root(cfg, data_dir), cfg.synthetic, seed=cfg.synthetic.seed, progress=progress)


def closed_question_records(rows: list[dict[str, Any]], per_image: int, seed: int = 0) -> list[dict[str, Any]]:
    """Single-turn closed questions about labelled images, from the synthetic data's own question generator.

    For each row (``image``, ``label``, ``attributes``) ``per_image`` questions alternate a yes/no question about
    the true class or another one (balanced) and a lettered choice with freshly drawn options."""
    out = []
    for i, row in enumerate(rows):
        rng = np.random.default_rng([seed, 7, i])
        for k in range(per_image):
            if k % 2 == 0:
                q = questions_for(row["label"], row.get("attributes", {}), rng, yes=(k // 2 + i) % 2 == 0)[0]
            else:
                q = choice_question(row["label"], rng)
            out.append({"id": f"{row.get('id', i)}_closed_{k}", "image": row["image"], "label": row["label"],
                        "kind": "closed", "conversations": [{"from": "human", "value": f"<image>\n{q['text']}"},
                                                            {"from": "gpt", "value": q["answer"]}]})
    return out


def tile_train_file(cfg: Config, data_dir: str | Path, fmt: str, extra_closed: int = 0, split: str = "train"
                    ) -> Path:
    """The tile set's LLaVA file for a stage's data format (built when missing)."""
    ds = tile_set(cfg, data_dir)
    if split != "train" and fmt != "instruct":
        raise PathkitError(f"tile data: split {split!r} has no {fmt} file (train only)")
    if fmt in ("captions", "describe"):
        return ds.paths["train_captions"]
    if fmt == "pairs":  # the training captions, and the held-out tiles marked for the retrieval scores
        path = ds.root / "train_pairs.json"
        if not path.is_file():
            held = [{"id": r["id"], "image": r["image"], "label": r["label"], "split": "heldout",
                     "conversations": [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": r["caption"]}]}
                    for r in ds.metadata("heldout")]
            write_json(path, read_json(ds.paths["train_captions"]) + held, indent=1)
        return path
    if fmt != "instruct":
        raise PathkitError(f"tile data: format {fmt!r} must be captions, describe, instruct or pairs")
    if not extra_closed:
        return ds.paths[f"{split}_llava"]
    path = ds.root / f"{split}_instruct_closed{extra_closed}.json"
    if not path.is_file():  # a pure function of the set: concurrent writers write the same bytes, atomically
        rows = ds.metadata(split)
        records = ds.llava(split) + closed_question_records(rows, extra_closed, seed=cfg.synthetic.seed)
        write_json(path, records, indent=1)
    return path


# ------------------------------------------------------------------------------------------------ slides


def slide_root(cfg: Config, data_dir: str | Path) -> Path:
    """``data_dir`` when the slide settings are the preset's at data seed 0 (shared with the slide notebooks),
    else a sibling folder named after them, so a recipe that asks for more or smaller slides, or another data
    seed, never rewrites the shared set."""
    data_dir = Path(data_dir)
    s, ref = cfg.synthetic, Config.from_name(cfg.preset).synthetic
    same = (s.slide_count, s.slide_size, s.slide_mpp) == (ref.slide_count, ref.slide_size, ref.slide_mpp)
    if same and s.seed == 0:
        return data_dir
    return data_dir / (f"slides_{s.slide_count}x{s.slide_size}" + (f"_s{s.seed}" if s.seed else ""))


def slide_features(cfg: Config, data_dir: str | Path) -> list[dict[str, Any]]:
    """The slide pipeline's records (slide, coords, features, diagnosis, report) in slide-set order; built
    under a lock when missing."""
    root = slide_root(cfg, data_dir)
    with folder_lock(root / "wsi"):
        return ensure_wsi_features(root, cfg, seed=cfg.synthetic.seed)


def slide_set(cfg: Config, data_dir: str | Path) -> list[dict[str, Any]]:
    """Slide records (slide, features, diagnosis, report, split, id), sorted by id; built when missing."""
    records = slide_features(cfg, data_dir)
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
    return questions_about_slide(rec["diagnosis"], index, list(DIAGNOSES))


def slide_records(slides: list[dict[str, Any]], fmt: str, split: str = "train") -> list[dict[str, Any]]:
    """LLaVA records (``image`` = the slide's feature file) for a stage's data format."""
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(r for r in slides if r["split"] == split):
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


def slide_questions(cfg: Config, data_dir: str | Path, split: str = "heldout") -> list[dict[str, Any]]:
    """Evaluation questions (DESIGN.md format, ``image`` = feature file) for the slides of ``split``."""
    out = []
    for i, rec in enumerate(r for r in slide_set(cfg, data_dir) if r["split"] == split):
        for q in slide_questions_for(rec, i):
            out.append({"question_id": f"{rec['id']}_{q['category']}", "image": rec["features"],
                        "label": rec["diagnosis"], **q})
    return out


def _relative(records: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Records with ``image`` relative to ``folder`` (the file's own folder: the file moves with its data)."""
    return [{**r, "image": os.path.relpath(r["image"], folder)} for r in records]


def slide_train_file(cfg: Config, data_dir: str | Path, fmt: str, split: str = "train") -> Path:
    """The slide set's LLaVA file for a stage's data format (``pairs``: every slide and its report)."""
    folder = slide_root(cfg, data_dir) / "wsi" / "llava"
    if fmt == "pairs":
        # the contrastive stage aligns every slide with its report (few slides at the tiny preset), in the
        # order the slide set lists them
        records = [{"id": f"{Path(r['slide']).stem}_report", "image": r["features"], "label": r["diagnosis"],
                    "conversations": [{"from": "human", "value": "<image>\n"},
                                      {"from": "gpt", "value": r["report"]}]} for r in slide_features(cfg, data_dir)]
        path = folder / "pairs.json"
    else:
        records = slide_records(slide_set(cfg, data_dir), fmt, split)
        path = folder / f"{split}_{fmt}.json"
    if not path.is_file() or read_json(path) != _relative(records, folder):
        write_json(path, _relative(records, folder), indent=1)
    return path


def slide_questions_file(cfg: Config, data_dir: str | Path, split: str = "heldout") -> Path:
    folder = slide_root(cfg, data_dir) / "wsi" / "llava"
    path = folder / f"{split}_questions.jsonl"
    rows = _relative(slide_questions(cfg, data_dir, split), folder)
    write_jsonl(path, rows)
    return path


def clip_pairs(cfg: Config, data_dir: str | Path, source: str = "tiles"
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(training pairs, held-out pairs or None) for :func:`pathkit.train.contrastive.train_clip`: LLaVA records in
    their ``pairs`` view with absolute paths. Tiles: the train and held-out splits; slides: every slide and its
    report, measured on themselves (few slides at the tiny preset)."""
    def pair(image: str, text: str, label: str, rid: str) -> dict[str, Any]:
        return {"id": rid, "image": image, "label": label, "conversations": [
            {"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": text}]}

    if source == "tiles":
        ds = tile_set(cfg, data_dir)
        train, held = ([pair(str(ds.root / r["image"]), r["caption"], r["label"], r["id"]) for r in ds.metadata(s)]
                       for s in ("train", "heldout"))
        return train, held
    if source == "slides":
        return [pair(r["features"], r["report"], r["diagnosis"], Path(r["slide"]).stem)
                for r in slide_features(cfg, data_dir)], None
    raise PathkitError(f"clip_pairs: source={source!r}: must be tiles or slides")


# ------------------------------------------------------------------------------------------------ recipes


def stage_data_config(cfg: Config, recipe: Any, stage: Any) -> Config:
    """The Config a stage's data is built with: the preset, then the recipe's and the stage's overrides."""
    changes = {**recipe.config, **stage.config}
    return cfg.override(changes) if changes else cfg


def tutorial_data(recipe: Any, cfg: Config, data_dir: str | Path) -> dict[str, Any]:
    """The tutorial's files for every stage of ``recipe``: ``{"train": {stage: path}, "questions": path}``.

    Each stage's file follows its ``DataSpec`` (``source`` tiles or slides, ``format``, ``extra_closed``); the
    questions are the held-out split's, built with the last VLM stage's settings."""
    train: dict[str, Path] = {}
    final = cfg
    for stage in recipe.stages:
        scfg = stage_data_config(cfg, recipe, stage)
        spec = stage.data
        if spec.source == "tiles":
            train[stage.name] = tile_train_file(scfg, data_dir, spec.format, spec.extra_closed, spec.split)
        else:
            train[stage.name] = slide_train_file(scfg, data_dir, spec.format, spec.split)
        if stage.kind == "vlm":
            final = scfg
    if recipe.vision == "slide":
        questions = slide_questions_file(final, data_dir)
    else:
        questions = tile_set(final, data_dir).paths["heldout_questions"]
    return {"train": train, "questions": questions}


def ensure_wsi_features(workdir: str | Path, cfg, seed: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Synthetic slides -> coords -> features under ``workdir`` (reused when complete), for notebooks.

    Layout: ``synthetic/slides/`` (slides + truth), ``wsi/coords/<stem>.h5`` + ``.png``,
    ``wsi/features/<stem>.h5`` (coords + features from ``cfg.wsi.encoder``), ``wsi/features/index.jsonl``.
    Returns one record per slide: slide, coords, features, diagnosis, report, truth (paths as strings).
    """
    workdir = Path(workdir)
    truths = ensure_slide_set(workdir / "synthetic" / "slides", cfg.synthetic, seed)
    coords_dir, feats_dir = workdir / "wsi" / "coords", workdir / "wsi" / "features"
    w = cfg.wsi
    tiled = tile_slides([t.slide for t in truths], coords_dir, mpp=w.mpp, size=w.patch_size,
                        min_tissue=w.min_tissue, overlap=w.overlap, thumbnail_size=w.thumbnail_size,
                        progress=progress)
    if tiled.failed:
        raise PathkitError(f"{coords_dir}: {tiled.line()}")
    extracted = extract_features(coords_dir, w.encoder, feats_dir, load_encoder=load_encoder, batch_size=w.batch_size,
                                 workers=w.num_workers, progress=progress)
    if extracted.failed:
        raise PathkitError(f"{feats_dir}: {extracted.line()}")
    records = []
    for t in truths:
        stem = Path(t.slide).stem
        records.append({"slide": t.slide, "coords": str(coords_dir / f"{stem}.h5"),
                        "features": str(feats_dir / f"{stem}.h5"), "diagnosis": t.diagnosis, "report": t.report,
                        "truth": str(t.truth_path)})
    write_jsonl(feats_dir / "index.jsonl", records)
    if extracted.done:
        write_json(feats_dir / "extract_summary.json", extracted.to_dict())
    return records
