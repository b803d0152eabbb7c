"""``pathkit video chunks|cursor|narratives``: narrated video to stable chunks, pointer traces, narratives."""

from __future__ import annotations

from pathlib import Path

import typer

from pathkit.io import PathkitError

video_app = typer.Typer(help="Narrated lecture videos: stable chunks, cursor traces, localized narratives.",
                        no_args_is_help=True)


def _preset(preset: str):
    from pathkit.config import load_config

    return load_config(preset).video


@video_app.command("chunks")
def chunks_cmd(
    video: Path = typer.Argument(..., help="video file (MP4, MKV, ...)"),
    out: Path = typer.Option(..., "--out", help="output JSON: [{'start': s, 'end': s}, ...]"),
    preset: str = typer.Option("tiny", help="config preset (video section) or YAML file"),
) -> None:
    """Stable chunks (spans with an unchanging view) by cursor-robust frame differencing."""
    from pathkit.io import write_json
    from pathkit.video.chunks import stable_chunks

    det = stable_chunks(video, _preset(preset), progress=True)
    write_json(out, [c.to_json() for c in det.chunks])
    typer.echo(f"{len(det.chunks)} chunks (threshold {det.threshold:.2f}) -> {out}")


@video_app.command("cursor")
def cursor_cmd(
    video: Path = typer.Argument(..., help="video file"),
    out: Path = typer.Option(..., "--out", help="output JSONL: {'t', 'x', 'y', 'score'} per frame with a pointer"),
    fps: float = typer.Option(0.0, help="analysis rate (frames/s); 0 = every frame"),
    detector: str = typer.Option("net", help="net: learned detector, any cursor theme; template: the white "
                                              "arrow / hand pixel art only (the earlier detector)"),
) -> None:
    """Detect and track the mouse pointer; x, y is its hotspot (arrow tip, fingertip) in frame pixels."""
    from pathkit.io import write_jsonl

    if detector == "net":
        from pathkit.video.pointer_tracker import track_pointer as track
    elif detector == "template":
        from pathkit.video.cursor import track_cursor as track
    else:
        raise PathkitError(f"--detector {detector!r}: must be 'net' or 'template'")
    rows = track(video, fps=fps or None, progress=True)
    write_jsonl(out, rows)
    typer.echo(f"pointer in {len(rows)} frames -> {out}")


@video_app.command("narratives")
def narratives_cmd(
    videos: list[Path] = typer.Argument(..., help="one or more videos"),
    transcript: list[Path] = typer.Option(None, "--transcript",
                                          help="transcript (.vtt/.srt/Whisper .json) per video; default: "
                                               "<video stem>.vtt beside each video"),
    out: Path = typer.Option(..., "--out", help="output folder: narratives.jsonl, frames/, heatmaps/"),
    preset: str = typer.Option("tiny", help="config preset (video section) or YAML file"),
    seed: int = typer.Option(0, help="k-means seed"),
) -> None:
    """Localized narratives: stable chunks + pointer trace + Quilt clustering + dwell heat maps."""
    from pathkit.video.narratives import build_narratives

    if transcript and len(transcript) != len(videos):
        raise PathkitError(f"--transcript given {len(transcript)} times for {len(videos)} videos")
    transcripts = transcript or [v.with_suffix(".vtt") for v in videos]
    rows, failures = build_narratives(list(zip(videos, transcripts)), out, _preset(preset), seed, progress=True)
    if failures:
        raise PathkitError(failures.summary("video"))
    typer.echo(f"{len(rows)} narratives from {len(videos)} video(s) -> {out / 'narratives.jsonl'}")


def register(app: typer.Typer) -> None:
    app.add_typer(video_app, name="video")
