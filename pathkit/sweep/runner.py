"""``run_sweep``: execute every run of a sweep, skip finished ones, collect results and failures.

Outputs (``OUT`` is the sweep folder)::

    OUT/runs/<run-id>/     one folder per run (see pathkit.sweep.execute)
    OUT/data/              prepared data shared by every run (linked into each run's workdir)
    OUT/results.csv        one row per run: run_id, every parameter, every recorded metric, status, seconds,
                           error (a metric named like a parameter or one of those columns is ``metric.<name>``)
    OUT/results.parquet    the same table
    OUT/failures.jsonl     one row per failed run: run id, error line, parameters, log path

``results.csv`` is rewritten (atomically) each time a run finishes, so an interrupted sweep keeps what it did.
Re-running the same command skips runs that finished with the same parameters and retries the rest.

Shared data: runs that would build the same prepared data (same ``preset``, ``seed`` and ``synthetic.*``
values) share one folder, ``OUT/data/<key>/``. The first run of each key runs before the others of that key
start (it builds the data; they reuse it), so no two runs ever build the same data folder at once; runs of
different keys run side by side from the start.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pathkit.io import FailureLog, PathkitError, atomic_path, write_json
from pathkit.ray_runtime import start_ray
from pathkit.sweep.engines import run_local, run_ray
from pathkit.sweep.execute import LOG_FILE, finished_status
from pathkit.sweep.record import read_metrics
from pathkit.sweep.spec import RunPlan, SweepSpec, run_id

# Lazy imports: pandas (pandas, ~0.6 s); papermill (papermill, Jupyter's stack); ray (Ray, an optional extra
# that starts a runtime). They load inside the functions that need them, not when this module is imported.

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
FAILURES = "failures.jsonl"


def split_params(params: dict[str, Any], declared: set[str], notebook: Path) -> dict[str, Any]:
    """Notebook parameters go in as themselves; every other key goes into the ``overrides`` dict."""
    inject = {k: v for k, v in params.items() if k in declared}
    overrides = {k: v for k, v in params.items() if k not in declared}
    if overrides:
        if "overrides" not in declared:
            raise PathkitError(f"{notebook}: {next(iter(overrides))!r} is not a parameter of this notebook, and "
                               "it has no 'overrides' parameter to pass config keys through")
        inject["overrides"] = overrides
    return inject


DATA_KEYS = ("preset", "seed")


def data_key(params: dict[str, Any]) -> str:
    """The shared-data folder of a run: what its prepared data depends on (preset, seed, synthetic.*)."""
    keyed = {k: v for k, v in params.items() if k in DATA_KEYS or k.startswith("synthetic.")}
    return run_id(keyed) if keyed else "default"


def next_wave(jobs: list[dict[str, Any]], prepared: set[str]) -> list[dict[str, Any]]:
    """The next jobs to start: all jobs whose data is prepared, plus the first job of each unprepared key."""
    wave, firsts = [], set()
    for job in jobs:
        key = job["data_key"]
        if key in prepared:
            wave.append(job)
        elif key not in firsts:
            firsts.add(key)
            wave.append(job)
    return wave


def _row(plan: RunPlan, status: dict[str, Any] | None, run_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": plan.run_id, **plan.params}
    for name, value in read_metrics(run_dir).items() if status else ():
        row[f"metric.{name}" if name in row or name in ("status", "seconds", "error") else name] = value
    row["status"] = (status or {}).get("status", "pending")
    row["seconds"] = (status or {}).get("seconds")
    row["error"] = (status or {}).get("error")
    return row


def write_results(out: Path, rows: list[dict[str, Any]], parquet: bool = True) -> None:
    """results.csv (and results.parquet) from the rows, atomically."""
    import pandas as pd

    table = pd.DataFrame(rows)
    with atomic_path(out / RESULTS_CSV) as tmp:
        table.to_csv(tmp, index=False)
    if parquet:
        try:
            with atomic_path(out / RESULTS_PARQUET) as tmp:
                # Mixed-type parameter columns (e.g. 4 and "auto") do not fit one parquet type: write them as text.
                safe = table.copy()
                for col in safe.columns:
                    if safe[col].dropna().map(type).nunique() > 1:
                        safe[col] = safe[col].map(lambda v: None if v is None else str(v))
                safe.to_parquet(tmp, index=False)
        except ImportError:  # pyarrow is in the dev extra; the CSV is the contract
            print("results.parquet not written: pip install pyarrow", file=sys.stderr)


def run_sweep(spec: SweepSpec, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Execute the sweep into ``out``; return counts and the paths written.

    Runs already done with the same parameters are skipped; failed and unfinished ones run again. A failing run
    is listed in ``failures.jsonl`` and the others go on.
    """
    import papermill as pm

    out = Path(out).resolve()
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    data_dir = (spec.data_dir or out / "data").resolve()
    notebook = spec.notebook.resolve()
    declared = set(pm.inspect_notebook(str(notebook)))
    plans = spec.runs()
    if not plans:
        raise PathkitError("the sweep has no runs: give --grid KEY=V1,V2 and/or --seeds")
    write_json(out / "sweep.json", {"notebook": str(notebook), "grid": spec.grid, "seeds": spec.seeds,
                                    "set": spec.fixed, "engine": spec.engine, "runs": len(plans)})

    statuses: dict[str, dict[str, Any] | None] = {}
    jobs = []
    for plan in plans:
        run_dir = runs_dir / plan.run_id
        done = finished_status(run_dir, plan.params)
        statuses[plan.run_id] = done
        key = data_key(plan.params)
        if done is None:
            jobs.append(dict(notebook=str(notebook), run_dir=str(run_dir), params=plan.params,
                             inject=split_params(plan.params, declared, notebook), data_dir=str(data_dir / key),
                             timeout=spec.timeout, data_key=key))
    skipped = len(plans) - len(jobs)
    by_id = {p.run_id: p for p in plans}

    def rows() -> list[dict[str, Any]]:
        return [_row(p, statuses[p.run_id], runs_dir / p.run_id) for p in plans]

    failures = FailureLog(out / FAILURES)

    def note(status: dict[str, Any]) -> None:
        statuses[status["run_id"]] = status
        if status["status"] == "failed":
            failures.add(status["run_id"], status.get("error") or "failed", params=by_id[status["run_id"]].params,
                         log=str(runs_dir / status["run_id"] / LOG_FILE))
            failures.write()
        write_results(out, rows(), parquet=False)

    write_results(out, rows(), parquet=False)
    failures.write()  # a stale failures file from an earlier attempt describes runs about to be retried
    # Keys with a finished run have their data; a key's first run builds it alone.
    prepared = {data_key(p.params) for p in plans if statuses[p.run_id] is not None}
    if "workdir" not in declared:  # a notebook without a workdir builds no shared data: nothing to wait for
        prepared |= {data_key(p.params) for p in plans}
    bar = tqdm(total=len(jobs), desc="sweep runs", unit="run", disable=not progress or not jobs)
    started_ray = False
    try:
        if spec.engine == "ray" and jobs:
            started_ray = start_ray(spec.ray_address)
        remaining = list(jobs)
        while remaining:
            wave = next_wave(remaining, prepared)
            remaining = [j for j in remaining if j not in wave]
            for status in _execute(spec, [{k: v for k, v in j.items() if k != "data_key"} for j in wave]):
                note(status)
                bar.update(1)
                if status["status"] == "failed":
                    bar.write(f"{status['run_id']}: FAILED: {status.get('error')}")
                else:
                    prepared.add(data_key(by_id[status["run_id"]].params))
            # a key whose first run failed: its next run builds the data (alone) in the next wave
    finally:
        bar.close()
        write_results(out, rows())
        if started_ray:
            import ray

            ray.shutdown()
    counts = {s: sum(1 for v in statuses.values() if (v or {}).get("status", "pending") == s)
              for s in ("done", "failed", "pending")}
    return {"runs": len(plans), "skipped": skipped, "executed": len(jobs), **counts,
            "results": str(out / RESULTS_CSV), "failures": str(out / FAILURES) if failures else None}


def _execute(spec: SweepSpec, jobs: list[dict[str, Any]]):
    if spec.engine == "ray":
        return run_ray(jobs, spec.num_cpus, spec.num_gpus)

    return run_local(jobs, spec.workers)


def load_results(out: str | Path):
    """The results table of a sweep folder (a pandas DataFrame)."""
    import pandas as pd

    path = Path(out) / RESULTS_CSV
    if not path.is_file():
        raise PathkitError(f"{path}: no results (run pathkit sweep first)")
    return pd.read_csv(path)
