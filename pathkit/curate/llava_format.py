"""LLaVA instruction JSON: validation with errors that name the record and field, and converters into it.

The contract (DESIGN.md): a list of ``{"id", "image", "conversations": [{"from": "human", "value":
"<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``; ``image`` is a path, a list of paths, or a slide
feature file, or absent for text-only records; extra keys are kept. What LLaVA's trainer needs and this checks:
turns alternate human/gpt starting with human and end with gpt, values are strings, and the number of
``<image>`` tokens in the human turns equals the number of images (0 for text-only records).

Converters: :func:`narratives_to_llava` (localized narratives JSONL rows -> description records with boxes,
Quilt-LLaVA-Pretrain style) and :func:`tiles_to_llava` (synthetic tile ``metadata.jsonl`` rows -> caption
records), both with deterministic instruction phrasings in the PA-LLaVA way (a random prompt per record,
``<image>`` before or after it).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pathkit.io import PathkitError, read_json

IMAGE_TOKEN = "<image>"
DESCRIBE_PROMPTS = (
    "Describe this histopathology image.",
    "What do you see in this image?",
    "Give a detailed description of the tissue shown.",
    "Explain the findings in this image.",
    "Describe the morphology visible in this image.",
    "Write a caption for this pathology image.",
)


def _record_problem(rec: Any) -> str | None:
    """The first problem of one record as '<field>: <what>', or None when valid."""
    if not isinstance(rec, dict):
        return f"record: expected an object, got {type(rec).__name__}"
    if "id" not in rec or not isinstance(rec["id"], (str, int)) or rec["id"] == "":
        return "id: missing or not a string/integer"
    image = rec.get("image")
    if image is None:
        n_images = 0
    elif isinstance(image, str) and image:
        n_images = 1
    elif isinstance(image, list) and image and all(isinstance(p, str) and p for p in image):
        n_images = len(image)
    else:
        return "image: must be a path, a non-empty list of paths, or absent"
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "conversations: missing or empty"
    n_tokens = 0
    for i, turn in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict):
            return f"conversations[{i}]: expected an object"
        if turn.get("from") != want:
            return f"conversations[{i}].from: expected {want!r} (human first, alternating), got {turn.get('from')!r}"
        if not isinstance(turn.get("value"), str):
            return f"conversations[{i}].value: must be a string"
        if not turn["value"].strip():
            return f"conversations[{i}].value: empty"
        if want == "human":
            n_tokens += turn["value"].count(IMAGE_TOKEN)
        elif IMAGE_TOKEN in turn["value"]:
            return f"conversations[{i}].value: {IMAGE_TOKEN} in a gpt turn"
    if len(turns) % 2:
        return f"conversations[{len(turns) - 1}]: the last turn must be from gpt"
    if n_tokens != n_images:
        return f"conversations: {n_tokens} {IMAGE_TOKEN} token(s) for {n_images} image(s)"
    return None


def validate_llava(records: Any, source: str = "<records>", errors: list[str] | None = None) -> int:
    """Check a LLaVA list; the first problem raises ``PathkitError("<source>: record <i> (id=...): <field>: ...")``.

    With ``errors`` given, every problem is appended there instead and the number of valid records returned.
    Duplicate ids are problems too.
    """
    if not isinstance(records, list):
        raise PathkitError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    seen: dict[Any, int] = {}
    valid = 0
    for i, rec in enumerate(records):
        problem = _record_problem(rec)
        rid = rec.get("id") if isinstance(rec, dict) else None
        if problem is None and rid in seen:
            problem = f"id: duplicate of record {seen[rid]}"
        if problem is not None:
            msg = f"{source}: record {i} (id={rid!r}): {problem}"
            if errors is None:
                raise PathkitError(msg)
            errors.append(msg)
            continue
        seen[rid] = i
        valid += 1
    return valid


def validate_llava_file(path: str | Path, errors: list[str] | None = None) -> int:
    """:func:`validate_llava` on a JSON file (a JSON parse error names line and column)."""
    return validate_llava(read_json(path), str(path), errors)


def _instruction(rng: random.Random) -> str:
    prompt = rng.choice(DESCRIBE_PROMPTS)
    return f"{IMAGE_TOKEN}\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n{IMAGE_TOKEN}"


def narratives_to_llava(rows: Iterable[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Localized-narratives rows (one per stable chunk) -> description records, boxes kept (0-1)."""
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(rows):
        if not row.get("caption") or not row.get("frame"):
            raise PathkitError(f"narratives row {i}: missing field {'caption' if not row.get('caption') else 'frame'!r}")
        w, h = float(row.get("width") or 1), float(row.get("height") or 1)
        boxes = []
        for g in row.get("groundings") or []:
            x1, y1, x2, y2 = g["box"]
            scale = (w, h) if max(g["box"]) > 1 else (1.0, 1.0)
            boxes.append({"text": g.get("text", ""), "box": [round(x1 / scale[0], 3), round(y1 / scale[1], 3),
                                                             round(x2 / scale[0], 3), round(y2 / scale[1], 3)]})
        rid = row.get("id") or f"{Path(str(row.get('video', 'video'))).stem}-{row.get('chunk', i)}"
        out.append({"id": str(rid), "image": row["frame"],
                    "conversations": [{"from": "human", "value": _instruction(rng)},
                                      {"from": "gpt", "value": row["caption"].strip()}],
                    "boxes": boxes, "source": "narratives", "kind": "caption"})
    return out


def tiles_to_llava(rows: Iterable[dict[str, Any]], seed: int = 0, split: str | None = None) -> list[dict[str, Any]]:
    """Synthetic tile metadata rows (id, image, label, attributes, caption, split) -> caption records."""
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(rows):
        if split is not None and row.get("split") != split:
            continue
        for key in ("id", "image", "caption"):
            if not row.get(key):
                raise PathkitError(f"tile metadata row {i}: missing field {key!r}")
        out.append({"id": str(row["id"]), "image": row["image"],
                    "conversations": [{"from": "human", "value": _instruction(rng)},
                                      {"from": "gpt", "value": row["caption"].strip()}],
                    "label": row.get("label"), "source": "synthetic_tiles", "kind": "caption"})
    return out


def record_problem(rec: Any) -> str | None:
    """The first problem of one LLaVA record as ``'<field>: <what>'``, or None when it is valid.

    For streaming checks (one record at a time, e.g. ``pathkit data import``); duplicate ids are the caller's.
    """
    return _record_problem(rec)
