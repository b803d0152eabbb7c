"""Evaluation reports for notebook 09: which models to evaluate, the seeds' published numbers (theirs, for
context), tables of the closed-accuracy variants, figures with confidence intervals, and an overview of the
benchmark JSONs other parts write into ``figures/``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathkit.eval import metrics as M
from pathkit.models.vlm import VisionLanguageModel
from pathkit.train.recipes import get_recipe
from pathkit.train.runner import run_recipe
from pathkit.workdir import tutorial_data

# Lazy imports: pandas (pandas, ~0.6 s); matplotlib (matplotlib, ~0.2-0.6 s). They load inside the functions
# that need them, not when this module is imported.

# Numbers the seeds PUBLISHED (not measured by pathkit), from reference/seed-systems.md; source tags as there.
SEED_PUBLISHED: dict[str, Any] = {
    "huatuogpt_vision_table": {
        "source": "HuatuoGPT-Vision README [code README], closed-set accuracy (%)",
        "benchmarks": ["VQA-RAD", "SLAKE", "PathVQA", "PMC-VQA", "OmniMedVQA", "MMMU H&M"],
        "models": {
            "LLaVA-Med-7B": [51.4, 48.6, 56.8, 24.7, 44.5, 36.9],
            "LLaVA-v1.6-34B": [58.6, 67.3, 59.1, 44.4, 61.4, 48.8],
            "HuatuoGPT-Vision-7B": [63.7, 76.2, 57.9, 54.3, 74.0, 50.6],
            "HuatuoGPT-Vision-34B": [68.1, 76.9, 63.5, 58.2, 76.9, 54.4],
        },
    },
    "pathvqa_quilt_llava": {
        "source": "[2nd] Wizwand leaderboard quoted in a GitHub note",
        "Quilt-LLaVA-7B": {"closed_accuracy": 58.7, "open_recall": 15.3},
        "LLaVA-Med-7B": {"closed_accuracy": 56.2, "open_recall": 12.0},
    },
    "quilt_vqa_red_closed": {"source": "quilt-llava issue #13", "paper": 77.78, "user_with_released_weights": 71.3},
    "wsi_bench_accuracy_wsi_llava": {
        "source": "[2nd] MLLM-HWSI Table 3 re-run",
        "Morphological analysis": 0.951, "Diagnosis": 0.863, "Treatment planning": 1.0, "Average": 0.938,
    },
}


def find_trained_models(workdir: str | Path) -> dict[str, Path]:
    """``{"<recipe>/<stage>": folder}`` for every saved model under ``workdir/train/<recipe>/<stage>/model``;
    the last stage of each recipe is what a reader wants to evaluate, so those come first."""
    root = Path(workdir) / "train"
    found: dict[str, Path] = {}
    if not root.exists():
        return found
    for meta in sorted(root.glob("*/*/model/pathkit_vlm.json")):
        model_dir = meta.parent
        found[f"{model_dir.parent.parent.name}/{model_dir.parent.name}"] = model_dir
    return found


def last_stage_models(models: dict[str, Path], vision: str = "image") -> dict[str, tuple[str, Path]]:
    """``{recipe: (name, folder)}``: each recipe's most recently saved stage (stages run in order), keeping only
    models of the given vision kind (slide models answer WSI questions, not tile questions)."""
    last: dict[str, tuple[str, Path, float]] = {}
    for name, path in models.items():
        meta_path = path / "pathkit_vlm.json"
        meta = json.loads(meta_path.read_text())
        if meta.get("vision", "image") != vision:
            continue
        recipe, mtime = name.split("/")[0], meta_path.stat().st_mtime
        if recipe not in last or mtime >= last[recipe][2]:
            last[recipe] = (name, path, mtime)
    return {k: (n, p) for k, (n, p, _) in sorted(last.items())}


def stratified_questions(questions: list[dict[str, Any]], max_questions: int | None) -> list[dict[str, Any]]:
    """At most ``max_questions``, taken round-robin over categories so every question type stays present."""
    if not max_questions or len(questions) <= max_questions:
        return list(questions)
    by_cat: dict[str, list] = {}
    for q in questions:
        by_cat.setdefault(str(q.get("category") or q["answer_type"]), []).append(q)
    out: list[dict[str, Any]] = []
    while len(out) < max_questions:
        for rows in by_cat.values():
            if rows and len(out) < max_questions:
                out.append(rows.pop(0))
    return out


def variant_table(metrics_by_model: dict[str, dict[str, Any]]):
    """A DataFrame: per model, pathkit's closed accuracy and the three seed variants (with items counted)."""
    import pandas as pd

    rows = []
    for name, m in metrics_by_model.items():
        row = {"model": name, "pathkit": m["closed_accuracy"]["value"], "n": m["closed_accuracy"]["n"]}
        for variant, s in m["closed_accuracy_variants"].items():
            row[variant] = s["value"]
            row[f"{variant}_n"] = s["n"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def disagreement_table(examples: Sequence[tuple[str, str]] = (
        ("normal", "no"), ("normal", "yes"), ("not seen", "no"), ("No.", "no"), ("Yes, it is.", "yes"),
        ("B) necrosis", "B"), ("There is no tumor", "yes"))):
    """How each closed-accuracy rule scores a few answers (1 right, 0 wrong, "-" not counted)."""
    import pandas as pd

    rows = []
    for answer, truth in examples:
        row = {"answer": answer, "truth": truth, "pathkit": int(M.closed_correct(answer, truth))}
        for name, fn in M.SEED_CLOSED_VARIANTS.items():
            hit = fn(answer, truth)
            row[name] = "-" if hit is None else hit
        rows.append(row)
    return pd.DataFrame(rows)


def plot_metrics_with_ci(metrics_by_model: dict[str, dict[str, Any]], path: str | Path | None = None):
    """Per question category: closed accuracy (closed categories) or open recall (open ones), 95% CI bars."""
    import matplotlib.pyplot as plt

    cats = sorted({c for m in metrics_by_model.values() for c in m["by_category"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cats) + 2), 3.8))
    width = 0.8 / max(1, len(metrics_by_model))
    for k, (name, m) in enumerate(metrics_by_model.items()):
        vals, lows, highs = [], [], []
        for c in cats:
            g = m["by_category"].get(c)
            s = None
            if g is not None:
                s = g["closed_accuracy"] if g["n_closed"] else g["open_recall"]
            v = s["value"] if s and s["value"] is not None else np.nan
            ci = s["ci95"] if s and s.get("ci95") else [v, v]
            vals.append(v)
            lows.append(v - ci[0])
            highs.append(ci[1] - v)
        x = np.arange(len(cats)) + k * width
        bars = ax.bar(x, vals, width, yerr=[lows, highs], capsize=3, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(cats)) + width * (len(metrics_by_model) - 1) / 2)
    ax.set_xticklabels([c + ("\n(recall)" if "open" in c else "\n(accuracy)") for c in cats], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (95% bootstrap CI)")
    ax.set_title("Held-out synthetic questions per type")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_variants(metrics_by_model: dict[str, dict[str, Any]], path: str | Path | None = None):
    """The same answers scored by pathkit's rule and by each seed's closed-accuracy code."""
    import matplotlib.pyplot as plt

    names = ["pathkit", *M.SEED_CLOSED_VARIANTS]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(metrics_by_model))
    for k, (model, m) in enumerate(metrics_by_model.items()):
        stats = [m["closed_accuracy"], *(m["closed_accuracy_variants"][v] for v in M.SEED_CLOSED_VARIANTS)]
        vals = [s["value"] if s["value"] is not None else np.nan for s in stats]
        err = [[v - (s["ci95"] or [v, v])[0] for v, s in zip(vals, stats)],
               [(s["ci95"] or [v, v])[1] - v for v, s in zip(vals, stats)]]
        bars = ax.bar(np.arange(len(names)) + k * width, vals, width, yerr=err, capsize=3, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(names)) + width * (len(metrics_by_model) - 1) / 2)
    ax.set_xticklabels(["pathkit\n(first yes/no\nor letter)", "LLaVA-Med\n(substring)", "Quilt\n(no/not rule)",
                        "PA-LLaVA\n(exact match)"], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("closed accuracy")
    ax.set_title("One set of answers, four closed-accuracy rules")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_seed_numbers(path: str | Path | None = None):
    """The HuatuoGPT-Vision README table (published numbers, not pathkit's)."""
    import matplotlib.pyplot as plt

    table = SEED_PUBLISHED["huatuogpt_vision_table"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(table["models"])
    for k, (model, vals) in enumerate(table["models"].items()):
        ax.bar(np.arange(len(table["benchmarks"])) + k * width, vals, width, label=model)
    ax.set_xticks(np.arange(len(table["benchmarks"])) + width * (len(table["models"]) - 1) / 2)
    ax.set_xticklabels(table["benchmarks"], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Published by the seeds (HuatuoGPT-Vision README), not measured here", fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _numeric_leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            label = v.get("label", v.get("name", i)) if isinstance(v, dict) else i
            yield from _numeric_leaves(v, f"{prefix}[{label}]")
    elif isinstance(obj, bool):
        return
    elif isinstance(obj, (int, float)):
        yield prefix, float(obj)


def gather_benchmarks(figures_dir: str | Path, exclude_prefixes: Sequence[str] = ("09_",)
                      ) -> list[dict[str, Any]]:
    """Every ``figures/*.json`` a benchmark wrote: ``{"name", "data", "ratios": {key: value}}``.

    Ratios are the numeric fields whose name says speedup/ratio/x_faster (benchmarks print ratios against
    their baseline, per the team's convention). Unreadable files are listed with an ``error``.
    """
    out = []
    for path in sorted(Path(figures_dir).glob("*.json")):
        if path.name.startswith(tuple(exclude_prefixes)):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            out.append({"name": path.stem, "error": str(err), "ratios": {}})
            continue
        ratios = {k: v for k, v in _numeric_leaves(data)
                  if any(w in k.lower().rsplit(".", 1)[-1] for w in ("speedup", "ratio", "faster"))}
        out.append({"name": path.stem, "data": data, "ratios": ratios})
    return out


def plot_benchmark_overview(records: list[dict[str, Any]], path: str | Path | None = None, max_bars: int = 30):
    """One horizontal bar per benchmark ratio (log scale, 1 = same as its baseline)."""
    import matplotlib.pyplot as plt

    bars = [(f"{r['name']}: {k}", v) for r in records for k, v in r["ratios"].items() if v > 0][:max_bars]
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.32 * len(bars) + 1)))
    if not bars:
        ax.text(0.5, 0.5, "no benchmark JSONs with ratios in figures/ yet\n(run benchmarks/bench_*.py)",
                ha="center", va="center")
        ax.axis("off")
    else:
        labels, vals = zip(*bars)
        ax.barh(range(len(vals)), vals, color="tab:blue")
        ax.set_yticks(range(len(vals)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("ratio as reported (log scale; see each JSON for its direction)")
        ax.invert_yaxis()
    ax.set_title("Benchmarks written to figures/")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def ensure_eval_models(workdir: str | Path, cfg: Any, recipe: str = "quilt_llava", max_steps: int = 10,
                       train: bool = True) -> tuple[dict[str, Path], str]:
    """Models to evaluate, and a sentence saying where they came from.

    The models earlier notebooks trained (``workdir/train/<recipe>/<stage>/model``) if any; else a short run of
    ``recipe`` (``max_steps`` optimiser steps per stage, so a notebook run alone stays quick); else, when the
    training code cannot run, a random-initialised model saved under ``workdir/eval/untrained`` (said so).
    """
    found = find_trained_models(workdir)
    if found:
        return found, f"{len(found)} model(s) trained by earlier notebooks under {Path(workdir) / 'train'}"
    if train:
        rec = get_recipe(recipe, cfg.preset)
        rec = dataclasses.replace(rec, stages=tuple(dataclasses.replace(s, max_steps=max_steps)
                                                    for s in rec.stages))
        run_recipe(rec, cfg, Path(workdir) / "train" / recipe, tutorial_data(rec, cfg, workdir)["train"])
        found = find_trained_models(workdir)
        if found:
            return found, (f"no trained model in the workdir: trained {recipe} here for {max_steps} steps "
                           "per stage (run notebook 07 for the full tiny recipe)")

    out = Path(workdir) / "eval" / "untrained" / "model"
    if not (out / "pathkit_vlm.json").exists():
        VisionLanguageModel.from_config(cfg).save_pretrained(out)
    return {"untrained": out}, "no trained model and training off: evaluating a random-initialised model (chance level)"
