"""Benchmark: pointer tracking and stable chunks on real screencasts (Xvfb + X cursor themes + x11grab).

The family (:data:`pathkit.video.screencast_family.FAMILY`) is recorded live on first use and cached under
``$PATHKIT_CACHE/screencasts/v1`` (~16 clips x ~25 s of wall time). For every clip, in one process:

* pointer: the learned detector (``PointerTracker``, pathkit's default) beside the template tracker it
  replaced (``CursorTracker``); recall within 8 px of the hotspot on frames with a pointer, median and
  95th-percentile error, false detections on frames without one. Frames grabbed while the pointer was
  moving (within 8 ms of a move) are left out (``ambiguous``): their position is not known;
* speed on one core: frames/s of each tracker over the whole clip (decoding included) at 640x360 and
  1280x720, and of decoding alone;
* chunks: ``stable_chunks`` F1 at 0.5 s against the lecture's holds, and speed relative to decoding alone.

Each split (``dev``, ``heldout``, ``fresh``, ``accept`` to ``accept4``: see
:mod:`pathkit.video.screencast_family`) is summarised on its own; ``accept4`` (recorded after the fifth
detector was frozen) is the acceptance measurement, ``accept`` to ``accept3`` (the second to fourth
detectors') have been looked at since.
Writes figures/screencast_benchmark.json and .png.

    .venv/bin/python benchmarks/bench_screencast.py
    .venv/bin/python benchmarks/bench_screencast.py --clips adwaita-24 redglass-24 --root /tmp/sc
    .venv/bin/python benchmarks/bench_screencast.py --template-from figures/screencast_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pathkit.provenance import machine_record


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def run_clip(path: Path, chunks_too: bool = True, template: dict | None = None) -> dict:
    from pathkit.config import VideoConfig
    from pathkit.io import read_json
    from pathkit.video.chunks import stable_chunks
    from pathkit.video.cursor import track_cursor
    from pathkit.video.decode import decode_count, probe
    from pathkit.video.pointer_tracker import track_pointer
    from pathkit.video.scoring import chunk_scores, per_frame_detections, pointer_scores
    from pathkit.video.screencast import chunk_truth, pointer_truth, truth_path
    from pathkit.video.screencast_family import frame_times

    truth = read_json(truth_path(path))
    info = probe(path)
    times = frame_times(path)
    txy, ambiguous = pointer_truth(truth, times)
    out = {"size": f"{info.width}x{info.height}", "frames": len(times), "style": truth["style"]}
    n_decoded, t_decode = timed(decode_count, path)
    out["decode_frames_per_s"] = n_decoded / t_decode
    for name, fn in (("pathkit_net", track_pointer), ("template", track_cursor)):
        if name == "template" and template is not None:
            out[name] = {**template, "carried_over": True}
            continue
        rows, secs = timed(fn, path)
        out[name] = {**pointer_scores(txy, ambiguous, per_frame_detections(rows, times)), "frames_per_s": len(times) / secs}
    if chunks_too:
        duration = float(times[-1] + 1 / info.fps)
        true_chunks = chunk_truth(truth, duration)
        det, secs = timed(lambda: stable_chunks(path, VideoConfig()))
        got = [(c.start, c.end) for c in det.chunks]
        out["chunks"] = {**chunk_scores(got, true_chunks, 0.5), "true": true_chunks, "detected": got,
                         "speed_vs_decode": (len(times) / secs) / out["decode_frames_per_s"]}
    return out


def narrative_scores(path: Path, work: Path, detector: str = "net") -> dict:
    """``pathkit video narratives`` on a real screencast narrated with one utterance per pointing gesture (the
    pointer circles a region while the narrator speaks): IoU of each grounding box with the circled region's
    box, and how often the box holds the region's centre."""
    from dataclasses import replace

    from pathkit.config import VideoConfig
    from pathkit.io import read_json
    from pathkit.video.narratives import narrate_video
    from pathkit.video.scoring import box_iou
    from pathkit.video.screencast import dwell_transcript, truth_path

    truth = read_json(truth_path(path))
    vtt = work / f"{path.stem}.vtt"
    spans = dwell_transcript(truth, vtt)
    rows = narrate_video(path, vtt, work / f"{path.stem}-{detector}", replace(VideoConfig(), cursor_detector=detector))
    ious, hits = [], 0
    for row in rows:
        for g in row["groundings"]:
            _, _, box = min(spans, key=lambda sp: abs(sp[0] - g["start"]))
            ious.append(box_iou(g["box"], box))
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            hits += int(g["box"][0] <= cx <= g["box"][2] and g["box"][1] <= cy <= g["box"][3])
    return {"utterances": len(spans), "groundings": len(ious), "iou_mean": float(np.mean(ious)) if ious else 0.0,
            "iou_gt_0.3": float(np.mean(np.array(ious) > 0.3)) if ious else 0.0,
            "box_holds_centre": hits / max(1, len(ious))}


def summarise(results: dict, clips, split: str, method: str) -> dict:
    names = [c.name for c in clips if c.split == split and c.name in results]
    if not names:
        return {}
    rec = [results[n][method]["recall"] for n in names]
    vis = [results[n][method]["visible_frames"] for n in names]
    hid = [results[n][method]["hidden_frames"] for n in names]
    fdr = [results[n][method]["false_detection_rate"] for n in names]
    return {
        "clips": names,
        "recall_pooled": float(np.dot(rec, vis) / max(1, sum(vis))),
        "recall_worst_clip": float(min(rec)),
        "median_error_px_worst_clip": float(np.nanmax([results[n][method]["median_error_px"] for n in names])),
        "median_error_px_median_clip": float(np.nanmedian([results[n][method]["median_error_px"] for n in names])),
        "false_detection_rate_pooled": float(np.dot(fdr, hid) / max(1, sum(hid))),
        "visible_frames": int(sum(vis)), "hidden_frames": int(sum(hid)),
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from pathkit.io import write_json
    from pathkit.paths import cache_dir
    from pathkit.video.screencast_family import FAMILY, ensure_clip

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(cache_dir() / "screencasts" / "v1"))
    ap.add_argument("--clips", nargs="*", default=None)
    ap.add_argument("--out", default="figures/screencast_benchmark.json")
    ap.add_argument("--template-from", default=None,
                    help="an earlier benchmark JSON: take the (unchanged) template tracker's per-clip numbers from it "
                         "instead of re-running it (marked carried_over); clips it lacks are run")
    args = ap.parse_args(argv)
    earlier = {}
    if args.template_from:
        from pathkit.io import read_json

        earlier = {n: r["template"] for n, r in read_json(args.template_from)["clips"].items() if "template" in r}
    torch.set_num_threads(1)  # "one core"
    clips = [c for c in FAMILY if args.clips is None or c.name in args.clips]
    load0 = os.getloadavg()
    results = {}
    work = Path(args.root) / "narratives"
    work.mkdir(parents=True, exist_ok=True)
    for c in clips:
        path = ensure_clip(args.root, c)
        results[c.name] = {"split": c.split, **run_clip(path, template=earlier.get(c.name))}
        r = results[c.name]
        if c.gestures:
            r["narratives"] = {d: narrative_scores(path, work, d) for d in ("net", "template")}
        print(f"{c.name:24s} {c.split:8s} net recall {r['pathkit_net']['recall']:.3f} "
              f"med {r['pathkit_net']['median_error_px']:.2f}px fdr {r['pathkit_net']['false_detection_rate']:.3f} "
              f"{r['pathkit_net']['frames_per_s']:.0f} fps | template recall {r['template']['recall']:.3f} "
              f"fdr {r['template']['false_detection_rate']:.3f} | chunks F1 {r['chunks']['f1']:.2f}"
              + (f" | grounding IoU {r['narratives']['net']['iou_mean']:.2f}" if "narratives" in r else ""), flush=True)
    report = {
        "machine": {**machine_record(), "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": 1, "load_average_at_start": load0,
                    "load_average_at_end": os.getloadavg()},
        "clips": results,
        "summary": {m: {s: summarise(results, clips, s, m) for s in ("accept4", "accept3", "accept2", "accept", "fresh", "heldout", "dev")} for m in ("pathkit_net", "template")},
    }
    for size in ("640x360", "1280x720"):
        rows = [r for r in results.values() if r["size"] == size]
        if rows:
            report["summary"][f"speed_{size}"] = {
                m: float(np.median([r[m]["frames_per_s"] for r in rows])) for m in ("pathkit_net", "template")}
            report["summary"][f"speed_{size}"]["decode"] = float(np.median([r["decode_frames_per_s"] for r in rows]))
    f1s = [r["chunks"]["f1"] for r in results.values() if "chunks" in r]
    report["summary"]["chunks"] = {"f1_mean": float(np.mean(f1s)), "f1_min": float(np.min(f1s)),
                                   "speed_vs_decode_median": float(np.median(
                                       [r["chunks"]["speed_vs_decode"] for r in results.values()]))}
    for d in ("net", "template"):
        nar = [r["narratives"][d] for r in results.values() if "narratives" in r]
        n = sum(x["groundings"] for x in nar)
        if nar:
            report["summary"][f"narratives_{d}"] = {
                "utterances": int(sum(x["utterances"] for x in nar)), "groundings": int(n),
                "iou_mean": float(sum(x["iou_mean"] * x["groundings"] for x in nar) / max(1, n)),
                "box_holds_centre": float(sum(x["box_holds_centre"] * x["groundings"] for x in nar) / max(1, n))}
    write_json(args.out, report)
    print(json.dumps(report["summary"], indent=1))
    plot(report, Path(args.out).with_suffix(".png"))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathkit.io import atomic_path

    order = ("dev", "heldout", "fresh", "accept", "accept2", "accept3", "accept4")
    names = sorted(report["clips"], key=lambda n: (order.index(s) if (s := report["clips"][n]["split"]) in order
                                                   else len(order)))  # grouped by split, family order within
    fig, ax = plt.subplots(figsize=(max(12.0, 0.2 * len(names)), 5.5))
    x = np.arange(len(names))
    for k, (m, label) in enumerate((("pathkit_net", "learned detector"), ("template", "template tracker (before)"))):
        ax.bar(x + (k - 0.5) * 0.4, [report["clips"][n][m]["recall"] for n in names], 0.4, label=label)
    ax.axhline(0.95, color="k", ls=":", lw=1)
    splits = [report["clips"][n]["split"] for n in names]
    for i in range(1, len(names)):  # split boundaries, each split named above its clips
        if splits[i] != splits[i - 1]:
            ax.axvline(i - 0.5, color="grey", lw=0.8)
    for sp in dict.fromkeys(splits):
        idx = [i for i, s in enumerate(splits) if s == sp]
        ax.text(np.mean(idx), 1.06, sp, ha="center", fontsize=8)
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("recall within 8 px")
    ax.set_title(f"Pointer recall on real screencasts, by split; {report['machine']['cpu_count']} shared CPU cores",
                 pad=18)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
