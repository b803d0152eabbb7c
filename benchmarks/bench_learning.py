"""Benchmark: does each tiny recipe learn at every seed, and at another summation order?

A learning claim made from one seed on one machine is a draw, not a result. This trains every recipe through the
real ``pathkit train`` at seeds 0-4 (each seed draws its own synthetic data set and its own training order and
initialisation) and once more at seed 0 with 2 intra-op threads instead of 1: a different float summation order, a
cheap stand-in for another CPU. It writes per metric the mean, std and minimum over the runs, each run's numbers,
whether every run clears the recipe's target, and the machine with its package versions.

Targets (each a floor every run must clear, the minimum as well as the mean):
    quilt_llava, pa_llava  held-out tissue yes/no >= 0.85, std <= 0.05
    wsi_llava              4-way diagnosis >= 0.6
The mitoses yes/no (64 px tiles, near chance in every recipe) is reported beside them and kept out of the targets.

Usage:
    .venv/bin/python benchmarks/bench_learning.py                      # 3 recipes x 6 runs, 2 at a time
    .venv/bin/python benchmarks/bench_learning.py --recipes quilt_llava --seeds 0 1 --workers 1
Writes figures/learning_seeds.json and figures/learning_seeds.png; runs go to --work (kept, so reruns resume).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.io import write_json  # noqa: E402
from pathkit.provenance import machine_record  # noqa: E402

# (metric, floor, largest std allowed or None) per recipe; metrics are keys of summary.json's per_category
TARGETS = {
    "quilt_llava": [("tissue_yes_no", 0.85, 0.05)],
    "pa_llava": [("tissue_yes_no", 0.85, 0.05)],
    "wsi_llava": [("diagnosis_choice", 0.6, None)],
}
REPORTED = ("yes_no_accuracy", "choice_accuracy", "open_recall")


def _has_data_seed() -> bool:
    from pathkit.config import Config

    return hasattr(Config.from_name("tiny").synthetic, "seed")


def run_one(recipe: str, seed: int, threads: int, work: Path) -> dict:
    """Train one recipe at one seed (data and training) through the CLI; return its summary's numbers."""
    name = f"{recipe}-seed{seed}-threads{threads}"
    out = work / name
    cmd = [sys.executable, "-m", "pathkit.cli", "train", recipe, "--preset", "tiny", "--out", str(out),
           "--data", str(work / f"data-seed{seed}"), "--set", f"seed={seed}", "--no-progress"]
    if _has_data_seed():  # the data seed is its own setting: vary it with the training seed
        cmd[-1:-1] = ["--set", f"synthetic.seed={seed}"]
    env = {**os.environ, "PATHKIT_TORCH_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"recipe": recipe, "seed": seed, "threads": threads, "error": tail, "seconds": seconds}
    summary = json.loads((out / "summary.json").read_text())
    row = {"recipe": recipe, "seed": seed, "threads": threads, "seconds": round(seconds, 1),
           **{k: summary.get(k) for k in REPORTED}, **summary.get("per_category", {})}
    selected = {s: st.get("selected_epoch") for s, st in summary["stages"].items() if "selected_epoch" in st}
    if selected:
        row["selected_epoch"] = selected
    print(f"{name}: " + ", ".join(f"{k}={row[k]}" for k in row if isinstance(row[k], float)), flush=True)
    return row


def aggregate(rows: list[dict]) -> dict:
    """Per recipe and metric: mean, std, min, max, n; per target: met at every run or not."""
    result: dict = {}
    for recipe in sorted({r["recipe"] for r in rows}):
        runs = [r for r in rows if r["recipe"] == recipe and "error" not in r]
        metrics = sorted({k for r in runs for k, v in r.items() if isinstance(v, float) and k != "seconds"})
        stats = {}
        for m in metrics:
            values = np.asarray([r[m] for r in runs if r.get(m) is not None], dtype=float)
            stats[m] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std(ddof=1)), 4)
                        if len(values) > 1 else 0.0, "min": round(float(values.min()), 4),
                        "max": round(float(values.max()), 4), "n": int(len(values))}
        targets = []
        for metric, floor, max_std in TARGETS.get(recipe, []):
            s = stats.get(metric)
            ok = s is not None and s["min"] >= floor and (max_std is None or s["std"] <= max_std)
            targets.append({"metric": metric, "floor": floor, "max_std": max_std, "met_at_every_run": bool(ok)})
        errors = [r for r in rows if r["recipe"] == recipe and "error" in r]
        result[recipe] = {"stats": stats, "targets": targets, "runs": len(runs), "failed_runs": errors}
    return result


def plot(result: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(result)
    fig, axes = plt.subplots(1, len(recipes), figsize=(4.2 * len(recipes), 3.6), squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        metrics = [t["metric"] for t in result[recipe]["targets"]] + [
            m for m in ("yes_no_accuracy", "mitoses_yes_no", "choice_accuracy", "open_recall")
            if m in result[recipe]["stats"]]
        runs = [r for r in rows if r["recipe"] == recipe and "error" not in r]
        for i, m in enumerate(metrics):
            for r in runs:
                if r.get(m) is None:
                    continue
                marker = "s" if r["threads"] != 1 else "o"
                ax.scatter(i + (r["seed"] - 2) * 0.06, r[m], marker=marker, s=22,
                           color="tab:red" if r["threads"] != 1 else "tab:blue", alpha=0.8)
            s = result[recipe]["stats"][m]
            ax.errorbar(i + 0.3, s["mean"], yerr=s["std"], fmt="_", color="black", capsize=3)
        for t in result[recipe]["targets"]:
            ax.axhline(t["floor"], color="tab:green", ls="--", lw=1)
        ax.set_xticks(range(len(metrics)), [m.replace("_", "\n") for m in metrics], fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{recipe} ({result[recipe]['runs']} runs)", fontsize=9)
    axes[0][0].set_ylabel("held-out score", fontsize=8)
    fig.suptitle("tiny preset learning over seeds: dots seeds 0-4 (1 thread), squares seed 0 at 2 threads; "
                 "bar: mean ± std; dashed: target floor", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--two-thread-seed", type=int, default=0, help="also run this seed with 2 threads (-1: no)")
    parser.add_argument("--workers", type=int, default=2, help="trainings at once (each on its own threads)")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench_learning"))
    parser.add_argument("--out", default=str(REPO / "figures" / "learning_seeds"))
    parser.add_argument("--merge", default=None, help="a previous JSON: its runs of recipes not run now are kept")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jobs = [(r, s, 1) for r in args.recipes for s in args.seeds]
    if args.two_thread_seed >= 0:
        jobs += [(r, args.two_thread_seed, 2) for r in args.recipes]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        rows = list(pool.map(lambda job: run_one(*job, work), jobs))
    if args.merge:  # recipes not rerun keep their earlier runs (same code for them: checked by the caller)
        previous = json.loads(Path(args.merge).read_text())
        rows += [r for r in previous["runs"] if r["recipe"] not in args.recipes]
    result = aggregate(rows)
    out = Path(args.out)
    report = {"benchmark": "learning over seeds (tiny preset, pathkit train)", "machine": machine_record(),
              "load_average_at_end": list(os.getloadavg()), "wall_seconds": round(time.perf_counter() - t0, 1),
              "targets": {k: [list(t) for t in v] for k, v in TARGETS.items()}, "recipes": result, "runs": rows}
    write_json(out.with_suffix(".json"), report)
    plot(result, rows, out.with_suffix(".png"))
    for recipe, res in result.items():
        for t in res["targets"]:
            s = res["stats"].get(t["metric"], {})
            print(f"{recipe} {t['metric']}: mean {s.get('mean')} ± {s.get('std')}, min {s.get('min')} "
                  f"(floor {t['floor']}): {'met at every run' if t['met_at_every_run'] else 'NOT met'}")
    return 0 if all(t["met_at_every_run"] for r in result.values() for t in r["targets"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
