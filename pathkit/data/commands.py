"""``pathkit data import``: public VQA data in its published layout -> questions JSONL, images, LLaVA train file."""

from __future__ import annotations

from pathlib import Path

import typer

data = typer.Typer(help="Bring data in the layouts the field publishes it into pathkit's files.",
                   no_args_is_help=True)


@data.command("import")
def import_cmd(
    fmt: str = typer.Argument(..., metavar="FORMAT",
                              help="llava, pathvqa, pmc-vqa, quilt-vqa, wsi-bench or slidebench"),
    src: Path = typer.Argument(..., help="a file of the format, or a folder of them (e.g. a Hugging Face "
                               "dataset download with data/*.parquet)"),
    out: Path = typer.Option(..., "--out", help="output folder: questions.jsonl, train.json, images/, "
                             "failures.jsonl, summary.json"),
    image_folder: Path = typer.Option(None, "--image-folder", help="folder image paths are relative to "
                                      "(default: beside each source file, or its images/ subfolder)"),
    split: str = typer.Option(None, "--split", help="treat every source file as this split (train, validation, "
                              "test); default: from the file names, e.g. train-00000-of-00001.parquet"),
) -> None:
    """Import SRC: test rows -> OUT/questions.jsonl (the evaluation contract), training rows -> OUT/train.json
    (LLaVA), every image once under OUT/images/.

    A bad row is one line in OUT/failures.jsonl naming the file, row and field, and the import goes on (exit
    status 1 at the end); when nothing can be imported the command fails with the first reason.
    """
    from pathkit.data.importers import import_data

    summary = import_data(fmt, src, out, image_folder=image_folder, split=split)
    typer.echo(summary.line())
    if summary.failed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.add_typer(data, name="data")
