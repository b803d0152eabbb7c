"""Train a recipe on its files, then answer and score its evaluation questions: ``pathkit train`` in Python.

:func:`train_and_evaluate` is what the ``pathkit train`` command and the notebooks call:

    summary = train_and_evaluate(recipe, cfg, out_dir, train_data="train.json", eval_questions="questions.jsonl")
    summary = train_and_evaluate(recipe, cfg, out_dir, data_dir=workdir)   # the tutorial's synthetic files

It trains with :func:`pathkit.train.runner.run_recipe` (files in, model folders out), answers the questions with
the last VLM stage's model (:func:`pathkit.eval.answers.answer_questions`), writes ``out_dir/eval/answers.jsonl``
(LLaVA's answer format) and adds the scores (:func:`pathkit.eval.score.summary_scores`) to ``summary.json``.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch.distributed as dist

from pathkit.config import Config
from pathkit.eval.answers import answer_questions
from pathkit.eval.score import read_questions, summary_scores
from pathkit.io import write_json, write_jsonl
from pathkit.models.clip import PathologyCLIP
from pathkit.models.vlm import VisionLanguageModel
from pathkit.train.contrastive import train_clip
from pathkit.train.recipes import Recipe
from pathkit.train.runner import final_vlm_config, run_recipe
from pathkit.workdir import clip_pairs, tutorial_data


def evaluate_run(recipe: Recipe, cfg: Config, out_dir: str | Path, questions_file: str | Path, model: Any = None,
                 max_questions: int | None = None) -> dict[str, Any]:
    """Greedy answers of a finished run's last VLM model to ``questions_file``; returns the scores.

    Question images resolve relative to the questions file. Writes ``out_dir/eval/answers.jsonl``."""
    out_dir, questions_file = Path(out_dir), Path(questions_file)
    questions = read_questions(questions_file)
    base = questions_file.parent
    for q in questions:
        if q.get("image"):
            q["image"] = os.path.normpath(Path(q["image"]) if Path(q["image"]).is_absolute() else base / q["image"])
    if max_questions:
        questions = questions[:max_questions]
    if model is None:
        model = VisionLanguageModel.from_pretrained(out_dir / final_vlm_stage(recipe) / "model")
    answers = answer_questions(model, questions, final_vlm_config(cfg, recipe))
    rows = [{"question_id": q["question_id"], "prompt": q["text"], "text": a, "answer_id": str(i),
             "model_id": recipe.name, "metadata": {"answer": q["answer"], "answer_type": q["answer_type"],
                                                   "category": q.get("category")}}
            for i, (q, a) in enumerate(zip(questions, answers))]
    write_jsonl(out_dir / "eval" / "answers.jsonl", rows)
    return summary_scores(questions, answers)


def final_vlm_stage(recipe: Recipe) -> str:
    return [s.name for s in recipe.stages if s.kind == "vlm"][-1]


def train_and_evaluate(recipe: Recipe, cfg: Config, out_dir: str | Path,
                       train_data: str | Path | dict[str, str | Path] | None = None,
                       eval_questions: str | Path | None = None, *, data_dir: str | Path | None = None,
                       evaluate: bool = True, image_folder: str | Path | None = None,
                       skip_bad_records: bool = False, **run_kwargs: Any) -> dict[str, Any]:
    """Train every stage, evaluate, write ``summary.json``; returns the summary.

    Stages without a file (neither in ``train_data`` nor their ``DataSpec.path``), and the questions when
    ``eval_questions`` is None, come from the tutorial's synthetic data under ``data_dir`` (default
    ``out_dir``): :func:`pathkit.workdir.tutorial_data`. ``run_kwargs`` go to
    :func:`pathkit.train.runner.run_recipe` (``resume``, ``checkpoint_every``, ``stop_after_steps``,
    ``progress``)."""
    out_dir = Path(out_dir)
    given = {} if train_data is None else (
        dict(train_data) if isinstance(train_data, dict) else {s.name: train_data for s in recipe.stages})
    need_files = any(not (given.get(s.name) or s.data.path) for s in recipe.stages)
    warn_extra_closed_ignored(recipe, [s.name for s in recipe.stages if given.get(s.name) or s.data.path])
    if need_files or (evaluate and eval_questions is None):
        tutorial = tutorial_data(recipe, cfg, data_dir if data_dir is not None else out_dir)
        given = {s.name: given.get(s.name) or s.data.path or tutorial["train"][s.name] for s in recipe.stages}
        eval_questions = eval_questions or tutorial["questions"]
    summary = run_recipe(recipe, cfg, out_dir, given, image_folder=image_folder,
                         skip_bad_records=skip_bad_records, **run_kwargs)
    if "interrupted" in summary or not _is_rank_zero():
        return summary
    if evaluate and eval_questions is not None:
        t0 = time.perf_counter()
        summary.update(evaluate_run(recipe, cfg, out_dir, eval_questions))
        summary["eval_seconds"] = round(time.perf_counter() - t0, 2)
        summary["eval_questions"] = str(eval_questions)
    write_json(out_dir / "summary.json", summary)
    return summary


def warn_extra_closed_ignored(recipe: Recipe, stages_with_files: list[str]) -> None:
    """Warn once when a stage that trains on a given file asks for ``extra_closed`` questions: they are written
    only into the tutorial's synthetic tile files (from each tile's ground-truth label, which a user's file
    does not have), so the file is trained on as it is."""
    named = [f"{s.name} (extra_closed={s.data.extra_closed})" for s in recipe.stages
             if s.name in stages_with_files and s.data.extra_closed]
    if named:
        warnings.warn(f"{', '.join(named)}: extra closed questions are made only for the tutorial's synthetic "
                      "tiles; a given training file is trained on as it is", stacklevel=3)


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def ensure_clip(workdir: str | Path, cfg: Config, seed: int = 0, source: str = "tiles", progress: bool = False,
                **train_kwargs: Any):
    """The CLIP under ``workdir/clip`` (``workdir/clip_slides`` for slides): loaded when complete
    (``metrics.json`` present), else trained there on the tutorial's pairs first (notebook 06)."""
    out_dir = Path(workdir) / ("clip" if source == "tiles" else "clip_slides")
    if not ((out_dir / "metrics.json").is_file() and (out_dir / "model" / "clip_config.json").is_file()):
        pairs, heldout = clip_pairs(cfg, workdir, source)
        train_clip(cfg, out_dir, pairs, source=source, heldout_pairs=heldout, seed=seed, progress=progress,
                   **train_kwargs)
    return PathologyCLIP.from_pretrained(out_dir / "model")
