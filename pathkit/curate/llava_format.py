"""LLaVA instruction JSON: validation with errors that name the record and field, and converters into it.

The contract (DESIGN.md): a list of ``{"id", "image", "conversations": [{"from": "human", "value":
"<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``; ``image`` is a path, a list of paths, or a slide
feature file, or absent for text-only records; extra keys are kept. What LLaVA's trainer needs and this checks:
turns alternate human/gpt starting with human and end with gpt, values are strings, and the number of
``<image>`` tokens in the human turns equals the number of images (0 for text-only records).

Files: :func:`iter_llava_file` streams the records of a JSON list (an incremental parser: a file of a million
records never sits in memory as one text) or of JSONL (one record a line); :func:`check_llava_file` checks every
record and, with ``check_files``, that its images exist and open and that its slide feature files agree in width,
giving one :class:`BadRecord` per problem (``train.json: #17 id=abc: image 'x.png' not found under DIR``).

Converters: :func:`narratives_to_llava` (localized narratives JSONL rows -> description records with boxes,
Quilt-LLaVA-Pretrain style) and :func:`tiles_to_llava` (synthetic tile ``metadata.jsonl`` rows -> caption
records), both with deterministic instruction phrasings in the PA-LLaVA way (a random prompt per record,
``<image>`` before or after it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pathkit.io import PathkitError, iter_jsonl
from pathkit.wsi.features import (
    FEATURE_SUFFIXES,  # an ``image`` with one of these is a slide feature file
    read_features,
)

# Lazy imports: h5py (h5py, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.

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
    if n_images and IMAGE_TOKEN not in turns[0]["value"]:
        return f"conversations[0].value: an image record's first human turn has no {IMAGE_TOKEN}"
    return None


def validate_llava(records: Any, source: str = "<records>", errors: list[str] | None = None) -> int:
    """Check a LLaVA list; the first problem raises ``PathkitError("<source>: record <i> (id=...): <field>: ...")``.

    With ``errors`` given, every problem is appended there instead and the number of valid records returned.
    Duplicate ids are problems too.
    """
    if not isinstance(records, list):
        raise PathkitError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    return _count_valid(enumerate(records), source, errors)


def validate_llava_file(path: str | Path, errors: list[str] | None = None) -> int:
    """:func:`validate_llava` on a LLaVA JSON list or JSONL file, streamed (a parse error names line and column)."""
    return _count_valid(iter_llava_file(path), str(path), errors)


def _count_valid(indexed: Iterable[tuple[int, Any]], source: str, errors: list[str] | None) -> int:
    seen: dict[Any, int] = {}
    valid = 0
    for i, rec in indexed:
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


# ------------------------------------------------------------------------------------------------ streaming


def iter_llava_file(path: str | Path, chunk_size: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """``(index, record)`` for each record of a LLaVA JSON list or a JSONL file, without loading the whole file.

    JSON is told from JSONL by its first character (``[`` = a list). The list is parsed one element at a time
    with ``json.JSONDecoder.raw_decode`` over a sliding buffer, so memory holds one record and one chunk."""
    path = Path(path)
    if not path.is_file():
        raise PathkitError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        head = fh.read(4096).lstrip("\ufeff \t\r\n")
    if not head.startswith("["):
        for index, (_, rec) in enumerate(iter_jsonl(path, objects_only=False)):
            yield index, rec
        return
    yield from _iter_json_list(path, chunk_size)


def _iter_json_list(path: Path, chunk_size: int) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    buf, consumed_lines, eof = "", 0, False  # consumed_lines: newlines in text already dropped from buf
    index, pos, state = 0, 0, "start"  # start -> (value -> sep)* -> end

    def fail(msg: str, at: int):
        line = consumed_lines + buf.count("\n", 0, at) + 1
        col = at - (buf.rfind("\n", 0, at) + 1) + 1
        raise PathkitError(f"{path}:{line}:{col}: invalid JSON ({msg})")

    with open(path, encoding="utf-8") as fh:
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos >= len(buf) or (state == "value" and not eof and len(buf) - pos < chunk_size):
                more = "" if eof else fh.read(chunk_size)
                eof = eof or not more
                consumed_lines += buf.count("\n", 0, pos)
                buf, pos = buf[pos:] + more, 0
                if not more and not buf:
                    if state != "end":
                        fail("unexpected end of file", 0)
                    return
                if more:
                    continue
            ch = buf[pos]
            if state == "start":
                if ch != "[":
                    fail("expected '['", pos)
                pos, state = pos + 1, "first"
            elif state in ("first", "value"):
                if state == "first" and ch == "]":
                    pos, state = pos + 1, "end"
                    continue
                try:
                    rec, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as err:
                    if not eof:  # the record may continue past the buffer: read more and retry
                        more = fh.read(chunk_size)
                        eof = not more
                        buf += more
                        continue
                    fail(err.msg, err.pos)
                yield index, rec
                index, pos, state = index + 1, end, "sep"
            elif state == "sep":
                if ch == ",":
                    pos, state = pos + 1, "value"
                elif ch == "]":
                    pos, state = pos + 1, "end"
                else:
                    fail("expected ',' or ']'", pos)
            else:
                fail("extra data after the list", pos)


# ------------------------------------------------------------------------------------------------ checking


@dataclass
class BadRecord:
    """One problem of one record: where (file, index, id), which field, and what."""

    file: str
    index: int
    id: Any
    field: str
    problem: str

    def line(self) -> str:
        return f"{Path(self.file).name}: #{self.index} id={self.id}: {self.problem}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "index": self.index, "id": self.id, "field": self.field,
                "problem": self.problem}


def image_paths(image: Any, base: Path) -> list[Path]:
    """The paths of a record's ``image`` (a path, a list of paths, or absent), relative ones under ``base``."""
    if image is None:
        return []
    items = image if isinstance(image, list) else [image]
    return [p if p.is_absolute() else base / p for p in (Path(str(x)) for x in items)]


def is_feature_file(path: str | Path) -> bool:
    return str(path).lower().endswith(FEATURE_SUFFIXES)


def check_llava_file(path: str | Path, image_folder: str | Path | None = None, check_files: bool = True
                     ) -> tuple[list[dict[str, Any]], list[BadRecord]]:
    """Every record of a LLaVA file checked, streaming: ``(good records, problems)``.

    A record is bad when it breaks the contract (:func:`validate_llava`'s rules: no ``conversations``, an image
    record whose first human turn has no ``<image>``, ``<image>`` tokens that differ from its images, ...) or,
    with ``check_files``, when an image is missing or does not open, or a slide feature file's width differs
    from the first feature file's. Images resolve under ``image_folder`` (LLaVA's ``--image_folder``), else the
    file's own folder; good records keep their relative paths (the trainer resolves them the same way)."""
    path = Path(path)
    base = Path(image_folder) if image_folder is not None else path.parent
    where = f"under {base}"
    good: list[dict[str, Any]] = []
    bad: list[BadRecord] = []
    seen: dict[Any, int] = {}
    width: tuple[int, str] | None = None  # (feature width, the file that set it)
    for i, rec in iter_llava_file(path):
        rid = rec.get("id") if isinstance(rec, dict) else None
        problem = _record_problem(rec)
        if problem is None and rid in seen:
            problem = f"id: duplicate of record #{seen[rid]}"
        if problem is None and check_files:
            for p in image_paths(rec.get("image"), base):
                rel = p.relative_to(base) if p.is_relative_to(base) else p
                if not p.is_file():
                    problem = f"image '{rel}' not found {where}"
                elif is_feature_file(p):
                    try:
                        d = feature_width(p)
                    except PathkitError as err:
                        problem = f"image '{rel}' unreadable feature file ({str(err).split(': ', 1)[-1]})"
                    else:
                        if width is None:
                            width = (d, str(rel))
                        elif d != width[0]:
                            problem = f"image '{rel}' has {d} features per tile, '{width[1]}' has {width[0]}"
                else:
                    problem = _image_problem(p, rel)
                if problem:
                    break
        if problem is not None:
            field = problem.split(":", 1)[0].split(" ", 1)[0]
            bad.append(BadRecord(str(path), i, rid, field, problem))
            continue
        seen[rid] = i
        good.append(rec)
    return good, bad


def _image_problem(path: Path, rel: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types for a broken file: each means "does not open"
        return f"image '{rel}' unreadable ({type(err).__name__})"
    return None


def feature_width(path: str | Path) -> int:
    """Features per tile of a slide feature file (HDF5 read from its header; other formats read whole)."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                if "features" not in fh:
                    raise PathkitError(f"{path}: no 'features' dataset (a coords-only file)")
                shape = fh["features"].shape
        except OSError as err:
            raise PathkitError(f"{path}: not an HDF5 file ({err})") from err
        return int(shape[-1])

    _, feats, _ = read_features(path)
    if feats is None:
        raise PathkitError(f"{path}: no features")
    return int(feats.shape[-1])


def bad_records_line(path: str | Path, bad: list[BadRecord]) -> str:
    """The one-line summary: ``train.json: 3 bad records (first: #17 id=abc: image 'x.png' not found ...)``."""
    first = bad[0]
    return (f"{Path(path).name}: {len(bad)} bad record{'s' if len(bad) != 1 else ''} "
            f"(first: #{first.index} id={first.id}: {first.problem})")


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
