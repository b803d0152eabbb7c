"""Matplotlib figures for narrated videos: difference signal and chunks, pointer trajectories, Quilt boxes,
heat-map overlays. Each function draws on an ``ax`` (created when None) and returns it."""

from __future__ import annotations

import textwrap

import numpy as np

# Lazy imports: matplotlib (matplotlib, ~0.2-0.6 s). They load inside the functions that need them, not when
# this module is imported.


def _ax(ax, figsize=(8, 4)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_difference_signal(detection, true_chunks=None, ax=None, title: str | None = None):
    """The cursor-masked difference signal, its adaptive threshold, true chunks (green spans) and detected
    chunks (bars in alternating colours underneath)."""
    ax = _ax(ax, (10, 3.5))
    ax.plot(detection.times, detection.signal, lw=1, color="k", label="cursor-masked difference")
    ax.axhline(detection.threshold, color="r", ls="--", lw=1,
               label=f"adaptive threshold (median + k·MAD) = {detection.threshold:.2f}")
    for s, e in true_chunks or []:
        ax.axvspan(s, e, color="tab:green", alpha=0.15, lw=0)
    top = max(1.0, float(np.max(detection.signal)))
    for k, c in enumerate(detection.chunks):
        ax.plot([c.start, c.end - 0.05], [-0.06 * top] * 2, lw=5, color="tab:blue" if k % 2 == 0 else "tab:orange",
                solid_capstyle="butt")
    ax.set_ylim(-0.12 * top, 1.05 * top)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mean |Δ grey|")
    ax.set_title(title or "Difference signal: green = true stable chunks, bars = detected chunks")
    ax.legend(loc="upper right", fontsize=8)
    return ax


def plot_trajectory(frame: np.ndarray, cursor: np.ndarray, ax=None, title: str | None = None, cmap="viridis"):
    """Pointer trajectory ``(N, 3)`` of ``(t, x, y)`` over the frame, coloured by time."""
    ax = _ax(ax, (6, 4.5))
    ax.imshow(frame)
    cursor = np.asarray(cursor, float).reshape(-1, 3)
    if len(cursor):
        ax.plot(cursor[:, 1], cursor[:, 2], color="w", lw=0.8, alpha=0.7)
        sc = ax.scatter(cursor[:, 1], cursor[:, 2], c=cursor[:, 0], cmap=cmap, s=14, edgecolors="k", linewidths=0.3)
        ax.figure.colorbar(sc, ax=ax, fraction=0.035, label="time (s)")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_groundings(frame: np.ndarray, groundings: list[dict], cursor=None, truth_boxes=None, ax=None,
                    title: str | None = None, wrap: int = 38):
    """Quilt boxes (one colour per grounding) labelled with their utterance; optional true boxes dashed."""
    import matplotlib.patches as mpatches

    ax = _ax(ax, (6, 4.5))
    ax.imshow(frame)
    if cursor is not None and len(cursor):
        c = np.asarray(cursor, float)
        ax.scatter(c[:, 1], c[:, 2], s=6, color="w", edgecolors="k", linewidths=0.2, alpha=0.8)
    for b in truth_boxes or []:
        ax.add_patch(mpatches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ls="--", lw=1.2,
                                        ec="lime"))
    colours = ["cyan", "yellow", "magenta", "orange"]
    seen: dict[tuple, int] = {}
    for g in groundings:
        key = tuple(g["box"])
        k = seen.setdefault(key, len(seen))
        x1, y1, x2, y2 = g["box"]
        col = colours[k % len(colours)]
        ax.add_patch(mpatches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec=col))
        ax.text(x1, y1 - 2, "\n".join(textwrap.wrap(g["text"], wrap)[:2]), color=col, fontsize=6, va="bottom",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_heatmap_overlay(frame: np.ndarray, heat: np.ndarray, ax=None, title: str | None = None, alpha: float = 0.55,
                         cmap="jet"):
    """The frame with its dwell heat map blended on top (transparent where the heat is ~0), Quilt-style."""
    ax = _ax(ax, (6, 4.5))
    ax.imshow(frame)
    masked = np.ma.masked_less(heat, 0.05)
    ax.imshow(masked, cmap=cmap, alpha=alpha, vmin=0, vmax=max(1e-6, float(heat.max())))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax
