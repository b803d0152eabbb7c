"""Benchmark: stable chunks and pointer tracking on synthetic narrated lectures, against ground truth and
PySceneDetect (AdaptiveDetector, ContentDetector) in the same run.

Measures, over several seeds and both backgrounds (procedural tissue, real IHC image):
* chunk F1 at 0.5 s: a detected chunk matches a true stable chunk when both its start and its end are
  within 0.5 s (one-to-one); PySceneDetect's scenes are scored the same way;
* transition F1 at 0.5 s: the gaps between consecutive chunks (a cut: zero length; a pan/zoom: its
  span) against the true transitions, both ends within 0.5 s;
* speed: video frames per second of wall time for pathkit's chunks (``stable_chunks``, what
  ``pathkit video chunks`` runs), each PySceneDetect detector, and two baselines with the same PyAV threading
  as pathkit: **decoding alone** (every frame decoded, none converted to an array: the goal's reference) and
  decoding just the frames pathkit decodes (it skips non-reference frames when the analysis rate is at most
  half the frame rate), which isolates pathkit's own cost; each timing is the best of ``--repeats`` runs,
  taken interleaved per video;
* pointer, for the default learned detector (``track_pointer``) and the template tracker before it
  (``track_cursor``): recall within 8 px on frames where it is visible, median hotspot error (px), false
  detections on frames without a pointer (:func:`pathkit.video.scoring.pointer_scores`); grounding: IoU of
  Quilt-clustered boxes with the true box of the same utterance.

Transitions (``run_transitions``, skip with ``--no-transitions``): chunk F1 on lecture scripts rendered without
X: crossfades of 0.5 to 2 s between similar views, a slow pan + zoom, a webcam box, a slide build, a black gap.

Two conditions: ``clean`` (pixel-exact pointer, x264 crf 28) and ``rescaled`` (the "screen" rendered 1.5x
larger and downscaled into the video, so the pointer is small and blurred, x264 crf 32).
Writes figures/video_benchmark.json and figures/video_benchmark.png.

    .venv/bin/python benchmarks/bench_video.py        # 2 conditions x 4 seeds x 2 backgrounds, 20 s, 320x240, 25 fps
    .venv/bin/python benchmarks/bench_video.py --seeds 8 --seconds 60 --size 640x360 --fps 25
    .venv/bin/python benchmarks/bench_video.py --size 1280x720 --seeds 1 --conditions clean --chunks-only
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

from pathkit.provenance import machine_record
from pathkit.video.scoring import (
    box_iou,
    chunk_scores,
    per_frame_detections,
    pointer_scores,
    precision_recall_f1,
)


def best_time(repeats: int, fn, *fn_args):
    """(result of the last call ``fn(*fn_args)``, fastest wall time of ``repeats`` calls)."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn(*fn_args)
        best = min(best, time.perf_counter() - t0)
    return out, best


def run_scenedetect(path: Path, detector_name: str) -> list[tuple[float, float]]:
    from scenedetect import AdaptiveDetector, ContentDetector, detect

    detector = AdaptiveDetector() if detector_name == "adaptive" else ContentDetector()
    scenes = detect(str(path), detector, show_progress=False)
    return [(float(s.seconds), float(e.seconds)) for s, e in scenes]


def decode_same_frames(path: Path, analysis_fps: float) -> int:
    """Baseline: decode exactly the frames ``iter_frames`` decodes at this analysis rate, convert none."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        if analysis_fps <= src_fps / 2:
            stream.codec_context.skip_frame = "NONREF"
        return sum(1 for _ in container.decode(stream))


CONDITIONS = {  # name: (screen_scale, crf)
    "clean": (1.0, 28),  # pointer pixel-exact, web-lecture compression
    "rescaled": (1.5, 32),  # a 1.5x larger screen downscaled into the video (small blurred pointer), crf 32
}


def run_condition(args, name: str, screen_scale: float, crf: int, work: Path) -> dict:
    from pathkit.config import VideoConfig
    from pathkit.synthetic.video import write_narrated_video
    from pathkit.video.chunks import stable_chunks
    from pathkit.video.cursor import track_cursor
    from pathkit.video.decode import decode_count
    from pathkit.video.narratives import narrate_video
    from pathkit.video.pointer_tracker import track_pointer

    w, h = (int(v) for v in args.size.lower().split("x"))
    cfg = VideoConfig()
    methods = ("pathkit", "adaptive", "content")
    totals = {m: {"seconds": 0.0} for m in methods}
    n_true = n_frames = 0
    decode_s = decode_same_s = 0.0
    trackers = {"pathkit_net": track_pointer, "template": track_cursor}  # the default detector, and the one before
    cur = {m: {"truth": [], "found": [], "seconds": 0.0} for m in trackers}
    ious: list[float] = []
    per_video, example = [], None
    for seed in range(args.seeds):
        for bg in ("synthetic", "ihc"):
            truth = write_narrated_video(work / f"{name}_{bg}_{seed}.mp4", args.seconds, args.fps, (w, h), seed=seed,
                                         background=bg, screen_scale=screen_scale, crf=crf)
            true_chunks = [tuple(c) for c in truth.chunks]
            n_true += len(true_chunks)
            n_frames += truth.n_frames
            row = {"video": truth.path.name, "background": bg, "seed": seed, "true_chunks": true_chunks}
            decode_s += best_time(args.repeats, decode_count, truth.path)[1]
            decode_same_s += best_time(args.repeats, decode_same_frames, truth.path, cfg.analysis_fps)[1]
            det, elapsed = best_time(args.repeats, stable_chunks, truth.path, cfg)
            results = {"pathkit": ([(c.start, c.end) for c in det.chunks], elapsed)}
            for m in ("adaptive", "content"):
                results[m] = best_time(args.repeats, run_scenedetect, truth.path, m)
            for m, (chunks, secs) in results.items():
                t = totals[m]
                for k, v in chunk_scores(chunks, true_chunks, args.tol).items():
                    t[k] = t.get(k, 0) + v
                t["seconds"] += secs
                row[m] = [[round(a, 2), round(b, 2)] for a, b in chunks]
            if example is None:
                example = {"times": det.times.tolist(), "signal": det.signal.tolist(), "threshold": det.threshold,
                           "true": true_chunks, "detected": row["pathkit"], "video": truth.path.name}
            if args.chunks_only:
                per_video.append(row)
                print(f"[{name}] {truth.path.name}: true {len(true_chunks)} chunks; pathkit {len(row['pathkit'])}",
                      flush=True)
                continue
            times = np.arange(truth.n_frames) / truth.fps
            txy = np.array([xy if xy is not None else (np.nan, np.nan) for xy in truth.cursor], float)
            for m, track in trackers.items():
                t0 = time.perf_counter()
                rows = track(truth.path)
                cur[m]["seconds"] += time.perf_counter() - t0
                cur[m]["truth"].append(txy)
                cur[m]["found"].append(per_frame_detections(rows, times))
            nar = narrate_video(truth.path, truth.transcript, work / f"narratives_{name}", cfg)
            truth_box = {round(u.start, 2): u.box for u in truth.utterances if u.box}
            for r in nar:
                for g in r["groundings"]:
                    if round(g["start"], 2) in truth_box:
                        ious.append(box_iou(g["box"], truth_box[round(g["start"], 2)]))
            per_video.append(row)
            print(f"[{name}] {truth.path.name}: true {len(true_chunks)} chunks; pathkit {len(row['pathkit'])}, "
                  f"adaptive {len(row['adaptive'])}, content {len(row['content'])}; pointer rows {len(rows)}", flush=True)

    summary = {}
    for m in methods:
        t = totals[m]
        p, r, f = precision_recall_f1(t["hits"], t["detected"], n_true)
        gp, gr, gf = precision_recall_f1(t["transition_hits"], t["transitions_detected"], t["transitions_true"])
        summary[m] = {"chunk_precision": p, "chunk_recall": r, "chunk_f1": f, "transition_f1": gf,
                      "transition_precision": gp, "transition_recall": gr, "frames_per_s": n_frames / t["seconds"]}
    decode_fps = n_frames / decode_s
    decode_same_fps = n_frames / decode_same_s
    pointers = None if args.chunks_only else {
        m: {**pointer_scores(np.concatenate(c["truth"]), np.zeros(n_frames, bool), np.concatenate(c["found"])),
            "frames_per_s": n_frames / c["seconds"]} for m, c in cur.items()}
    cursor = pointers and pointers["pathkit_net"]
    best_peer_f1 = max(summary["adaptive"]["chunk_f1"], summary["content"]["chunk_f1"])
    best_peer_fps = max(summary["adaptive"]["frames_per_s"], summary["content"]["frames_per_s"])
    return {
        "screen_scale": screen_scale, "crf": crf, "true_chunks": n_true, "frames": n_frames,
        "chunks": summary,
        "decode_only_frames_per_s": decode_fps,
        "speed_ratio_pathkit_vs_decode": summary["pathkit"]["frames_per_s"] / decode_fps,
        "decode_same_frames_frames_per_s": decode_same_fps,
        "speed_ratio_pathkit_vs_decode_same_frames": summary["pathkit"]["frames_per_s"] / decode_same_fps,
        "speed_ratio_pathkit_vs_best_scenedetect": summary["pathkit"]["frames_per_s"] / best_peer_fps,
        "cursor": cursor,
        "cursor_template": pointers and pointers["template"],
        "grounding_box_iou": {"mean": float(np.mean(ious)) if ious else None,
                              "frac_iou_gt_0.3": float(np.mean(np.array(ious) > 0.3)) if ious else None,
                              "n": len(ious)},
        "goals": {"chunk_f1>=0.95": summary["pathkit"]["chunk_f1"] >= 0.95,
                  "cursor_recall>=0.95": cursor and cursor["recall"] >= 0.95,
                  "cursor_median_error<=5px": cursor and cursor["median_error_px"] <= 5,
                  "false_detections<=2%": cursor and cursor["false_detection_rate"] <= 0.02,
                  "f1_above_scenedetect": summary["pathkit"]["chunk_f1"] > best_peer_f1,
                  "speed>=scenedetect": summary["pathkit"]["frames_per_s"] >= best_peer_fps,
                  "speed>=0.8x_decode": summary["pathkit"]["frames_per_s"] >= 0.8 * decode_fps},
        "example": example,
        "per_video": per_video,
    }


def run_transitions(args, work: Path) -> dict:
    """Chunk F1 of pathkit (and PySceneDetect) on lecture scripts rendered without X
    (:mod:`pathkit.video.lecture_video`): crossfades of 0.5, 1, 1.5 and 2 s between two nearby views of one
    image, a slow pan + zoom, a slide build, a black gap, every other video with a webcam box, 640x360."""
    from pathkit.config import VideoConfig
    from pathkit.video.chunks import stable_chunks
    from pathkit.video.lecture_script import demo_lecture
    from pathkit.video.lecture_video import write_lecture_video

    rows, totals = [], {m: {} for m in ("pathkit", "adaptive", "content")}
    for seed in range(args.seeds):
        for fade in (0.5, 1.0, 1.5, 2.0):
            webcam = seed % 2 == 1
            path = work / f"transitions_{seed}_{fade}.mp4"
            truth = write_lecture_video(path, demo_lecture(seed, webcam, fade=fade), (640, 360), seed=seed)
            got = {"pathkit": [(c.start, c.end) for c in stable_chunks(path, VideoConfig()).chunks],
                   **{m: run_scenedetect(path, m) for m in ("adaptive", "content")}}
            row = {"seed": seed, "fade_s": fade, "webcam": webcam, "true": truth}
            for m, chunks in got.items():
                sc = chunk_scores(chunks, truth, args.tol)
                for k in ("hits", "detected", "true"):
                    totals[m][k] = totals[m].get(k, 0) + sc[k]
                row[m] = {"f1": sc["f1"], "detected": [[round(a, 2), round(b, 2)] for a, b in chunks]}
            rows.append(row)
            print(f"[transitions] seed {seed} fade {fade}s webcam {webcam}: pathkit F1 {row['pathkit']['f1']:.2f}",
                  flush=True)
    summary = {m: {"chunk_f1": precision_recall_f1(t["hits"], t["detected"], t["true"])[2],
                   "chunk_f1_worst_video": float(min(r[m]["f1"] for r in rows))} for m, t in totals.items()}
    return {"videos": len(rows), "summary": summary, "per_video": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--tol", type=float, default=0.5)
    ap.add_argument("--conditions", default="clean,rescaled", help=f"comma list of {list(CONDITIONS)}")
    ap.add_argument("--out", default="figures")
    ap.add_argument("--workdir", default=None, help="where videos are written (default: a temp folder)")
    ap.add_argument("--repeats", type=int, default=3, help="time each chunk detector and baseline this many "
                                                           "times per video and keep the fastest")
    ap.add_argument("--chunks-only", action="store_true", help="skip pointer tracking and narratives (speed runs)")
    ap.add_argument("--no-transitions", action="store_true", help="skip the lecture-script transition cases")
    args = ap.parse_args()

    import scenedetect

    from pathkit.config import VideoConfig

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_video_"))
    try:
        import torch

        torch_version = torch.__version__
    except Exception:
        torch_version = None
    cfg = VideoConfig()
    report = {
        "machine": {**machine_record(), "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "torch": torch_version, "device": "cpu", "scenedetect": scenedetect.__version__,
                    "load_average_at_start": os.getloadavg()},
        "setup": {"videos_per_condition": 2 * args.seeds, "seconds": args.seconds, "fps": args.fps, "size": args.size,
                  "tolerance_s": args.tol, "analysis_fps": cfg.analysis_fps, "analysis_width": cfg.analysis_width,
                  "mad_k": cfg.mad_k, "repeats": args.repeats, "chunks_only": args.chunks_only},
        "conditions": {},
    }
    for name in args.conditions.split(","):
        scale, crf = CONDITIONS[name]
        report["conditions"][name] = run_condition(args, name, scale, crf, work)
    if not args.no_transitions:
        report["transitions"] = run_transitions(args, work)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from pathkit.io import write_json

    write_json(out / "video_benchmark.json", report)
    plot(report, out / "video_benchmark.png")
    brief = {name: {k: c[k] for k in ("chunks", "decode_only_frames_per_s", "speed_ratio_pathkit_vs_decode",
                                       "speed_ratio_pathkit_vs_decode_same_frames",
                                       "speed_ratio_pathkit_vs_best_scenedetect", "cursor", "grounding_box_iou",
                                       "goals") if k in c} for name, c in report["conditions"].items()}
    if "transitions" in report:
        brief["transitions"] = report["transitions"]["summary"]
    print(json.dumps(brief, indent=2))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathkit.io import atomic_path

    conds = report["conditions"]
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.4))
    names = ["pathkit", "adaptive", "content"]
    labels = ["pathkit", "PySceneDetect\nAdaptive", "PySceneDetect\nContent"]
    x = np.arange(3)
    width = 0.8 / max(1, len(conds))
    for k, (cname, c) in enumerate(conds.items()):
        axes[0].bar(x + (k - (len(conds) - 1) / 2) * width, [c["chunks"][n]["chunk_f1"] for n in names], width,
                    label=f"{cname} (crf {c['crf']}, screen x{c['screen_scale']:g})")
    axes[0].set_xticks(x, labels)
    axes[0].set_ylim(0, 1.05)
    axes[0].axhline(0.95, color="k", ls=":", lw=1)
    axes[0].set_title(f"Chunk F1 (both ends within {report['setup']['tolerance_s']} s)")
    axes[0].legend(loc="lower right", fontsize=8)
    c0 = next(iter(conds.values()))
    fps = [c0["chunks"][n]["frames_per_s"] for n in names] + [c0["decode_only_frames_per_s"],
                                                               c0["decode_same_frames_frames_per_s"]]
    axes[1].bar(np.arange(5), fps, color=["C0", "C1", "C1", "C7", "C7"])
    axes[1].set_xticks(np.arange(5), ["pathkit", "PySceneDetect\nAdaptive", "PySceneDetect\nContent",
                                      "decoding\nalone", "decoding only\npathkit's frames"], fontsize=7)
    axes[1].text(0, fps[0], f"{c0['speed_ratio_pathkit_vs_decode']:.2f}x decoding alone", ha="center", va="bottom",
                 fontsize=8)
    axes[1].set_ylabel("video frames / s (wall)")
    axes[1].set_title(f"Speed, {next(iter(conds))} ({report['machine']['cpu_count']} CPU cores, shared)")
    ex = c0["example"]
    axes[2].plot(ex["times"], ex["signal"], lw=1, color="k", label="cursor-masked difference")
    axes[2].axhline(ex["threshold"], color="r", ls="--", lw=1, label=f"adaptive threshold {ex['threshold']:.2f}")
    for s_, e_ in ex["true"]:
        axes[2].axvspan(s_, e_, color="g", alpha=0.12, lw=0)
    top = max(ex["signal"])
    for k, (s_, e_) in enumerate(ex["detected"]):
        axes[2].plot([s_, e_ - 0.05], [-0.06 * top] * 2, color="C0" if k % 2 == 0 else "C1", lw=4)
    axes[2].set_xlabel("seconds")
    axes[2].set_title(f"{ex['video']}: true (green) vs detected (bars)", fontsize=10)
    axes[2].legend(fontsize=8, loc="upper right")
    cn = [c for c in conds if conds[c]["cursor"] is not None]
    if not cn:
        axes[3].set_axis_off()
    else:
        vals = np.array([[conds[c]["cursor"]["recall"], 1 - conds[c]["cursor"]["false_detection_rate"]] for c in cn])
        axes[3].bar(np.arange(len(cn)) - 0.2, vals[:, 0], 0.4, label="recall (pointer visible)")
        axes[3].bar(np.arange(len(cn)) + 0.2, vals[:, 1], 0.4, label="1 - false detection rate")
        for k, c in enumerate(cn):
            axes[3].text(k, 0.05, f"median err\n{conds[c]['cursor']['median_error_px']:.1f} px", ha="center", fontsize=8,
                         color="w")
        axes[3].set_xticks(np.arange(len(cn)), cn)
        axes[3].set_ylim(0, 1.05)
        axes[3].axhline(0.95, color="k", ls=":", lw=1)
        axes[3].set_title("Pointer detection")
        axes[3].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
