"""``pathkit curate``: deduplicate, filter, validate and convert LLaVA instruction data."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pathkit.io import PathkitError, read_json, write_json, write_jsonl

curate = typer.Typer(help="Curate instruction data: dedup, filter, validate, convert to LLaVA JSON.",
                     no_args_is_help=True)


def _read_records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        from pathkit.io import read_jsonl

        return read_jsonl(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise PathkitError(f"{path}: expected a JSON list of records")
    return data


@curate.command("dedup")
def dedup_cmd(
    in_path: Path = typer.Argument(..., help="LLaVA JSON (or JSONL) records"),
    out: Path = typer.Option(..., "--out", help="deduplicated LLaVA JSON"),
    threshold: float = typer.Option(0.9, help="cosine similarity at or above which a caption is a near-duplicate"),
    block_size: int = typer.Option(2048, help="similarities are computed block x block (memory O(block^2))"),
    images: bool = typer.Option(False, "--images", help="also remove near-identical images (perceptual hash)"),
    image_root: Path = typer.Option(None, help="folder image paths are relative to (default: beside IN)"),
    max_distance: int = typer.Option(6, help="pHash Hamming distance at or below which images are duplicates"),
) -> None:
    """Remove exact and near-duplicate captions (all-MiniLM-L6-v2 embeddings, blockwise) and duplicate images.

    Writes OUT and OUT's sibling <stem>.removed.jsonl (index, id, reason, duplicate_of, similarity).
    """
    from pathkit.curate.dedup import dedup_records

    if not 0.0 < threshold <= 1.0:
        raise PathkitError(f"--threshold {threshold}: must be in (0, 1]")
    records = _read_records(in_path)
    kept, report = dedup_records(records, threshold, block_size, images=images,
                                 image_root=image_root or in_path.parent, max_distance=max_distance, progress=True)
    write_json(out, kept)
    write_jsonl(out.with_suffix("").with_name(out.stem + ".removed.jsonl"), report)
    typer.echo(f"kept {len(kept)} of {len(records)}; removed {len(report)} "
               f"({sum(r['reason'] == 'exact' for r in report)} exact, {sum(r['reason'] == 'near' for r in report)} "
               f"near, {sum(r['reason'] == 'image' for r in report)} image) -> {out}")


@curate.command("filter")
def filter_cmd(
    in_path: Path = typer.Argument(..., help="LLaVA JSON (or JSONL) records"),
    out: Path = typer.Option(..., "--out", help="filtered LLaVA JSON"),
    min_words: int = typer.Option(0, help="drop captions shorter than this (PA-LLaVA used 20)"),
    min_hits: int = typer.Option(2, help="distinct pathology-vocabulary words a caption needs"),
    images: bool = typer.Option(False, "--images", help="also apply the image rules (size, blank, H&E-likeness)"),
    image_root: Path = typer.Option(None, help="folder image paths are relative to (default: beside IN)"),
    min_size: int = typer.Option(64, help="minimum image side in pixels"),
    min_he_score: float = typer.Option(0.3, help="minimum H&E-likeness score (0-1)"),
) -> None:
    """Keep pathology captions (vocabulary, length) and, with --images, usable H&E images.

    Writes OUT and <stem>.removed.jsonl (index, id, rule, reason).
    """
    from pathkit.curate.image_filter import ImageFilter
    from pathkit.curate.pipeline import filter_records, removal_counts
    from pathkit.curate.text_filter import TextFilter

    records = _read_records(in_path)
    kept, removed = filter_records(records, TextFilter(min_hits=min_hits, min_words=min_words),
                                   ImageFilter(min_size=min_size, min_he_score=min_he_score) if images else None,
                                   image_root=image_root or in_path.parent, progress=True)
    write_json(out, kept)
    write_jsonl(out.with_name(out.stem + ".removed.jsonl"), removed)
    typer.echo(f"kept {len(kept)} of {len(records)}; removed by rule: {json.dumps(removal_counts(removed))} -> {out}")


@curate.command("validate")
def validate_cmd(
    in_path: Path = typer.Argument(..., help="LLaVA JSON file"),
    all_errors: bool = typer.Option(False, "--all", help="list every problem instead of stopping at the first"),
) -> None:
    """Check LLaVA JSON: ids, image paths, alternating human/gpt turns, <image> tokens = images."""
    from pathkit.curate.llava_format import validate_llava_file

    if not all_errors:
        n = validate_llava_file(in_path)
        typer.echo(f"{in_path}: {n} valid records")
        return
    errors: list[str] = []
    n = validate_llava_file(in_path, errors)
    for e in errors:
        typer.echo(e, err=True)
    if errors:
        raise PathkitError(f"{in_path}: {len(errors)} invalid record(s), {n} valid; first: {errors[0]}")
    typer.echo(f"{in_path}: {n} valid records")


@curate.command("convert")
def convert_cmd(
    source: str = typer.Argument(..., help="narratives | tiles"),
    in_path: Path = typer.Argument(..., help="narratives.jsonl or synthetic tiles metadata.jsonl"),
    out: Path = typer.Option(..., "--out", help="LLaVA JSON"),
    split: str = typer.Option(None, help="tiles only: keep this split (train/val/test)"),
    seed: int = typer.Option(0, help="seed of the instruction phrasing"),
) -> None:
    """Convert localized narratives or synthetic tile metadata into LLaVA caption records."""
    from pathkit.curate.llava_format import narratives_to_llava, tiles_to_llava, validate_llava
    from pathkit.io import read_jsonl

    rows = read_jsonl(in_path)
    if source == "narratives":
        records = narratives_to_llava(rows, seed)
    elif source == "tiles":
        records = tiles_to_llava(rows, seed, split)
    else:
        raise PathkitError(f"source {source!r}: expected 'narratives' or 'tiles'")
    validate_llava(records, str(out))
    write_json(out, records)
    typer.echo(f"{len(records)} records -> {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(curate, name="curate")
