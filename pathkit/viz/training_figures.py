"""Training curves of a staged recipe: loss per optimiser step, one panel per stage, plus held-out accuracy.

Reads what :func:`pathkit.train.runner.run_recipe` writes (``<stage>/losses.jsonl`` and ``summary.json``), so a
notebook or a report can redraw the figure of any finished or interrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pathkit.io import read_json, read_jsonl

# Lazy imports: matplotlib (matplotlib, ~0.2-0.6 s). They load inside the functions that need them, not when
# this module is imported.


def recipe_curves(out_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{stage: losses rows}`` in the recipe's stage order."""
    out_dir = Path(out_dir)
    summary = read_json(out_dir / "summary.json") if (out_dir / "summary.json").exists() else {"stages": {}}
    names = list(summary.get("stages", {}))
    for path in sorted(out_dir.glob("*/losses.jsonl")):
        if path.parent.name not in names:
            names.append(path.parent.name)
    return {n: read_jsonl(out_dir / n / "losses.jsonl") for n in names if (out_dir / n / "losses.jsonl").exists()}


def plot_recipe_curves(out_dir: str | Path, png: str | Path | None = None, title: str | None = None):
    """Loss curves of every stage side by side (log-scale loss) and the final held-out scores as a bar panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    curves = recipe_curves(out_dir)
    summary = read_json(out_dir / "summary.json") if (out_dir / "summary.json").exists() else {}
    scores = {k: summary[k] for k in ("closed_accuracy", "yes_no_accuracy", "choice_accuracy", "open_recall")
              if summary.get(k) is not None}
    panels = len(curves) + (1 if scores else 0)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(3.6 * max(1, panels), 3.2), squeeze=False)
    axes = axes[0]
    for ax, (stage, rows) in zip(axes, curves.items()):
        steps = [r["step"] for r in rows]
        losses = [r["loss"] for r in rows]
        ax.plot(steps, losses, lw=1.2, color="tab:blue")
        info = summary.get("stages", {}).get(stage, {})
        trained = ", ".join(info.get("trainable", [])) if isinstance(info.get("trainable"), list) else ""
        ax.set_title(f"{stage}\ntrains: {trained}" if trained else stage, fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("train loss")
        if losses and min(losses) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if scores:
        ax = axes[len(curves)]
        names = list(scores)
        ax.bar(range(len(names)), [scores[n] for n in names], color="tab:green")
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
        ax.set_ylim(0, 1.12)  # room for the value labels above a bar at 1.0
        for i, n in enumerate(names):
            ax.text(i, scores[n] + 0.02, f"{scores[n]:.2f}", ha="center", fontsize=8)
        if summary.get("yes_no_accuracy") is not None:
            ax.axhline(0.5, ls="--", color="grey", lw=0.8)
        ax.set_title("held-out", fontsize=9)
    fig.suptitle(title or summary.get("recipe", out_dir.name), fontsize=10)
    fig.tight_layout()
    if png is not None:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=110)
        plt.close(fig)
    return fig
