"""Run the curation filters over LLaVA records and say, for every removed record, which rule removed it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pathkit.curate.dedup import dedup_records, record_caption
from pathkit.curate.image_filter import ImageFilter
from pathkit.curate.text_filter import TextFilter
from pathkit.io import PathkitError


def filter_records(records: list[dict[str, Any]], text_filter: TextFilter | None = None,
                   image_filter: ImageFilter | None = None, image_root: str | Path = ".",
                   progress: bool = False, on_error: Callable[[int, str], None] | None = None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, removed) where each removed entry is ``{"index", "id", "reason", "rule"}``.

    Text is checked first (cheap), images only for records that passed. An unreadable image removes the record
    with rule ``unreadable`` (the batch continues).
    """
    kept, removed = [], []
    for i, rec in enumerate(tqdm(records, desc="filter", disable=not progress)):
        reason = text_filter.check(record_caption(rec)) if text_filter is not None else None
        if reason is None and image_filter is not None and rec.get("image"):
            images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
            for img in images:
                try:
                    reason = image_filter.check(Path(image_root) / img)
                except PathkitError as err:
                    reason = f"unreadable ({err})"
                if reason is not None:
                    break
        if reason is None:
            kept.append(rec)
        else:
            removed.append({"index": i, "id": rec.get("id"), "rule": reason.split(" ")[0], "reason": reason})
    return kept, removed


def removal_counts(removed: list[dict[str, Any]]) -> dict[str, int]:
    """How many records each rule removed (for plots and summaries)."""
    return dict(Counter(r.get("rule") or r.get("reason") for r in removed))


def curate_records(records: list[dict[str, Any]], text_filter: TextFilter | None = None,
                   image_filter: ImageFilter | None = None, image_root: str | Path = ".", threshold: float = 0.9,
                   dedup_images: bool = True, progress: bool = False,
                   embed: Callable[[Any], Any] | None = None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Filters, then deduplication: (kept, removed) with each removal's ``stage`` (filter/dedup) and ``rule``.

    ``embed``: the caption embedder (default :func:`pathkit.curate.dedup.caption_embedder`).
    """
    kept, removed = filter_records(records, text_filter, image_filter, image_root, progress)
    for r in removed:
        r["stage"] = "filter"
    index_of = {id(rec): i for i, rec in enumerate(records)}
    final, report = dedup_records(kept, threshold, images=dedup_images, image_root=image_root, embed=embed,
                                  progress=progress)
    for r in report:
        r["index"] = index_of[id(kept[r["index"]])]
        r.update(stage="dedup", rule=f"duplicate_{r['reason']}")
    return final, sorted(removed + report, key=lambda r: r["index"])
