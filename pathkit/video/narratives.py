"""Narrated video + transcript -> localized narratives (one JSONL row per stable chunk).

The narratives folder (``pathkit video narratives``; contract in DESIGN.md)::

    narratives.jsonl        one row per stable chunk: video, chunk, start, end, frame, width, height,
                            caption, cursor [[t, x, y], ...], groundings [{text, start, end, box}], heatmap
                            (+ grounded_caption: Quilt's "<text> [x1, y1, x2, y2], ..." string)
    frames/<stem>_cNNN.png  representative frame (median of the stable frames, pointer removed)
    heatmaps/<stem>_cNNN.npy           float32 (H, W) dwell heat map of the chunk
    heatmaps/<stem>_cNNN_uMM.npy       ... of one utterance (path in groundings[i]["heatmap"])
    failures.jsonl          videos that failed (the batch goes on), absent when none did

``frame`` and ``heatmap`` paths are relative to the folder that holds ``narratives.jsonl``; use
:func:`read_narratives` to get them resolved. Finished videos are journaled (``.journal.jsonl``) so a
killed batch resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pathkit.config import Config, VideoConfig
from pathkit.io import (
    FailureLog,
    JsonlAppender,
    PathkitError,
    atomic_path,
    iter_jsonl,
    read_jsonl,
    write_jsonl,
)
from pathkit.synthetic.video import ensure_video_set
from pathkit.video.chunks import DifferenceSignal, representative_frames, stable_chunks
from pathkit.video.cursor import CursorTracker, build_templates
from pathkit.video.decode import iter_frames, probe
from pathkit.video.grounding import densify_trace, dwell_heatmap, ground_utterances, quilt_string
from pathkit.video.pointer_tracker import PointerTracker
from pathkit.video.transcript import read_transcript, utterances_in

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.

JOURNAL = ".journal.jsonl"


def analyse_video(video: str | Path, cfg: VideoConfig, progress: bool = False):
    """One decoding pass: cursor rows at the analysis rate and the stable-chunk detection.

    Returns ``(info, cursor_rows, detection)``.
    """
    import cv2

    info = probe(video)
    net = cfg.cursor_detector == "net"
    if net:
        tracker = PointerTracker()
    else:
        tracker = CursorTracker(build_templates(info.height))
    aw = min(cfg.analysis_width, info.width)
    ah = max(2, int(round(info.height * aw / info.width)))
    times, rows = [], []
    signal = DifferenceSignal()
    frames = iter_frames(video, fps=cfg.analysis_fps, grey=not net)
    if progress:
        frames = tqdm(frames, total=int(info.duration * cfg.analysis_fps) + 1, desc=Path(video).name,
                      unit="frame", leave=False)
    for f in frames:
        times.append(f.t)
        grey = cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY) if net else f.image
        signal.push(cv2.resize(grey, (aw, ah), interpolation=cv2.INTER_AREA))
        hit = tracker.update(f.image)
        if hit is not None:
            rows.append({"t": round(f.t, 4), "x": hit[0], "y": hit[1], "score": round(hit[2], 4),
                         "shape": hit[3] if len(hit) > 3 else "pointer"})
    duration = info.n_frames / info.fps if info.n_frames else info.duration
    detection = stable_chunks(cfg=cfg, times=np.array(times), stream=signal, duration=duration)
    return info, rows, detection


def narrate_video(video: str | Path, transcript: str | Path, out_dir: str | Path, cfg: VideoConfig | None = None,
                  seed: int = 0, progress: bool = False) -> list[dict]:
    """Localized-narrative rows for one video; writes its frames and heat maps under ``out_dir``."""
    import cv2

    cfg = cfg or VideoConfig()
    video, transcript, out_dir = Path(video), Path(transcript), Path(out_dir)
    utterances = read_transcript(transcript)
    info, cursor_rows, detection = analyse_video(video, cfg, progress)
    duration = info.n_frames / info.fps if info.n_frames else info.duration
    if utterances and all(u.end <= 0 or u.start >= duration for u in utterances):
        raise PathkitError(f"{transcript}: no utterance overlaps the video {video.name} (video 0-{duration:.1f} s, "
                           f"transcript {utterances[0].start:.1f}-{utterances[-1].end:.1f} s)")
    chunks = detection.chunks
    frames = representative_frames(video, chunks, cursor_rows) if chunks else []
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    (out_dir / "heatmaps").mkdir(parents=True, exist_ok=True)
    step = detection.step
    rows = []
    for c, (chunk, image) in enumerate(zip(chunks, frames)):
        chunk = type(chunk)(round(chunk.start, 3), round(chunk.end, 3))  # the times the row states
        stem = f"{video.stem}_c{c:03d}"
        frame_rel, heat_rel = f"frames/{stem}.png", f"heatmaps/{stem}.npy"
        with atomic_path(out_dir / frame_rel) as tmp:
            if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise PathkitError(f"{out_dir / frame_rel}: could not write PNG")
        trace = np.array([[r["t"], r["x"], r["y"]] for r in cursor_rows
                          if chunk.start <= round(r["t"], 3) < chunk.end],
                         np.float64).reshape(-1, 3)
        xy, secs = _dwell_points(trace, step)
        heat = dwell_heatmap(xy, info.width, info.height, cfg.heatmap_sigma, secs)
        _save_npy(out_dir / heat_rel, heat)
        said = utterances_in(utterances, chunk.start, chunk.end)
        groundings, clusters = ground_utterances(trace, said, info.width, info.height, chunk.start,
                                                 cfg.cursor_decay, cfg.min_box_fraction, cfg.max_box_fraction, seed)
        out_groundings = []
        for j, g in enumerate(groundings):
            in_u = trace[(trace[:, 0] >= g.start) & (trace[:, 0] <= g.end)]
            u_rel = f"heatmaps/{stem}_u{j:02d}.npy"
            xy, secs = _dwell_points(in_u, step)
            _save_npy(out_dir / u_rel, dwell_heatmap(xy, info.width, info.height, cfg.heatmap_sigma, secs))
            out_groundings.append({**g.to_json(), "heatmap": u_rel})
        caption = " ".join(u.text for u in said)
        rows.append({
            "video": str(video), "chunk": c, "start": round(chunk.start, 3), "end": round(chunk.end, 3),
            "frame": frame_rel, "width": info.width, "height": info.height, "caption": caption,
            "cursor": [[round(float(t), 3), float(x), float(y)] for t, x, y in trace],
            "groundings": out_groundings, "heatmap": heat_rel,
            "grounded_caption": quilt_string(clusters, caption),
        })
    return rows


def _dwell_points(trace: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """The pointer's path between analysis samples (it moved through those pixels too) with dwell seconds."""
    return densify_trace(trace, max_gap=2.5 * step)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array.astype(np.float32))


def build_narratives(items: list[tuple[str | Path, str | Path]], out_dir: str | Path, cfg: VideoConfig | None = None,
                     seed: int = 0, progress: bool = False) -> tuple[list[dict], FailureLog]:
    """Narratives for many ``(video, transcript)`` pairs into one folder; resumable; failures logged.

    A bad video is recorded in ``failures.jsonl`` and the batch goes on. ``narratives.jsonl`` is written
    (atomically) from the journal at the end, in the order of ``items``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / JOURNAL
    done: dict[str, list[dict]] = {}
    if journal.exists():
        for _, entry in iter_jsonl(journal, strict=False):
            done[entry["video"]] = entry["rows"]
    failures = FailureLog(out_dir / "failures.jsonl")
    todo = list(items)
    if progress:
        todo = tqdm(todo, desc="narratives", unit="video")
    with JsonlAppender(journal) as log:
        for video, transcript in todo:
            key = str(video)
            if key in done:
                continue
            try:
                rows = narrate_video(video, transcript, out_dir, cfg, seed)
            except Exception as err:  # one bad video never stops the batch
                failures.add(key, err)
                continue
            log.append({"video": key, "rows": rows})
            done[key] = rows
    all_rows = [r for video, _ in items for r in done.get(str(video), [])]
    write_jsonl(out_dir / "narratives.jsonl", all_rows)
    failures.write()
    return all_rows, failures


def read_narratives(path: str | Path) -> list[dict]:
    """Rows of a ``narratives.jsonl`` (or its folder) with ``frame``/``heatmap`` paths made absolute."""
    path = Path(path)
    if path.is_dir():
        path = path / "narratives.jsonl"
    rows = read_jsonl(path)
    for r in rows:
        for key in ("frame", "heatmap"):
            r[key] = str((path.parent / r[key]).resolve())
        for g in r.get("groundings", []):
            if "heatmap" in g:
                g["heatmap"] = str((path.parent / g["heatmap"]).resolve())
    return rows


@dataclass
class NarrativeSet:
    root: Path
    rows: list[dict]  # paths resolved (read_narratives)

    @property
    def jsonl(self) -> Path:
        return self.root / "narratives.jsonl"


def ensure_narratives(workdir: str | Path, cfg=None, seed: int = 0) -> NarrativeSet:
    """Narratives of the synthetic lecture set under ``workdir/narratives`` (built if missing or stale).

    ``cfg`` is a full :class:`pathkit.config.Config` (uses ``cfg.synthetic`` and ``cfg.video``).
    """
    cfg = cfg or Config.from_name("tiny")
    workdir = Path(workdir)
    truths = ensure_video_set(workdir / "synthetic" / "videos", cfg.synthetic, seed)
    root = workdir / "narratives"
    jsonl = root / "narratives.jsonl"
    items = [(t.path, t.transcript) for t in truths]
    if jsonl.exists() and jsonl.stat().st_mtime >= max(t.truth_path.stat().st_mtime for t in truths):
        rows = read_narratives(jsonl)
        if {r["video"] for r in rows} >= {str(v) for v, _ in items} and all(Path(r["frame"]).exists() for r in rows):
            return NarrativeSet(root, rows)
    (root / JOURNAL).unlink(missing_ok=True)
    build_narratives(items, root, cfg.video, seed)
    return NarrativeSet(root, read_narratives(jsonl))
