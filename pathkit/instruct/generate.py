"""The generation pipeline: input rows -> prompt -> model reply parsed into the declared shape -> LLaVA JSON.

``generate_file(IN.jsonl, OUT.json, kind, ...)`` reads rows that carry an ``id``, an ``image`` (a path or a
list) and text (``caption``, ``context`` or ``report``; rows of the localized-narratives JSONL and of the
synthetic tile ``metadata.jsonl`` are accepted as they are), optionally ``facts`` (``diagnosis``, ``clues``).
Each row is rendered with the prompt kind's template, sent to the model, and the reply is parsed into the
template's declared JSON shape. A malformed reply is re-asked once with the parse error; a second malformed
reply makes the item a failure (in ``OUT.failures.jsonl``), never data.

Nothing is lost and nothing is done twice: every finished item is appended to ``OUT.journal.jsonl`` (flushed
and fsynced) before the next one is recorded, a restart skips finished ids, and ``OUT.json`` is written
atomically at the end with exactly one record per successful input row, in input order, each with the row's
``id`` and a ``kind`` key. ``OUT.summary.json`` has counts, throughput, token usage and estimated cost.

The model ``rule-based`` (:mod:`pathkit.instruct.rule_based`) runs everything offline for the tiny preset.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pathkit.instruct.client import ChatClient, ChatResult, UsageMeter, run_journaled, with_images
from pathkit.instruct.prompts import PromptTemplate, ReplyParseError, get_prompt, load_prompts
from pathkit.instruct.rule_based import MODEL_NAME as RULE_BASED
from pathkit.instruct.rule_based import REASK_PREFIX, RuleBasedChat
from pathkit.io import FailureLog, PathkitError, iter_jsonl, read_json, write_json

__all__ = ["InputItem", "RuleBasedGenerator", "generate_file", "generate_records", "generation_settings", "make_chat",
           "read_items"]

IMAGE_TOKEN = "<image>"


class Chat(Protocol):
    model: str
    usage: UsageMeter

    def chat(self, messages: list[dict[str, Any]], use_cache: bool = True, **params: Any) -> ChatResult: ...


class MalformedReply(PathkitError):
    """The model's reply did not parse into the declared shape, even after one re-ask."""


# ------------------------------------------------------------------------------------------ input rows
@dataclass
class InputItem:
    """One input row, normalised: id, images (as written in the row and resolved), the prompt's input JSON."""

    id: str
    images: list[str]
    image_paths: list[Path]
    values: dict[str, Any]
    lineno: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # kept on the output record (e.g. boxes)


def _norm_box(box: list[float], width: float | None, height: float | None) -> list[float]:
    if width and height and max(box) > 1.0:
        box = [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
    return [round(min(1.0, max(0.0, float(v))), 2) for v in box]


def row_to_item(row: dict[str, Any], lineno: int, base_dir: Path, where: str) -> InputItem:
    """Normalise one row (generic, narratives or synthetic tile metadata); bad rows raise a one-line error."""
    if row.get("id") not in (None, ""):
        item_id = str(row["id"])
    elif "video" in row and "chunk" in row:  # a localized-narratives row
        item_id = f"{Path(str(row['video'])).stem}-{row['chunk']}"
    else:
        raise PathkitError(f"{where}:{lineno}: missing field 'id'")
    image = row.get("image", row.get("images", row.get("frame")))
    images = [] if image in (None, "") else ([image] if isinstance(image, str) else list(image))
    if not all(isinstance(p, str) for p in images):
        raise PathkitError(f"{where}:{lineno}: field 'image' must be a path or a list of paths")
    paths = [Path(p) if Path(p).is_absolute() else base_dir / p for p in images]
    values: dict[str, Any] = {}
    for key in ("caption", "context", "report", "label"):
        if isinstance(row.get(key), str) and row[key].strip():
            values[key] = row[key].strip()
    if not values:
        raise PathkitError(f"{where}:{lineno}: no text: expected field 'caption', 'context', 'report' or 'label'")
    width, height = row.get("width"), row.get("height")
    boxes = []
    for j, g in enumerate(row.get("groundings") or row.get("boxes") or []):
        box = g.get("box") if isinstance(g, dict) else None
        if not (isinstance(box, (list, tuple)) and len(box) == 4):
            raise PathkitError(f"{where}:{lineno}: field 'groundings[{j}].box' must be [x1, y1, x2, y2]")
        boxes.append({"text": str(g.get("text", "")).strip(), "box": _norm_box(list(box), width, height)})
    if boxes:
        values["boxes"] = boxes
        # Quilt's grounded string: "<utterances> [x1, y1, x2, y2], <utterances> [...]" (0-1, 2 decimals)
        values["grounded_caption"] = ", ".join(
            f"{b['text']} [{', '.join(f'{v:.2f}' for v in b['box'])}]" for b in boxes)
    if isinstance(row.get("attributes"), dict) and row["attributes"]:
        values["attributes"] = row["attributes"]
    facts = row.get("facts")
    facts = {"clues": facts} if isinstance(facts, (list, str)) else dict(facts or {})
    if row.get("diagnosis") and "diagnosis" not in facts:
        facts["diagnosis"] = row["diagnosis"]
    if facts:
        values["facts"] = facts
    extra = {"boxes": boxes} if boxes else {}
    return InputItem(id=item_id, images=images, image_paths=paths, values=values, lineno=lineno, extra=extra)


def read_items(path: str | Path, failures: FailureLog | None = None) -> list[InputItem]:
    """Input rows of a JSONL (or a JSON list) as items; bad rows go to ``failures`` (or raise without one)."""
    path = Path(path)
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise PathkitError(f"{path}: expected a JSON list of rows")
        rows = list(enumerate(data, start=1))
    else:
        parse_errors: list[str] = []
        rows = list(iter_jsonl(path, strict=failures is None, errors=parse_errors))
        for msg in parse_errors:  # "file:line:column: invalid JSON (...)"
            failures.add(msg.split(": ", 1)[0], msg.split(": ", 1)[1])
    items, seen = [], {}
    for lineno, row in rows:
        try:
            if not isinstance(row, dict):
                raise PathkitError(f"{path}:{lineno}: expected a JSON object")
            item = row_to_item(row, lineno, path.parent, str(path))
            if item.id in seen:
                raise PathkitError(f"{path}:{lineno}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        except PathkitError as err:
            if failures is None:
                raise
            failures.add(f"{path}:{lineno}", err)
            continue
        seen[item.id] = lineno
        items.append(item)
    return items


# ------------------------------------------------------------------------------------------ one item
def _ask(chat: Chat, messages: list[dict[str, Any]], template: PromptTemplate, stage: str,
         params: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send, parse; on a parse error re-ask once with the error. Returns (parsed, messages + reply)."""
    result = chat.chat(messages, **params)
    try:
        return template.parse(result.text, stage), messages + [{"role": "assistant", "content": result.text}]
    except ReplyParseError as err:
        example = template.stage(stage).reply_example.strip()
        reask = messages + [{"role": "assistant", "content": result.text},
                            {"role": "user", "content": f"{REASK_PREFIX}: {err}. Reply again with JSON only, "
                                                        f"in exactly this shape:\n{example}"}]
    result = chat.chat(reask, **params)
    try:
        return template.parse(result.text, stage), reask + [{"role": "assistant", "content": result.text}]
    except ReplyParseError as err:
        raise MalformedReply(f"malformed reply after one re-ask ({template.kind}.{stage}): {err}") from err


def _fix_image_tokens(turns: list[dict[str, Any]], n_images: int) -> list[dict[str, Any]]:
    """Exactly ``n_images`` ``<image>`` tokens, at the start of the first human turn (what LLaVA expects)."""
    out = []
    for i, turn in enumerate(turns):
        turn = dict(turn)
        if turn["from"] == "human":
            value = re.sub(r"\s*<image>\s*", " ", turn["value"]).strip() if IMAGE_TOKEN in turn["value"] \
                else turn["value"]
            if i == 0 and n_images:
                value = (IMAGE_TOKEN + "\n") * n_images + value
            turn["value"] = value
        out.append(turn)
    return out


def _abduction(item: InputItem, template: PromptTemplate, chat: Chat, params: dict[str, Any]
               ) -> list[dict[str, str]]:
    """Generator proposes, critic checks against diagnosis and facts, generator revises (2 or 3 rounds)."""
    seed = int(hashlib.sha256(item.id.encode()).hexdigest()[:8], 16)
    rounds = 2 if random.Random(seed).random() < 0.85 else 3  # Quilt: 4 turns w.p. 0.85, 6 w.p. 0.15
    student = {k: v for k, v in item.values.items() if k not in ("facts", "label", "report")}
    history = template.render({"input": student}, "main")
    turns: list[dict[str, str]] = []
    for _ in range(rounds):
        hypothesis, history = _ask(chat, history, template, "main", params)
        critic = template.render({"input": item.values, "hypothesis": hypothesis}, "critic")
        verdict, _ = _ask(chat, critic, template, "critic", params)
        human = f"I think this is {hypothesis['hypothesis']}." + (
            f" {hypothesis['reasoning']}" if hypothesis["reasoning"] else "")
        turns += [{"from": "human", "value": human}, {"from": "gpt", "value": verdict["guidance"] or "Correct."}]
        if verdict["verdict"] == "correct":
            break
        history = history + template.render({"guidance": verdict["guidance"]}, "revise")
    return turns


def generate_record(item: InputItem, template: PromptTemplate, chat: Chat, params: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """One output record for one item (raises on a failed request or a malformed reply)."""
    params = params or {}
    record: dict[str, Any] = {"id": item.id}
    if item.images:
        record["image"] = item.images[0] if len(item.images) == 1 else item.images
    if template.reply_shape == "hypothesis":
        turns = _abduction(item, template, chat, params)
    else:
        messages = template.render({"input": item.values}, "main")
        if template.images and item.image_paths and getattr(chat, "accepts_images", True):
            messages = with_images(messages, item.image_paths)
        parsed, _ = _ask(chat, messages, template, "main", params)
        if template.produces != "conversations":  # a label (cleaning), not training data
            return {**record, "kind": template.kind, "model": chat.model, **parsed}
        turns = parsed["conversations"]
    record["conversations"] = _fix_image_tokens(turns, len(item.images))
    return {**record, "kind": template.kind, "model": chat.model, **item.extra}


# ------------------------------------------------------------------------------------------ a whole file
def make_chat(model: str = RULE_BASED, base_url: str | None = None, concurrency: int = 8, max_attempts: int = 5,
              timeout: float = 60.0, cache_dir: str | Path | None = None,
              templates: dict[str, PromptTemplate] | None = None, **kwargs: Any) -> Chat:
    """``rule-based`` -> :class:`RuleBasedChat` (offline); anything else -> :class:`ChatClient`."""
    if model == RULE_BASED:
        return RuleBasedChat(templates)
    # base_url None: the openai client's default ($OPENAI_BASE_URL, else https://api.openai.com/v1)
    return ChatClient(base_url, model, concurrency=concurrency, max_attempts=max_attempts, timeout=timeout,
                      cache_dir=cache_dir, **kwargs)


def generation_settings(instruct_cfg: Any) -> dict[str, Any]:
    """Keyword arguments for :func:`generate_file` from a :class:`pathkit.config.InstructConfig`."""
    c = instruct_cfg
    params = {} if c.model == RULE_BASED else {"temperature": c.temperature, "max_tokens": c.max_tokens}
    return {"model": c.model, "base_url": c.base_url, "concurrency": c.concurrency, "max_attempts": c.max_attempts,
            "timeout": c.timeout, "params": params}


class RuleBasedGenerator:
    """Offline instruction data from structured ground truth (captions, labels, attributes, boxes, facts).

    ``RuleBasedGenerator().generate(item_or_row, kind)`` returns the same record the pipeline writes with
    ``--model rule-based``; :func:`generate_file` uses it through :class:`RuleBasedChat`.
    """

    model = RULE_BASED

    def __init__(self, overrides: str | Path | None = None):
        self.templates = load_prompts(overrides)
        self.chat = RuleBasedChat(self.templates)

    def generate(self, item: InputItem | dict[str, Any], kind: str, base_dir: str | Path = ".") -> dict[str, Any]:
        if isinstance(item, dict):
            item = row_to_item(item, 0, Path(base_dir), "<row>")
        if kind not in self.templates:
            raise PathkitError(f"unknown prompt kind {kind!r}; known: {', '.join(sorted(self.templates))}")
        return generate_record(item, self.templates[kind], self.chat)


def _template_sha(template: PromptTemplate) -> str:
    return hashlib.sha256(json.dumps(template.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def output_paths(out_path: str | Path) -> dict[str, Path]:
    """Files beside ``OUT.json``: the journal, the failures file and the summary."""
    out = Path(out_path)
    stem = out.with_suffix("")
    return {"out": out, "journal": Path(f"{stem}.journal.jsonl"), "failures": Path(f"{stem}.failures.jsonl"),
            "summary": Path(f"{stem}.summary.json")}


def generate_records(items: list[InputItem], template: PromptTemplate, chat: Chat, journal_path: str | Path,
                     concurrency: int = 8, params: dict[str, Any] | None = None, retry_failed: bool = True,
                     progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run every item through :func:`generate_record` with a resumable journal; the last row per id."""
    header = {"prompt": template.kind, "model": chat.model, "template_sha": _template_sha(template),
              "params": params or {}}
    by_id = {it.id: it for it in items}
    return run_journaled(((it.id, it.id) for it in items),
                         lambda item_id: {"record": generate_record(by_id[item_id], template, chat, params)},
                         journal_path, concurrency=concurrency, header=header, retry_failed=retry_failed,
                         progress=progress, desc=template.kind)


def generate_file(in_path: str | Path, out_path: str | Path, kind: str, model: str = RULE_BASED,
                  base_url: str | None = None, concurrency: int = 8, max_attempts: int = 5, timeout: float = 60.0,
                  cache_dir: str | Path | None = None, overrides: str | Path | None = None,
                  params: dict[str, Any] | None = None, retry_failed: bool = True, progress: bool = True,
                  chat: Chat | None = None) -> dict[str, Any]:
    """Generate ``OUT.json`` (LLaVA JSON, one record per successful input row) from ``IN.jsonl``.

    Returns the summary (also written to ``OUT.summary.json``): items, written, failed, seconds, items/s,
    usage and estimated cost. Failures (bad rows, failed requests, malformed replies) are in
    ``OUT.failures.jsonl``; the caller decides the exit status from ``summary["failed"]``.
    """
    t0 = time.perf_counter()
    paths = output_paths(out_path)
    templates = load_prompts(overrides)
    template = templates.get(kind) or get_prompt(kind, overrides)
    failures = FailureLog(paths["failures"])
    items = read_items(in_path, failures)
    bad_rows = len(failures)
    if chat is None:
        chat = make_chat(model, base_url, concurrency=concurrency, max_attempts=max_attempts, timeout=timeout,
                         cache_dir=cache_dir, templates=templates)
    rows = generate_records(items, template, chat, paths["journal"], concurrency=concurrency, params=params,
                            retry_failed=retry_failed, progress=progress)
    records = []
    for item in items:
        row = rows.get(item.id)
        if row is not None and row.get("status") == "ok":
            records.append(row["record"])
        else:
            failures.add(item.id, (row or {}).get("reason", "not processed"), line=item.lineno)
    write_json(paths["out"], records)
    failures.write()
    seconds = time.perf_counter() - t0
    summary = {"prompt": kind, "model": chat.model, "input": str(in_path), "output": str(paths["out"]),
               "items": len(items) + bad_rows,
               "written": len(records), "failed": len(failures), "seconds": round(seconds, 3),
               "items_per_s": round(len(items) / seconds, 2) if seconds > 0 else None,
               "usage": chat.usage.summary(), "failures": str(paths["failures"]) if failures else None}
    write_json(paths["summary"], summary)
    return summary
