"""``pathkit train RECIPE --preset P [--train-data [STAGE=]FILE ...] [--image-folder DIR]
[--eval-questions Q.jsonl] [--skip-bad-records] [--set key=value ...] --out DIR`` and ``pathkit train RECIPE --stages``."""

from __future__ import annotations

from pathlib import Path

import typer


def parse_train_data(values: list[str] | None, stage_names: list[str]) -> str | dict[str, str] | None:
    """``--train-data`` values: one ``FILE`` for every stage, and/or ``STAGE=FILE`` for one stage."""
    if not values:
        return None
    every: str | None = None
    per_stage: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in stage_names:
            per_stage[name] = path
        elif sep and "/" not in name and not Path(value).exists():
            raise typer.BadParameter(f"--train-data {value}: no stage {name!r}; stages: {stage_names}")
        else:
            every = value
    if every is None:
        return per_stage
    return {name: per_stage.get(name, every) for name in stage_names}


def check_extra_closed_not_set(changes: dict, recipe, files: dict[str, str]) -> None:
    """``--set STAGE.data.extra_closed=N`` for a stage trained on a given file is an error: the extra closed
    questions are written only into the tutorial's synthetic tile files, so the setting would change nothing."""
    from pathkit.io import PathkitError
    from pathkit.train.recipes import split_overrides

    _, stage_changes = split_overrides(changes, [recipe])
    for key, value in stage_changes.items():
        name, _, field_path = key.partition(".")
        hit = [s for s in (files if name == "*" else [name]) if s in files]
        if field_path == "data.extra_closed" and value not in (0, "0") and hit:
            raise PathkitError(f"--set {key}={value}: extra closed questions are made only for the tutorial's "
                               f"synthetic tiles; stage {hit[0]} trains on {files[hit[0]]} as it is")


def train_command(
    recipe: str = typer.Argument(..., help="quilt_llava, pa_llava, wsi_llava, huatuo_vision, or a recipe YAML file"),
    preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes), gpu (one GPU) or paper"),
    train_data: list[str] = typer.Option(None, "--train-data", help="LLaVA JSON or JSONL training file for every "
                                         "stage, or STAGE=FILE for one stage (default: the tutorial's synthetic "
                                         "data under --data)"),
    image_folder: Path = typer.Option(None, "--image-folder", help="where relative image paths resolve "
                                      "(LLaVA's --image_folder; default: each file's folder)"),
    eval_questions: Path = typer.Option(None, "--eval-questions", help="questions JSONL answered and scored "
                                        "at the end (default with --train-data: none)"),
    skip_bad_records: bool = typer.Option(False, "--skip-bad-records", help="train on the good records and "
                                          "write the bad ones to OUT/bad_records.jsonl (default: stop)"),
    stages: bool = typer.Option(False, "--stages", help="list each stage's name, kind and data view, and exit"),
    set_: list[str] = typer.Option(None, "--set", help="override: a Config field (train.strategy=ddp, "
                                   "llm.lora_r=8) or a stage field (<stage>.lr=1e-4, <stage>.grad_accum=4, "
                                   "*.epochs=1); where a stage and a Config section share a name (pa_llava's "
                                   "clip), the field decides, or write stage.clip.lr / config.clip.embed_dim; "
                                   "a key that nothing reads is an error"),
    data_seed: int = typer.Option(None, "--data-seed", help="which synthetic data set (synthetic.seed); the "
                                  "training seed is --set seed=N"),
    out: Path = typer.Option(None, "--out", help="output folder: stages, checkpoints, logs, summary.json"),
    data: Path = typer.Option(None, "--data", help="workdir with synthetic/ and wsi/ data (default: --out)"),
    no_resume: bool = typer.Option(False, "--no-resume", help="start every stage from scratch"),
    checkpoint_every: int = typer.Option(20, "--checkpoint-every", help="optimiser steps between last.ckpt"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Lightning progress bars"),
) -> None:
    """Train every stage of RECIPE in order on its training file, evaluate, write OUT/summary.json.

    Each stage takes its view of the file's records (captions, describe, instruct or pairs: see --stages).
    Every file is validated before training: a bad record stops the run with one line per problem, unless
    --skip-bad-records. A restart with the same --out reuses finished stages and resumes an interrupted one.
    """
    import json
    import sys

    from pathkit.config import Config, parse_set
    from pathkit.eval.recipe_run import train_and_evaluate
    from pathkit.io import PathkitError
    from pathkit.train.recipes import get_recipe, with_overrides
    from pathkit.train.records import BadRecordsError

    changes = parse_set(set_)
    if data_seed is not None:
        changes["synthetic.seed"] = data_seed
    cfg, rec = with_overrides(Config.from_name(preset), get_recipe(recipe, preset), changes)
    if stages:
        for row in rec.table():
            typer.echo(f"{row['stage']:<22} {row['kind']:<12} view={row['view']:<9} trains={row['trains']}")
        return
    if out is None:
        raise PathkitError("pathkit train: --out DIR is required (or --stages to list the stages)")
    files = parse_train_data(train_data, [s.name for s in rec.stages])
    if files:
        check_extra_closed_not_set(changes, rec, files)
    # the tutorial's data comes with its held-out questions; a user's files are evaluated when questions are given
    tutorial = files is None or any(s.name not in files and not s.data.path for s in rec.stages)
    evaluate = eval_questions is not None or tutorial
    try:
        summary = train_and_evaluate(rec, cfg, out, files, eval_questions, data_dir=data, evaluate=evaluate,
                                     image_folder=image_folder, skip_bad_records=skip_bad_records,
                                     resume=not no_resume, checkpoint_every=checkpoint_every, progress=progress)
    except BadRecordsError as err:
        for line in err.problems:
            typer.echo(line, err=True)
        raise
    if (Path(out) / "bad_records.jsonl").exists():
        n = sum(1 for _ in open(Path(out) / "bad_records.jsonl"))
        typer.echo(f"skipped {n} bad record(s): {Path(out) / 'bad_records.jsonl'}", err=True)
    try:
        from pathkit.viz.training_figures import plot_recipe_curves

        plot_recipe_curves(out, Path(out) / "curves.png")
    except Exception as err:  # a figure must never fail a training run
        typer.echo(f"curves.png not drawn: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                   err=True)
    keys = ("closed_accuracy", "yes_no_accuracy", "choice_accuracy", "open_recall", "train_seconds")
    typer.echo(json.dumps({k: summary.get(k) for k in keys if k in summary}))
    typer.echo(f"summary: {Path(out) / 'summary.json'}")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
