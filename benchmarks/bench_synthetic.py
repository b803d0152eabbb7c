"""Benchmark: how fast ``render_tissue`` paints, per class, against a plain random-noise image of the same size.

Slides are painted tile by tile (up to 100k x 100k px), so the painter must stay well above 1 Mpx/s. Three
measurements, side by side in one process:

- ``render``: one ``render_tissue`` call of ``size`` x ``size`` per class (megapixels per second);
- ``tiled``: the same area painted as 256 px tiles at their ``origin`` with one ``field_seed`` (what a slide
  writer does; seamless) -- the overhead of per-tile margins and calls;
- ``noise baseline``: ``rng.integers(0, 256, (size, size, 3), uint8)``, the cost of merely producing random
  pixels of that size.

Usage:
    .venv/bin/python benchmarks/bench_synthetic.py                 # 1024 px, 3 repeats (about a minute)
    .venv/bin/python benchmarks/bench_synthetic.py --size 4096 --repeats 2
Writes figures/synthetic.json and figures/synthetic.png (``--out`` to change the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.provenance import machine_record  # noqa: E402
from pathkit.synthetic.tissue import CLASSES, render_tissue, sample_attributes, sample_stain  # noqa: E402


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="square image side in pixels")
    parser.add_argument("--tile", type=int, default=256, help="tile side for the tiled measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=2.0, help="render scale (2 = 0.5 mpp slides)")
    parser.add_argument("--out", default=str(REPO / "figures" / "synthetic"))
    args = parser.parse_args(argv)
    size, tile = args.size, args.tile
    mpx = size * size / 1e6

    noise_rng = np.random.default_rng(0)
    noise_s = best_time(lambda: noise_rng.integers(0, 256, (size, size, 3), dtype=np.uint8), args.repeats)
    rows = []
    for label in CLASSES:
        rng = np.random.default_rng(0)
        attrs, stain = sample_attributes(label, rng), sample_stain(rng)

        def whole(label=label, attrs=attrs, stain=stain):
            render_tissue(label, size, size, np.random.default_rng(1), stain=stain, scale=args.scale,
                          field_seed=3, **attrs)

        def tiled(label=label, attrs=attrs, stain=stain):
            for y in range(0, size, tile):
                for x in range(0, size, tile):
                    render_tissue(label, min(tile, size - y), min(tile, size - x), np.random.default_rng([x, y]),
                                  stain=stain, scale=args.scale, origin=(x, y), field_seed=3, **attrs)

        render_s = best_time(whole, args.repeats)
        tiled_s = best_time(tiled, args.repeats)
        rows.append({"label": label, "render_mpx_s": mpx / render_s, "tiled_mpx_s": mpx / tiled_s,
                     "render_vs_noise_time_ratio": render_s / noise_s})
        print(f"{label:12s} render {mpx / render_s:7.2f} Mpx/s   tiled({tile}) {mpx / tiled_s:7.2f} Mpx/s   "
              f"{render_s / noise_s:6.1f}x the time of a noise image")
    print(f"{'noise':12s} {mpx / noise_s:7.2f} Mpx/s (baseline)")

    import torch

    result = {
        "benchmark": "synthetic.render_tissue", "size": size, "tile": tile, "scale": args.scale,
        "repeats": args.repeats, "noise_mpx_s": mpx / noise_s, "classes": rows,
        "min_render_mpx_s": min(r["render_mpx_s"] for r in rows),
        "machine": {**machine_record(), "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                    "device": "cpu", "load_average_1m": os.getloadavg()[0]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["render_mpx_s"] for r in rows], 0.4, label=f"one {size}x{size} call")
    ax.bar(x + 0.2, [r["tiled_mpx_s"] for r in rows], 0.4, label=f"{tile} px tiles at their origins")
    ax.axhline(1.0, color="red", ls="--", lw=1, label="requirement: 1 Mpx/s")
    ax.set_xticks(x, [r["label"] for r in rows])
    ax.set_ylabel("megapixels per second")
    ax.set_title(f"render_tissue throughput (scale {args.scale:g}, {os.cpu_count()} CPUs); "
                 f"noise baseline {mpx / noise_s:.0f} Mpx/s", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
