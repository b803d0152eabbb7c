"""The ``pathkit`` command. Each area registers its own subcommands from ``pathkit/<area>/commands.py``.

Commands import heavy libraries (torch, openslide, av) inside their bodies so ``pathkit --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from pathkit.config import ConfigError
from pathkit.io import PathkitError, one_line

app = typer.Typer(
    name="pathkit",
    help="Build pathology multimodal assistants: slides, videos, instruction data, training, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order of the help listing.
AREAS = ("synthetic", "wsi", "video", "instruct", "curate", "data", "train", "eval", "serve", "sweep")


@app.callback()
def _root() -> None:
    """pathkit: slides, videos, instruction data, training and evaluation for pathology assistants."""


@app.command("config")
def show_config(
    preset: str = typer.Argument("tiny", help="tiny, gpu, paper, or a YAML file"),
    set_: list[str] = typer.Option(None, "--set", help="override a field: --set llm.lora_r=8 (learning rates and "
                                   "batch sizes are recipe stage fields: pathkit train --set STAGE.lr=1e-4)"),
) -> None:
    """Print a preset (or a YAML config with overrides) as YAML."""
    from pathkit.config import load_config, parse_set

    typer.echo(load_config(preset, parse_set(set_)).to_yaml(), nl=False)


def _register_areas() -> None:
    for area in AREAS:
        try:
            module = importlib.import_module(f"pathkit.{area}.commands")
        except ModuleNotFoundError as err:
            if err.name == f"pathkit.{area}.commands":
                continue  # area has no commands yet
            raise
        module.register(app)


_register_areas()


def main() -> None:
    """Entry point: bad input ends with one line on stderr (``error: file: reason``) and exit status 2."""
    try:
        app()
    except (PathkitError, ConfigError, FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {one_line(err)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
