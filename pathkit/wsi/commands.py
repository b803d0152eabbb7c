"""``pathkit tile`` and ``pathkit extract``: whole slides -> tile coordinates -> tile features (HDF5)."""

from __future__ import annotations

from pathlib import Path

import typer


def tile(
    slides: list[Path] = typer.Argument(..., help="slide files (any format openslide reads)"),
    out: Path = typer.Option(..., "--out", help="output folder: <stem>.h5 (coords) and <stem>.png per slide"),
    mpp: float = typer.Option(0.5, help="microns per pixel of the tiles (0.5 = 20x, as Prov-GigaPath)"),
    size: int = typer.Option(256, help="tile edge in pixels at --mpp"),
    min_tissue: float = typer.Option(0.1, help="keep tiles whose tissue fraction is at least this"),
    slide_mpp: float = typer.Option(None, help="level-0 mpp to use when the slide states none (or is wrong)"),
    overlap: int = typer.Option(0, help="overlap between neighbouring tiles, in pixels at --mpp"),
    thumbnail_size: int = typer.Option(1024, help="longest side of the thumbnail the tissue mask uses"),
    no_figure: bool = typer.Option(False, "--no-figure", help="skip the per-slide PNG"),
    engine: str = typer.Option("local", "--engine", help="local, or ray: one Ray task per slide"),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster to join (default: a local Ray)"),
) -> None:
    """Tissue mask + tile grid at a true magnification: DIR/<stem>.h5 coords (level-0 x, y) + DIR/<stem>.png.

    Slides whose output is already complete are skipped; a bad slide is listed in DIR/failures.jsonl and the
    command exits non-zero after finishing the others.
    """
    from pathkit.wsi.pipeline import tile_slides

    settings = dict(mpp=mpp, size=size, min_tissue=min_tissue, overlap=overlap, slide_mpp=slide_mpp,
                    thumbnail_size=thumbnail_size, figure=not no_figure)
    if _engine(engine) == "ray":
        from pathkit.wsi.ray_batch import tile_slides_ray

        summary = tile_slides_ray(slides, out, address=ray_address, **settings)
    else:
        summary = tile_slides(slides, out, **settings)
    _finish(summary)


def extract(
    source: Path = typer.Argument(..., help="folder of coords files from `pathkit tile`, CLAM or TRIDENT (or one .h5)"),
    encoder: str = typer.Option(..., "--encoder", help="tiny, plip, gigapath, uni, a hub id or a local dir"),
    out: Path = typer.Option(..., "--out", help="output folder: <stem>.h5 with coords + features"),
    batch_size: int = typer.Option(64, help="tiles per forward pass"),
    workers: int = typer.Option(2, help="DataLoader worker processes reading tiles"),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto"),
    slide_mpp: float = typer.Option(None, help="level-0 mpp override used when the tiles were planned"),
    slides: Path = typer.Option(None, "--slides", help="folder of the slides, found by name (needed for CLAM or "
                                "TRIDENT coords files, which name no slide path)"),
    engine: str = typer.Option("local", "--engine", help="local, or ray: slides spread over Ray actors"),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster to join (default: a local Ray)"),
    actors: int = typer.Option(None, "--actors", help="Ray: encoder actors (default one per GPU, else 2)"),
) -> None:
    """Encode every tile listed in SOURCE with an encoder -> OUT/<stem>.h5 (coords, features, attrs).

    SOURCE holds coords files written by `pathkit tile`, CLAM's create_patches_fp (patches/<slide>.h5) or TRIDENT
    (<job>/patches/<slide>_patches.h5 style files with attributes on 'coords'); for the last two, --slides DIR
    finds each slide by the name the file gives.

    Batched, several loader workers, bf16 autocast + channels_last on GPU; prints tiles/s. Complete outputs
    are skipped (resume); failures go to OUT/failures.jsonl and give a non-zero exit.
    """
    from pathkit.models.encoders import load_encoder
    from pathkit.wsi.pipeline import extract_features

    settings = dict(batch_size=batch_size, workers=workers, device=device, slide_mpp=slide_mpp, slides_dir=slides)
    if _engine(engine) == "ray":
        from pathkit.wsi.ray_batch import extract_features_ray

        summary = extract_features_ray(source, encoder, out, load_encoder=load_encoder, actors=actors, address=ray_address, **settings)
    else:
        summary = extract_features(source, encoder, out, load_encoder=load_encoder, **settings)
    _finish(summary)


def _engine(name: str) -> str:
    from pathkit.io import PathkitError

    if name not in ("local", "ray"):
        raise PathkitError(f"--engine {name!r}: must be local or ray")
    return name


def _finish(summary) -> None:
    typer.echo(summary.line())
    if summary.failed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("tile")(tile)
    app.command("extract")(extract)
