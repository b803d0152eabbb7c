"""Whole-slide pipeline benchmark: tile throughput vs a plain read_region loop, memory on a giant slide,
tissue-mask IoU against ground truth, and feature-extraction throughput.

    .venv/bin/python benchmarks/bench_wsi.py                      # small default (a few minutes on 2 CPUs)
    .venv/bin/python benchmarks/bench_wsi.py --giant               # + peak RSS while tiling 100,000 x 100,000
    .venv/bin/python benchmarks/bench_wsi.py --device cuda --encoder vit-b16-random --slides 8 --size 16384 \
        --batch-size 256 --feature-workers 8 --skip throughput iou --tag gpu   # end to end on a GPU (ViT-B/16, bf16)

Writes figures/bench_wsi.json and figures/bench_wsi.png (with --tag, figures/bench_wsi_<tag>.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def machine() -> dict:
    import torch

    from pathkit.provenance import machine_record

    info = {**machine_record(), "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "device_name": "cpu"}
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------------------------------------- throughput


def raw_loop(slide_path: str, coords: np.ndarray, plan) -> float:
    """Baseline: one openslide handle, read_region + RGB numpy per tile, no pathkit. Returns tiles/s."""
    import openslide

    handle = openslide.OpenSlide(slide_path)
    start = time.perf_counter()
    for x, y in coords:
        np.asarray(handle.read_region((int(x), int(y)), plan.level, (plan.read_size, plan.read_size))
                   .convert("RGB"))
    return len(coords) / (time.perf_counter() - start)


def loader_rate(slide_path: str, coords: np.ndarray, plan, workers: int, batch_size: int = 32) -> float:
    from pathkit.wsi.dataset import SlideTileDataset, make_loader

    dataset = SlideTileDataset(slide_path, coords, plan)
    loader = make_loader(dataset, batch_size=batch_size, workers=workers)
    it = iter(loader)
    first = next(it)  # worker start-up is not tile throughput
    n = len(first[0])
    start = time.perf_counter()
    for tiles, _ in it:
        n += len(tiles)
    elapsed = time.perf_counter() - start
    return (n - len(first[0])) / elapsed


def bench_throughput(root: Path, size: int, workers_list: list[int], repeats: int) -> dict:
    from pathkit.synthetic.slides import write_slide
    from pathkit.wsi.slide import Slide
    from pathkit.wsi.tiling import tile_grid

    path = root / "throughput.svs"
    if not path.exists():
        write_slide(path, size, size, mpp=0.5, seed=7, fmt="svs", diagnosis="adenocarcinoma")
    with Slide(path) as slide:
        grid = tile_grid(slide, mpp=0.5, size=256, min_tissue=0.1)
    coords = grid.coords
    out = {"slide_size": size, "tiles": int(len(coords)), "runs": []}
    for workers in workers_list:
        raw = max(raw_loop(str(path), coords, grid.plan) for _ in range(repeats))
        ours = max(loader_rate(str(path), coords, grid.plan, workers) for _ in range(repeats))
        per_worker = ours / max(1, workers)
        row = {"workers": workers, "raw_read_region_tiles_per_s": round(raw, 1),
               "pathkit_loader_tiles_per_s": round(ours, 1), "pathkit_per_worker_tiles_per_s": round(per_worker, 1),
               "ratio_per_worker_vs_raw": round(per_worker / raw, 3)}
        print(f"  workers={workers}: raw {raw:.0f}/s, pathkit {ours:.0f}/s "
              f"({per_worker:.0f}/s per worker, {per_worker / raw:.2f}x raw)", flush=True)
        out["runs"].append(row)
    return out


# --------------------------------------------------------------------------------------------- memory


def _peak_rss_of(cmd: list[str]) -> tuple[float, float, str]:
    """Run a Python snippet in a child; returns (peak RSS MB reported by the child, seconds, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "child failed")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["peak_rss_mb"], time.perf_counter() - start, result


WRITE_GIANT = """
import json, resource, sys, time
from pathkit.synthetic.slides import write_slide
t = time.perf_counter()
truth = write_slide(sys.argv[1], int(sys.argv[2]), int(sys.argv[2]), mpp=0.5, seed=3, fast=True, level_factor=4,
                    quality=60, diagnosis="fibrosis")
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t, "levels": truth.level_dimensions}))
"""
TILE_GIANT = """
import json, resource, sys, time
from pathkit.wsi.pipeline import tile_slide
t = time.perf_counter()
out, n = tile_slide(sys.argv[1], sys.argv[3], mpp=0.5, size=256, min_tissue=0.1, thumbnail_size=2048)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t, "tiles": n}))
"""


def bench_giant(root: Path, size: int) -> dict:
    path = root / f"giant_{size}.tiff"
    py = sys.executable
    write_rss, write_s, wrote = _peak_rss_of([py, "-c", WRITE_GIANT, str(path), str(size)])
    print(f"  wrote {size}x{size} in {write_s:.0f} s (peak RSS {write_rss:.0f} MB, "
          f"{path.stat().st_size / 2**30:.2f} GiB)", flush=True)
    tile_rss, tile_s, tiled = _peak_rss_of([py, "-c", TILE_GIANT, str(path), str(size), str(root / "giant_out")])
    print(f"  tiled in {tile_s:.0f} s: {tiled['tiles']} tiles, peak RSS {tile_rss:.0f} MB", flush=True)
    result = {"size": size, "file_gib": round(path.stat().st_size / 2**30, 3), "write_seconds": round(write_s, 1),
              "write_peak_rss_mb": round(write_rss, 1), "tile_seconds": round(tile_s, 1),
              "tile_peak_rss_mb": round(tile_rss, 1), "tiles": tiled["tiles"], "goal_rss_mb": 2048}
    path.unlink()
    return result


# --------------------------------------------------------------------------------------------- IoU, features


def bench_iou(root: Path, count: int, size: int) -> dict:
    from pathkit.synthetic.slides import DIAGNOSES, tissue_mask_iou, write_slide

    names = list(DIAGNOSES)
    rows = []
    for i in range(count):
        truth = write_slide(root / f"iou_{i}.tiff", size, size, mpp=0.5, seed=100 + i,
                            diagnosis=names[i % len(names)])
        iou = tissue_mask_iou(truth)[0]
        rows.append({"slide": Path(truth.slide).name, "diagnosis": truth.diagnosis, "iou": round(iou, 4)})
    ious = [r["iou"] for r in rows]
    print(f"  tissue IoU over {count} slides: mean {np.mean(ious):.3f}, min {np.min(ious):.3f}", flush=True)
    return {"slides": rows, "mean_iou": round(float(np.mean(ious)), 4), "min_iou": round(float(np.min(ious)), 4),
            "goal": 0.9}


class GpuSampler(threading.Thread):
    """Samples GPU utilisation (nvidia-smi) every 0.2 s while extraction runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except Exception:
                return
            time.sleep(0.2)


def bench_features(root: Path, encoder: str, device: str, slides: int, size: int, batch_size: int,
                   workers: int) -> dict:
    import torch

    from pathkit.models.encoders import load_encoder
    from pathkit.synthetic.slides import write_slide
    from pathkit.wsi.pipeline import extract_features, tile_slides

    paths = []
    for i in range(slides):
        path = root / f"feat_{size}_{i}.tiff"
        if not path.exists():
            write_slide(path, size, size, mpp=0.5, seed=200 + i, fast=size > 8192)
        paths.append(path)
    coords_dir = root / f"coords_{size}"
    tile_slides(paths, coords_dir, progress=False, figure=False)
    feats_dir = root / f"feats_{encoder}_{device}_{size}_{time.time_ns()}"

    load_encoder(encoder, device="cpu")  # build/cache once, outside the timing
    sampler = GpuSampler() if device.startswith("cuda") else None
    if sampler:
        sampler.start()
    summary = extract_features(coords_dir, encoder, feats_dir, load_encoder=load_encoder,
                               batch_size=batch_size, workers=workers,
                               device=device, progress=False)
    if sampler:
        sampler.stop.set()
        sampler.join()
    busy = summary.load_wait_seconds + summary.compute_seconds
    result = {"encoder": encoder, "device": device, "slides": slides, "slide_size": size, "tiles": summary.tiles,
              "batch_size": batch_size, "workers": workers, "seconds": round(summary.seconds, 2),
              "tiles_per_s": round(summary.tiles_per_second, 1),
              "load_wait_fraction": round(summary.load_wait_seconds / busy, 3) if busy else None,
              "loading_is_bottleneck": bool(busy and summary.load_wait_seconds > summary.compute_seconds),
              "failed": summary.failed}
    if sampler and sampler.samples:
        result["gpu_util_mean_pct"] = round(float(np.mean(sampler.samples)), 1)
    if device.startswith("cuda"):
        result["bf16_autocast"] = True
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"  features {encoder} on {device}: {summary.tiles} tiles at {summary.tiles_per_second:.1f} tiles/s, "
          f"load-wait fraction {result['load_wait_fraction']}", flush=True)
    return result


# --------------------------------------------------------------------------------------------- main


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    runs = results.get("throughput", {}).get("runs", [])
    if runs:
        labels = [f"{r['workers']} worker(s)" for r in runs]
        x = np.arange(len(runs))
        axes[0].bar(x - 0.2, [r["raw_read_region_tiles_per_s"] for r in runs], 0.4, label="raw read_region (1 proc)")
        axes[0].bar(x + 0.2, [r["pathkit_per_worker_tiles_per_s"] for r in runs], 0.4,
                    label="pathkit loader, per worker")
        for i, r in enumerate(runs):
            axes[0].text(i + 0.2, r["pathkit_per_worker_tiles_per_s"], f"{r['ratio_per_worker_vs_raw']:.2f}x",
                         ha="center", va="bottom", fontsize=9)
        axes[0].set_xticks(x, labels)
        axes[0].set_ylabel("tiles / s")
        axes[0].set_title("tile throughput (256 px @ 0.5 mpp)")
        axes[0].legend(fontsize=8)
    iou = results.get("iou")
    if iou:
        axes[1].bar(range(len(iou["slides"])), [r["iou"] for r in iou["slides"]], color="tab:green")
        axes[1].axhline(iou["goal"], color="k", ls="--", lw=1, label="goal 0.9")
        axes[1].set_ylim(0.5, 1.0)
        axes[1].set_xticks(range(len(iou["slides"])), [r["diagnosis"][:10] for r in iou["slides"]], rotation=30,
                           fontsize=8)
        axes[1].set_title(f"tissue mask IoU vs truth (mean {iou['mean_iou']:.3f})")
        axes[1].legend(fontsize=8)
    bars, names = [], []
    if results.get("giant"):
        g = results["giant"]
        bars += [g["tile_peak_rss_mb"], g["write_peak_rss_mb"]]
        names += [f"tile {g['size'] // 1000}k²", f"write {g['size'] // 1000}k²"]
        axes[2].axhline(2048, color="k", ls="--", lw=1, label="goal 2 GB (tiling)")
        axes[2].legend(fontsize=8)
    if bars:
        axes[2].bar(names, bars, color="tab:purple")
        axes[2].set_ylabel("peak RSS (MB)")
        axes[2].set_title("memory on a giant slide")
    else:
        axes[2].set_axis_off()
    feats = results.get("features")
    fig.suptitle(f"{results['machine']['device_name']}, {results['machine']['cpu_count']} CPUs"
                 + (f"; features {feats['encoder']}: {feats['tiles_per_s']} tiles/s on {feats['device']}"
                    if feats else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="throughput/feature slide edge (px)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader worker counts to compare")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--giant", action="store_true", help="write and tile a giant slide, report peak RSS")
    ap.add_argument("--giant-size", type=int, default=100_000)
    ap.add_argument("--iou-slides", type=int, default=6)
    ap.add_argument("--encoder", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--slides", type=int, default=2, help="slides for the feature benchmark")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--feature-workers", type=int, default=None, help="loader workers for extraction")
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "iou", "features"])
    ap.add_argument("--workdir", default=None, help="keep slides here between runs (default: a temp dir)")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="bench_wsi_")
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "args": vars(args)}
    print(f"bench_wsi on {results['machine']['device_name']} ({results['machine']['cpu_count']} CPUs)", flush=True)
    if "throughput" not in args.skip:
        print("tile throughput:", flush=True)
        results["throughput"] = bench_throughput(root, args.size, args.workers, args.repeats)
    if "iou" not in args.skip:
        print("tissue IoU:", flush=True)
        results["iou"] = bench_iou(root, args.iou_slides, min(args.size, 4096))
    if "features" not in args.skip:
        print("features:", flush=True)
        workers = args.feature_workers if args.feature_workers is not None else (0 if args.device == "cpu" else 8)
        results["features"] = bench_features(root, args.encoder, args.device, args.slides, args.size,
                                             args.batch_size, workers)
    if args.giant:
        print("giant slide:", flush=True)
        results["giant"] = bench_giant(root, args.giant_size)
    figures = REPO / "figures"
    figures.mkdir(exist_ok=True)
    stem = "bench_wsi" + (f"_{args.tag}" if args.tag else "")
    (figures / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, figures / f"{stem}.png")
    print(f"wrote figures/{stem}.json and figures/{stem}.png")
    return results


if __name__ == "__main__":
    main()
