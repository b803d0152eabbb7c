"""``pathkit synth tiles|slide|video``: write synthetic data with ground truth from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from pathkit.io import PathkitError


def tiles(
    out: Path = typer.Option(..., "--out", help="folder for images/, metadata.jsonl, *_llava.json, *_questions.jsonl"),
    preset: str = typer.Option("tiny", help="preset (tiny, gpu, paper) or YAML config to take defaults from"),
    size: int = typer.Option(None, "--size", help="tile size in pixels (default: the preset's synthetic.tile_size)"),
    per_class: int = typer.Option(None, "--per-class", help="tiles per class (default: the preset's)"),
    heldout: float = typer.Option(None, "--heldout", help="held-out fraction (default: the preset's)"),
    seed: int = typer.Option(0, help="random seed; the same seed gives identical files"),
    workers: int = typer.Option(None, help="processes painting tiles (default: 1 below 2,000 tiles, else all CPUs)"),
) -> None:
    """Write a folder of H&E-like tissue tiles of every class with captions, LLaVA data and questions.

    Reuses the folder when it is already complete for these parameters (done.json), else rebuilds it.
    """
    from pathkit.config import load_config
    from pathkit.synthetic.tiles import ensure_tile_dataset

    cfg = load_config(preset).synthetic
    changes = {k: v for k, v in (("tile_size", size), ("tiles_per_class", per_class),
                                 ("heldout_fraction", heldout)) if v is not None}
    cfg = cfg.replace(**changes) if changes else cfg
    ds = ensure_tile_dataset(out, cfg, seed, workers=workers)
    typer.echo(f"{ds.root}: {len(ds.metadata())} tiles of {cfg.tile_size} px")


def slide(
    out: Path = typer.Argument(..., help="output slide path (.tiff or .svs)"),
    width: int = typer.Option(4096, help="level-0 width in pixels"),
    height: int = typer.Option(4096, help="level-0 height in pixels"),
    mpp: float = typer.Option(0.5, help="microns per pixel at level 0"),
    seed: int = typer.Option(0, help="random seed"),
    fmt: str = typer.Option(None, "--format", help="tiff (generic-tiff) or svs (Aperio); default from suffix"),
    compression: str = typer.Option("jpeg", help="tile compression: jpeg, zlib, lzw or none"),
    diagnosis: str = typer.Option(None, help="slide-level diagnosis (default: drawn from the seed)"),
) -> None:
    """Write a pyramidal synthetic slide plus <stem>.truth.json and <stem>.labels.png (ground truth)."""
    from pathkit.synthetic.slides import write_slide

    if width < 256 or height < 256:
        raise PathkitError(f"--width/--height {width}x{height}: must be >= 256 pixels")
    fmt = fmt or ("svs" if out.suffix.lower() == ".svs" else "tiff")
    if fmt not in ("tiff", "svs"):
        raise PathkitError(f"--format {fmt!r}: must be tiff or svs")
    write_slide(out, width, height, mpp=mpp, seed=seed, fmt=fmt, compression=compression, diagnosis=diagnosis)
    typer.echo(f"{out}: {width}x{height} px at {mpp} mpp ({fmt})")


def video(
    out: Path = typer.Argument(..., help="output MP4 path (the .vtt and .truth.json go beside it)"),
    seconds: float = typer.Option(12.0, help="duration in seconds"),
    fps: float = typer.Option(10.0, help="frames per second"),
    width: int = typer.Option(320, help="frame width in pixels"),
    height: int = typer.Option(240, help="frame height in pixels"),
    seed: int = typer.Option(0, help="random seed"),
    background: str = typer.Option("synthetic", help="synthetic (procedural tissue) or ihc (scikit-image IHC)"),
) -> None:
    """Write a narrated lecture video: MP4 with a moving cursor, a WebVTT transcript and JSON ground truth."""
    from pathkit.synthetic.video import write_narrated_video

    if seconds <= 0 or fps <= 0:
        raise PathkitError(f"--seconds {seconds} / --fps {fps}: must be > 0")
    if background not in ("synthetic", "ihc"):
        raise PathkitError(f"--background {background!r}: must be synthetic or ihc")
    write_narrated_video(out, seconds=seconds, fps=fps, size=(width, height), seed=seed, background=background)
    typer.echo(f"{out}: {seconds:g} s at {fps:g} fps, {width}x{height}")


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command group."""
    sub = typer.Typer(help="Synthetic data with ground truth: tissue tiles, pyramidal slides, narrated videos.",
                      no_args_is_help=True)
    sub.command("tiles")(tiles)
    sub.command("slide")(slide)
    sub.command("video")(video)
    app.add_typer(sub, name="synth")
