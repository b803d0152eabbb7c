"""``pathkit export MODEL_DIR --format hf-llava --out DIR`` and ``pathkit serve MODEL --port P``."""

from __future__ import annotations

from pathlib import Path

import typer


def export_command(
    model_dir: Path = typer.Argument(..., help="a pathkit model folder (or an HF LLaVA folder)"),
    fmt: str = typer.Option("hf-llava", "--format", help="hf-llava (transformers/vLLM LLaVA folder) or pathkit"),
    out: Path = typer.Option(..., "--out", help="output folder (replaced whole when it exists)"),
) -> None:
    """Write the model where other tools read it: an HF LLaVA folder with LoRA merged, processor, tokenizer
    and chat template. A model LLaVA's layout cannot hold is written as a pathkit folder, and the reason said."""
    from pathkit.io import PathkitError
    from pathkit.serve.export import export_model

    if not model_dir.is_dir():
        raise PathkitError(f"{model_dir}: model folder not found")
    written, reason = export_model(model_dir, out, fmt)
    if reason:
        typer.echo(f"exported as a pathkit folder, not hf-llava: {reason} -> {out}")
    else:
        typer.echo(f"exported {written} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
