"""``pathkit train RECIPE --preset tiny|gpu|paper [--set key=value ...] --out DIR``."""

from __future__ import annotations

from pathlib import Path

import typer


def train_command(
    recipe: str = typer.Argument(..., help="quilt_llava, pa_llava, wsi_llava, huatuo_vision, or a recipe YAML file"),
    preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes), gpu (one GPU) or paper"),
    set_: list[str] = typer.Option(None, "--set", help="override: a Config field (train.strategy=ddp, "
                                   "llm.lora_r=8) or a stage field (<stage>.lr=1e-4, <stage>.grad_accum=4, "
                                   "*.epochs=1); a key that nothing reads is an error"),
    out: Path = typer.Option(..., "--out", help="output folder: stages, checkpoints, logs, summary.json"),
    data: Path = typer.Option(None, "--data", help="workdir with synthetic/ and wsi/ data (default: --out)"),
    no_resume: bool = typer.Option(False, "--no-resume", help="start every stage from scratch"),
    checkpoint_every: int = typer.Option(20, "--checkpoint-every", help="optimiser steps between last.ckpt"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Lightning progress bars"),
) -> None:
    """Train every stage of RECIPE in order, evaluate on the held-out split, write OUT/summary.json.

    A restart with the same --out reuses finished stages and resumes an interrupted one from its last.ckpt.
    """
    import json

    from pathkit.config import Config, parse_set
    from pathkit.train.recipes import get_recipe
    from pathkit.train.runner import run_recipe, with_overrides

    cfg, rec = with_overrides(Config.from_name(preset), get_recipe(recipe, preset), parse_set(set_))
    summary = run_recipe(rec, cfg, out, resume=not no_resume, data_dir=data, checkpoint_every=checkpoint_every,
                         progress=progress)
    keys = ("closed_accuracy", "yes_no_accuracy", "choice_accuracy", "open_recall", "train_seconds")
    typer.echo(json.dumps({k: summary.get(k) for k in keys if k in summary}))
    typer.echo(f"summary: {Path(out) / 'summary.json'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
