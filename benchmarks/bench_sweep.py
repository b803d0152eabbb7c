"""Benchmark: 8 tiny notebook runs by ``pathkit sweep`` three ways, against papermill run by hand.

The swept notebook has a parameters cell, a fixed amount of pure-Python CPU work (``--work`` iterations, about
a second on one core) and one ``pathkit.sweep.record`` call. Side by side in one process:

- ``papermill by hand``: ``papermill.execute_notebook`` 8 times in a row (the baseline: no run folders, no
  results table, no resume);
- ``sweep --workers 1``: the same 8 runs through ``run_sweep`` (run folders, locks, params/metrics/status,
  results.csv after every run);
- ``sweep --workers 2``: a local pool of 2 processes;
- ``sweep --engine ray``: a local Ray with 2 CPUs (its start-up timed separately).

Reported: wall seconds of each, the speedup of 2 workers and of Ray over 1 worker, and pathkit's per-run
overhead over papermill by hand ((sweep --workers 1 - papermill) / runs).

Usage:
    .venv/bin/python benchmarks/bench_sweep.py              # 8 runs (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_sweep.py --runs 4 --work 2000000
Writes figures/sweep.json and figures/sweep.png (``--out`` to change the stem).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.provenance import machine_record  # noqa: E402
from pathkit.sweep.runner import run_sweep  # noqa: E402
from pathkit.sweep.spec import SweepSpec  # noqa: E402

PARAMETERS = "x = 0\nwork = 4_000_000\nrun_dir = None"
BODY = """\
import pathkit.sweep

total = 0
for i in range(work):  # CPU-bound on purpose: two runs at once need two cores
    total += i % 7
pathkit.sweep.record(run_dir, x=x, total=total)"""


def write_probe(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(PARAMETERS)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(BODY)]
    nbformat.write(nb, path)
    return path


def by_hand(probe: Path, out: Path, runs: int, work: int) -> float:
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for x in range(runs):
        pm.execute_notebook(str(probe), str(out / f"run{x}.ipynb"), parameters={"x": x, "work": work},
                            kernel_name="python3", language="python", progress_bar=False)
    return time.perf_counter() - t0


def swept(probe: Path, out: Path, runs: int, work: int, **engine) -> float:
    spec = SweepSpec(probe, grid={"x": list(range(runs))}, fixed={"work": work}, **engine)
    t0 = time.perf_counter()
    summary = run_sweep(spec, out, progress=False)
    seconds = time.perf_counter() - t0
    assert summary["done"] == runs, summary
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--work", type=int, default=4_000_000, help="loop iterations per run")
    parser.add_argument("--out", default=str(REPO / "figures" / "sweep"), help="output stem")
    args = parser.parse_args(argv)

    import os

    load_before = os.getloadavg()[0]
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = write_probe(tmp / "probe.ipynb")
        seconds["papermill by hand"] = by_hand(probe, tmp / "by_hand", args.runs, args.work)
        print(f"papermill by hand: {seconds['papermill by hand']:.1f} s", flush=True)
        seconds["sweep --workers 1"] = swept(probe, tmp / "w1", args.runs, args.work, workers=1)
        print(f"sweep --workers 1: {seconds['sweep --workers 1']:.1f} s", flush=True)
        seconds["sweep --workers 2"] = swept(probe, tmp / "w2", args.runs, args.work, workers=2)
        print(f"sweep --workers 2: {seconds['sweep --workers 2']:.1f} s", flush=True)
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        try:
            seconds["sweep --engine ray (2 CPUs)"] = swept(probe, tmp / "ray", args.runs, args.work, engine="ray")
        finally:
            ray.shutdown()
        print(f"sweep --engine ray: {seconds['sweep --engine ray (2 CPUs)']:.1f} s (+ {ray_start:.1f} s ray.init)")

    one = seconds["sweep --workers 1"]
    result = {
        "name": "sweep",
        "what": f"{args.runs} runs of a notebook with {args.work:,} loop iterations of CPU work each",
        "runs": args.runs,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "ray_init_seconds": round(ray_start, 2),
        "speedup_vs_workers_1": {"workers 2": round(one / seconds["sweep --workers 2"], 2),
                                 "ray 2 CPUs": round(one / seconds["sweep --engine ray (2 CPUs)"], 2),
                                 "ray 2 CPUs incl. ray.init": round(
                                     one / (seconds["sweep --engine ray (2 CPUs)"] + ray_start), 2)},
        "per_run_overhead_vs_papermill_s": round((one - seconds["papermill by hand"]) / args.runs, 3),
        "per_run_seconds_papermill": round(seconds["papermill by hand"] / args.runs, 3),
        "machine": machine_record(),
        # other work on a shared machine slows every variant; a load far above the core count voids the speedup
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = list(seconds)
    bars = ax.barh(names, [seconds[n] for n in names], color=["grey", "tab:blue", "tab:blue", "tab:orange"])
    ax.barh(["sweep --engine ray (2 CPUs)"], [ray_start], left=[seconds["sweep --engine ray (2 CPUs)"]],
            color="tab:orange", alpha=0.35, label="ray.init")
    for bar, n in zip(bars, names):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {seconds[n]:.1f} s", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds")
    ax.legend(loc="lower right")
    ax.set_title(f"{args.runs} tiny notebook runs; overhead {result['per_run_overhead_vs_papermill_s']:.2f} s/run "
                 f"vs papermill; {result['machine']['cpus']} CPUs", fontsize=9)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(json.dumps({k: result[k] for k in ("seconds", "speedup_vs_workers_1", "per_run_overhead_vs_papermill_s")},
                     indent=1))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
