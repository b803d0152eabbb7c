"""Execute the numbered tutorial notebooks in order with papermill (``python -m pathkit.notebooks``).

Every notebook starts with a cell tagged ``parameters`` holding at least::

    preset = "tiny"          # tiny | gpu | paper
    seed = 0
    workdir = "../runs"      # data, features and checkpoints shared by the notebooks (load if cached)
    figures_dir = "../figures"

and, for sweeps (``pathkit sweep``, notebook 11)::

    overrides = {}           # Config keys (and stage keys where a recipe trains)
    run_dir = None           # where pathkit.sweep.record writes metrics.json

This runner injects the first four, so ``make tutorial`` and the test suite run the same code. ``make tutorial``
also gives each notebook a ``run_dir`` (``executed/metrics/<notebook>/``) and prints every notebook's recorded
headline numbers at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pathkit.sweep.record import read_metrics

# Lazy imports: papermill (papermill, Jupyter's stack). They load inside the functions that need them, not
# when this module is imported.

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def list_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """Numbered notebooks (``NN_name.ipynb``) in execution order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path: Path, out_dir: Path, preset: str = "tiny", seed: int = 0,
                 workdir: Path | None = None, figures_dir: Path | None = None,
                 extra: dict | None = None, run_dir: Path | None = None) -> Path:
    """Execute one notebook; the executed copy goes to ``out_dir``. Raises on the first failing cell.

    ``run_dir``: injected as the notebook's ``run_dir`` (its ``pathkit.sweep.record`` values land there).
    """
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = (workdir or REPO / "runs" / preset).resolve()
    figures_dir = (figures_dir or REPO / "figures").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    params = {"preset": preset, "seed": seed, "workdir": str(workdir), "figures_dir": str(figures_dir)}
    if run_dir is not None:
        params["run_dir"] = str(Path(run_dir).resolve())
    params.update(extra or {})
    out = out_dir / path.name
    pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent), kernel_name="python3",
                        language="python", progress_bar=False, log_output=False)
    return out


def print_recorded(metrics_root: Path, notebooks: list[Path]) -> None:
    """Each notebook's recorded headline numbers (``pathkit.sweep.record``), one line per notebook."""
    for nb in notebooks:
        values = read_metrics(metrics_root / nb.stem)
        if values:
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            print(f"  {nb.stem}: {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute every notebook in notebooks/ in order with papermill.")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "gpu", "paper"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="executed", help="folder for the executed copies")
    parser.add_argument("--workdir", default=None, help="data/checkpoint folder (default runs/<preset>)")
    parser.add_argument("--only", nargs="*", default=None, help="run only notebooks whose name contains these")
    args = parser.parse_args(argv)
    notebooks = list_notebooks()
    if args.only:
        notebooks = [p for p in notebooks if any(s in p.name for s in args.only)]
    failures = []
    metrics_root = REPO / args.out / "metrics"
    for nb in notebooks:
        t0 = time.perf_counter()
        print(f"[{nb.name}] running at preset {args.preset} ...", flush=True)
        (metrics_root / nb.stem / "metrics.json").unlink(missing_ok=True)  # record() merges: start clean
        try:
            run_notebook(nb, REPO / args.out, args.preset, args.seed,
                         Path(args.workdir) if args.workdir else None, run_dir=metrics_root / nb.stem)
        except Exception as err:  # keep going: later notebooks rebuild what they need
            first = str(err).strip().splitlines()
            failures.append(nb.name)
            print(f"[{nb.name}] FAILED: {type(err).__name__}: {first[-1] if first else ''}", flush=True)
            continue
        print(f"[{nb.name}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    print_recorded(metrics_root, notebooks)
    if failures:
        print(f"{len(failures)} notebook(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print(f"all {len(notebooks)} notebooks executed; copies in {args.out}/, figures in figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
