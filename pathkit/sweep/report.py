"""``sweep_report``: a sweep's results as mean ± std over seeds, a table and a plot.

Rows are grouped by the ``x`` parameter (and ``hue``) and averaged over seeds. Another grid parameter that
varies would mix different settings into one mean, so it must be named as ``x`` or ``hue`` (the error says
which one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pathkit.io import PathkitError, atomic_path, read_json
from pathkit.sweep.runner import load_results

# Lazy imports: matplotlib (matplotlib, ~0.2-0.6 s). They load inside the functions that need them, not when
# this module is imported.

FIXED_COLUMNS = ("run_id", "status", "seconds", "error")


def summarize(results, x: str, y: str, hue: str | None = None, params: list[str] | None = None):
    """Mean, std and count of ``y`` per ``x`` (and ``hue``) over the finished runs (a DataFrame).

    ``params``: the sweep's parameter columns; one that varies besides ``x``, ``hue`` and ``seed`` is an error.
    """
    done = results[results["status"] == "done"]
    for name, what in ((x, "--x"), (y, "--y"), (hue, "--hue")):
        if name is not None and name not in results.columns:
            raise PathkitError(f"{what} {name!r}: not a column of results.csv "
                               f"({', '.join(c for c in results.columns if c not in FIXED_COLUMNS)})")
    if done.empty:
        raise PathkitError("no finished runs to report (every run failed or is pending)")
    keys = [x] + ([hue] if hue else [])
    varying = [c for c in params or [] if c in done.columns and c not in keys and c != "seed"
               and done[c].astype(str).nunique() > 1]
    if varying:
        raise PathkitError(f"parameter {varying[0]!r} varies too; name it as --x or --hue so runs with different "
                           "settings are not averaged together")
    grouped = done.groupby(keys, dropna=False)[y]
    table = grouped.agg(["mean", "std", "count"]).reset_index()
    table["std"] = table["std"].fillna(0.0)  # one seed: no spread
    table[f"{y} (mean ± std)"] = [f"{m:.4g} ± {s:.2g}" for m, s in zip(table["mean"], table["std"])]
    return table


def plot_summary(table, x: str, y: str, hue: str | None, path: Path, title: str | None = None):
    """Mean ± std of ``y`` against ``x``, one line per ``hue`` value; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    numeric = np.issubdtype(table[x].dtype, np.number)
    groups = table.groupby(hue, dropna=False) if hue else [(None, table)]
    positions = {v: i for i, v in enumerate(sorted(table[x].unique(), key=str))}
    for value, part in groups:
        part = part.sort_values(x)
        xs = part[x] if numeric else [positions[v] for v in part[x]]
        label = f"{hue}={value[0] if isinstance(value, tuple) else value}" if hue else None
        ax.errorbar(xs, part["mean"], yerr=part["std"], marker="o", capsize=4, label=label)
    if numeric and (table[x] > 0).all() and table[x].max() / table[x].min() >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(list(positions.values()), [str(v) for v in positions])
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean ± std over seeds)")
    n = int(table["count"].max())
    ax.set_title(title or f"{y} vs {x} ({n} seed{'s' if n > 1 else ''} per point)")
    if hue:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    return fig


def sweep_report(sweep_dir: str | Path, x: str, y: str, hue: str | None = None,
                 figures_dir: str | Path = "figures", name: str | None = None) -> dict[str, Any]:
    """Write ``figures/<name>.csv`` (mean ± std table) and ``figures/<name>.png``; return the table and paths."""
    import matplotlib.pyplot as plt

    sweep_dir, figures_dir = Path(sweep_dir), Path(figures_dir)
    meta = read_json(sweep_dir / "sweep.json") if (sweep_dir / "sweep.json").is_file() else {}
    params = [*meta.get("grid", {}), *meta.get("set", {})]
    table = summarize(load_results(sweep_dir), x, y, hue, params)
    name = name or f"sweep_{sweep_dir.resolve().name}_{y}"
    figures_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = figures_dir / f"{name}.csv", figures_dir / f"{name}.png"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    fig = plot_summary(table, x, y, hue, png_path)
    plt.close(fig)
    return {"table": table, "csv": csv_path, "png": png_path}
