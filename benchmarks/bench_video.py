"""Benchmark: stable chunks and pointer tracking on synthetic narrated lectures, against ground truth and
PySceneDetect (AdaptiveDetector, ContentDetector) in the same run.

Measures, over several seeds and both backgrounds (procedural tissue, real IHC image):
* chunk F1 at 0.5 s: a detected chunk matches a true stable chunk when both its start and its end are
  within 0.5 s (one-to-one); PySceneDetect's scenes are scored the same way;
* transition F1 at 0.5 s: the gaps between consecutive chunks (a cut: zero length; a pan/zoom: its
  span) against the true transitions, both ends within 0.5 s;
* speed: video frames per second of wall time for pathkit's chunks, each PySceneDetect detector, and
  decoding alone (PyAV, threaded, no conversion);
* pointer: recall on frames where it is visible, median hotspot error (px), false detections on frames
  without a pointer; grounding: IoU of Quilt-clustered boxes with the true box of the same utterance.

Writes figures/video_benchmark.json and figures/video_benchmark.png.

    .venv/bin/python benchmarks/bench_video.py                       # 4 seeds x 2 backgrounds, 20 s, 320x240, 25 fps
    .venv/bin/python benchmarks/bench_video.py --seeds 8 --seconds 60 --size 640x360 --fps 25
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def match_count(det: list[tuple[float, float]], truth: list[tuple[float, float]], tol: float) -> int:
    """One-to-one matches where both ends are within ``tol`` seconds."""
    used, hits = set(), 0
    for s, e in truth:
        for j, (ds, de) in enumerate(det):
            if j not in used and abs(ds - s) <= tol and abs(de - e) <= tol:
                used.add(j)
                hits += 1
                break
    return hits


def f1(hits: int, n_det: int, n_true: int) -> tuple[float, float, float]:
    p = hits / n_det if n_det else (1.0 if n_true == 0 else 0.0)
    r = hits / n_true if n_true else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def gaps(chunks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(chunks[i][1], chunks[i + 1][0]) for i in range(len(chunks) - 1)]


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def run_scenedetect(path: Path, detector_name: str) -> tuple[list[tuple[float, float]], float]:
    from scenedetect import AdaptiveDetector, ContentDetector, detect

    detector = AdaptiveDetector() if detector_name == "adaptive" else ContentDetector()
    t0 = time.perf_counter()
    scenes = detect(str(path), detector, show_progress=False)
    elapsed = time.perf_counter() - t0
    return [(float(s.seconds), float(e.seconds)) for s, e in scenes], elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--tol", type=float, default=0.5)
    ap.add_argument("--out", default="figures")
    ap.add_argument("--workdir", default=None, help="where videos are written (default: a temp folder)")
    args = ap.parse_args()

    from pathkit.config import VideoConfig
    from pathkit.synthetic.video import write_narrated_video
    from pathkit.video.chunks import stable_chunks
    from pathkit.video.cursor import track_cursor
    from pathkit.video.decode import decode_count
    from pathkit.video.narratives import narrate_video

    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_video_"))
    cfg = VideoConfig()
    methods = ("pathkit", "adaptive", "content")
    totals = {m: {"hits": 0, "det": 0, "gap_hits": 0, "gap_det": 0, "seconds": 0.0} for m in methods}
    n_true = n_true_gaps = n_frames = 0
    decode_s = 0.0
    cur = {"visible": 0, "found": 0, "errors": [], "hidden": 0, "false": 0, "seconds": 0.0}
    ious: list[float] = []
    per_video, example = [], None
    for seed in range(args.seeds):
        for bg in ("synthetic", "ihc"):
            truth = write_narrated_video(work / f"lec_{bg}_{seed}.mp4", args.seconds, args.fps, (w, h), seed=seed,
                                         background=bg)
            true_chunks = [tuple(c) for c in truth.chunks]
            n_true += len(true_chunks)
            n_true_gaps += len(true_chunks) - 1
            n_frames += truth.n_frames
            t0 = time.perf_counter()
            decode_count(truth.path)
            decode_s += time.perf_counter() - t0
            row = {"video": truth.path.name, "background": bg, "seed": seed, "true_chunks": true_chunks}
            t0 = time.perf_counter()
            det = stable_chunks(truth.path, cfg)
            elapsed = time.perf_counter() - t0
            results = {"pathkit": ([(c.start, c.end) for c in det.chunks], elapsed)}
            for name in ("adaptive", "content"):
                results[name] = run_scenedetect(truth.path, name)
            for m, (chunks, secs) in results.items():
                t = totals[m]
                t["hits"] += match_count(chunks, true_chunks, args.tol)
                t["det"] += len(chunks)
                t["gap_hits"] += match_count(gaps(chunks), gaps(true_chunks), args.tol)
                t["gap_det"] += len(chunks) - 1 if chunks else 0
                t["seconds"] += secs
                row[m] = [[round(a, 2), round(b, 2)] for a, b in chunks]
            if example is None:
                example = {"times": det.times.tolist(), "signal": det.signal.tolist(), "threshold": det.threshold,
                           "true": true_chunks, "detected": row["pathkit"], "video": truth.path.name}
            # pointer
            t0 = time.perf_counter()
            rows = track_cursor(truth.path)
            cur["seconds"] += time.perf_counter() - t0
            found = {int(round(r["t"] * truth.fps)): r for r in rows}
            for i, xy in enumerate(truth.cursor):
                if xy is None:
                    cur["hidden"] += 1
                    cur["false"] += i in found
                else:
                    cur["visible"] += 1
                    if i in found:
                        cur["found"] += 1
                        cur["errors"].append(float(np.hypot(found[i]["x"] - xy[0], found[i]["y"] - xy[1])))
            # grounding boxes vs truth boxes
            nar = narrate_video(truth.path, truth.transcript, work / "narratives", cfg)
            truth_box = {round(u.start, 2): u.box for u in truth.utterances if u.box}
            for r in nar:
                for g in r["groundings"]:
                    if round(g["start"], 2) in truth_box:
                        ious.append(iou(g["box"], truth_box[round(g["start"], 2)]))
            per_video.append(row)
            print(f"{truth.path.name}: true {len(true_chunks)} chunks; pathkit {len(row['pathkit'])}, "
                  f"adaptive {len(row['adaptive'])}, content {len(row['content'])}", flush=True)

    summary = {}
    for m in methods:
        t = totals[m]
        p, r, f = f1(t["hits"], t["det"], n_true)
        gp, gr, gf = f1(t["gap_hits"], t["gap_det"], n_true_gaps)
        summary[m] = {"chunk_precision": p, "chunk_recall": r, "chunk_f1": f, "transition_f1": gf,
                      "transition_precision": gp, "transition_recall": gr, "frames_per_s": n_frames / t["seconds"]}
    decode_fps = n_frames / decode_s
    errors = np.array(cur["errors"]) if cur["errors"] else np.array([np.nan])
    cursor = {"recall": cur["found"] / max(1, cur["visible"]), "median_error_px": float(np.median(errors)),
              "p95_error_px": float(np.percentile(errors, 95)),
              "false_detection_rate": cur["false"] / max(1, cur["hidden"]), "hidden_frames": cur["hidden"],
              "visible_frames": cur["visible"], "frames_per_s": n_frames / cur["seconds"]}
    try:
        import torch

        torch_version = torch.__version__
    except Exception:
        torch_version = None
    import scenedetect

    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "torch": torch_version, "device": "cpu", "scenedetect": scenedetect.__version__},
        "setup": {"videos": 2 * args.seeds, "seconds": args.seconds, "fps": args.fps, "size": [w, h],
                  "tolerance_s": args.tol, "true_chunks": n_true, "frames": n_frames,
                  "analysis_fps": cfg.analysis_fps, "analysis_width": cfg.analysis_width, "mad_k": cfg.mad_k},
        "chunks": summary,
        "decode_only_frames_per_s": decode_fps,
        "speed_ratio_pathkit_vs_decode": summary["pathkit"]["frames_per_s"] / decode_fps,
        "speed_ratio_pathkit_vs_adaptive": summary["pathkit"]["frames_per_s"] / summary["adaptive"]["frames_per_s"],
        "speed_ratio_pathkit_vs_content": summary["pathkit"]["frames_per_s"] / summary["content"]["frames_per_s"],
        "cursor": cursor,
        "grounding_box_iou": {"mean": float(np.mean(ious)) if ious else None,
                              "frac_iou_gt_0.3": float(np.mean(np.array(ious) > 0.3)) if ious else None,
                              "n": len(ious)},
        "goals": {"chunk_f1>=0.95": summary["pathkit"]["chunk_f1"] >= 0.95, "cursor_recall>=0.95": cursor["recall"] >= 0.95,
                  "cursor_median_error<=5px": cursor["median_error_px"] <= 5,
                  "false_detections<=2%": cursor["false_detection_rate"] <= 0.02,
                  "f1_above_scenedetect": summary["pathkit"]["chunk_f1"] > max(summary["adaptive"]["chunk_f1"],
                                                                               summary["content"]["chunk_f1"]),
                  "speed>=scenedetect": summary["pathkit"]["frames_per_s"] >= max(summary["adaptive"]["frames_per_s"],
                                                                                  summary["content"]["frames_per_s"]),
                  "speed>=0.8x_decode": summary["pathkit"]["frames_per_s"] >= 0.8 * decode_fps},
        "example": example,
        "per_video": per_video,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from pathkit.io import write_json

    write_json(out / "video_benchmark.json", report)
    plot(report, out / "video_benchmark.png")
    print(json.dumps({k: report[k] for k in ("chunks", "decode_only_frames_per_s", "speed_ratio_pathkit_vs_decode",
                                             "speed_ratio_pathkit_vs_adaptive", "cursor", "grounding_box_iou",
                                             "goals")}, indent=2))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathkit.io import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = ["pathkit", "adaptive", "content"]
    labels = ["pathkit", "PySceneDetect\nAdaptive", "PySceneDetect\nContent"]
    ch = report["chunks"]
    x = np.arange(3)
    axes[0].bar(x - 0.2, [ch[n]["chunk_f1"] for n in names], 0.4, label="chunk F1")
    axes[0].bar(x + 0.2, [ch[n]["transition_f1"] for n in names], 0.4, label="transition F1")
    axes[0].set_xticks(x, labels)
    axes[0].set_ylim(0, 1.05)
    axes[0].axhline(0.95, color="k", ls=":", lw=1)
    axes[0].set_title(f"Stable chunks, tolerance {report['setup']['tolerance_s']} s")
    axes[0].legend(loc="lower right")
    fps = [ch[n]["frames_per_s"] for n in names] + [report["decode_only_frames_per_s"]]
    axes[1].bar(np.arange(4), fps, color=["C0", "C1", "C1", "C7"])
    axes[1].set_xticks(np.arange(4), labels + ["decode only\n(PyAV)"])
    axes[1].set_ylabel("video frames / s (wall)")
    axes[1].set_title(f"Speed ({report['machine']['cpu_count']} CPU cores)")
    ex = report["example"]
    axes[2].plot(ex["times"], ex["signal"], lw=1, label="cursor-masked difference")
    axes[2].axhline(ex["threshold"], color="r", ls="--", lw=1, label=f"adaptive threshold {ex['threshold']:.2f}")
    for s, e in ex["true"]:
        axes[2].axvspan(s, e, color="g", alpha=0.12)
    for s, e in ex["detected"]:
        axes[2].plot([s, e], [-2, -2], color="C0", lw=4)
    axes[2].set_yscale("symlog", linthresh=1)
    axes[2].set_xlabel("seconds")
    axes[2].set_title(f"{ex['video']}: true chunks (green), detected (blue bars)")
    axes[2].legend(fontsize=8, loc="upper right")
    c = report["cursor"]
    fig.suptitle(f"pointer: recall {c['recall']:.3f}, median error {c['median_error_px']:.1f} px, "
                 f"false detections {100 * c['false_detection_rate']:.1f}% of {c['hidden_frames']} pointer-free frames")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
