"""Benchmark loaders: the files users download -> pathkit's evaluation questions.

Every loader returns rows ``{"question_id", "image", "text", "answer", "answer_type", "category", "source"}``
(evaluation contract; ``answer_type`` CLOSED or OPEN) plus ``choices`` for lettered questions. Closed yes/no
questions get Quilt's suffix (" Please choose from the following two options: [yes, no]"); lettered questions
list their options as ``A) ...`` lines and end with LLaVA-1.5's "Answer with the option's letter ..." line.

Formats read (JSON list or id-keyed dict, JSONL, CSV, parquet; images as paths or parquet ``{bytes, path}``):

- PathVQA: HF parquet (``image``, ``question``, ``answer``), PA-LLaVA's id-keyed JSON (``question``, ``image``,
  ``answer``, ``answer_type`` yes/no|other|number), or Quilt's ``pvqa_test_w_ans.json`` (LLaVA conversations +
  ``answer_type``). Closed = the answer is yes or no (Quilt's rule).
- Quilt-VQA / Quilt-VQA-RED: HF (``image``, ``question``, ``answer``, ``answer_type``, ``context``) or the eval
  JSON (``yes_no_answer`` for closed questions). A closed answer that is a sentence is reduced to its yes/no.
- PMC-VQA: CSV (``Figure_path``, ``Question``, ``Choice A``..``Choice D``, ``Answer``; rows with
  ``in_quilt == True`` dropped as Quilt does). Lettered choices.
- WSI-Bench: per-task LLaVA JSON (closed/open from the file name: ``*_choice`` lettered, ``*_TF_question``
  yes/no, others open) or the open-question JSONL (``question``, ``T-answer``, ``metadata``).
- SLAKE (``img_name``, ``question``, ``answer``, ``answer_type``, ``q_lang``: English only by default),
  VQA-RAD (``image_name``, ``question``, ``answer``, ``answer_type``; or HF parquet with closed = yes/no).
- MMMU Health & Medicine: parquet/JSON (``id``, ``question``, ``options``, ``answer``, ``image_1``..,
  ``question_type``); multiple-choice questions of the five Health & Medicine subjects.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pathkit.eval.metrics import CHOICE_SUFFIX, YES_NO_SUFFIX, normalize_text, read_yes_no
from pathkit.io import PathkitError, iter_jsonl, read_json, write_jsonl

# Lazy imports: pandas (pandas, ~0.6 s); pyarrow (pyarrow, for parquet only). They load inside the functions
# that need them, not when this module is imported.

LETTERS = "ABCDEFGH"
MMMU_MEDICAL_SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                         "Pharmacy", "Public_Health")


# ---------------------------------------------------------------------------------------------------------
# Reading files and building rows
# ---------------------------------------------------------------------------------------------------------


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` from a JSON list / id-keyed dict, JSONL, CSV or parquet file."""
    path = Path(path)
    if not path.exists():
        raise PathkitError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for lineno, row in iter_jsonl(path):
            yield f"{path}:{lineno}", row
    elif suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict):
            for key, row in data.items():
                if isinstance(row, dict):
                    yield f"{path}[{key!r}]", {"_key": key, **row}
        elif isinstance(data, list):
            for i, row in enumerate(data):
                if not isinstance(row, dict):
                    raise PathkitError(f"{path}[{i}]: expected an object, got {type(row).__name__}")
                yield f"{path}[{i}]", row
        else:
            raise PathkitError(f"{path}: expected a JSON list or object")
    elif suffix in (".csv", ".tsv"):
        import pandas as pd

        try:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
        except Exception as err:
            raise PathkitError(f"{path}: cannot read CSV ({err})") from err
        for i, row in enumerate(frame.to_dict("records")):
            yield f"{path}:{i + 2}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=256)  # a few images in memory at a time
        except Exception as err:
            raise PathkitError(f"{path}: cannot read parquet ({err})") from err
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{path}[row {i}]", row
                i += 1
    else:
        raise PathkitError(f"{path}: unsupported file type {suffix!r} (json, jsonl, csv, parquet)")


def _field(where: str, row: dict[str, Any], *names: str, required: bool = True) -> Any:
    for name in names:
        if name in row and row[name] is not None and row[name] != "":
            return row[name]
    if required:
        raise PathkitError(f"{where}: missing field '{names[0]}'")
    return None


def _image(where: str, value: Any, image_root: Path | None, image_dir: Path | None, stem: str) -> str | None:
    """An image path string: a path (joined to ``image_root``) or parquet bytes written to ``image_dir``."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            if image_dir is None:
                raise PathkitError(f"{where}: field 'image' holds bytes; give image_dir to write them")
            image_dir.mkdir(parents=True, exist_ok=True)
            ext = Path(value.get("path") or "x.png").suffix or ".png"
            out = image_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', stem)}{ext}"
            if not out.exists():
                out.write_bytes(data)
            return str(out)
        value = value.get("path")
        if not value:
            return None
    path = Path(str(value))
    if image_root is not None and not path.is_absolute():
        path = Path(image_root) / path
    if not path.suffix and not path.exists():  # PathVQA's pickle (and Quilt's JSON from it) names images bare
        path = next((path.with_name(path.name + s) for s in (".jpg", ".jpeg", ".png")
                     if path.with_name(path.name + s).is_file()), path)
    return str(path)


def yes_no_text(question: str, suffix: bool = True) -> str:
    return question.strip() + (YES_NO_SUFFIX if suffix else "")


def choice_text(question: str, choices: list[str], suffix: bool = True) -> str:
    """Question + ``A) option`` lines (+ LLaVA-1.5's letter instruction)."""
    lines = [question.strip()] + [f"{LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + (CHOICE_SUFFIX if suffix else "")


def make_row(question_id: Any, image: str | None, text: str, answer: str, answer_type: str, source: str,
             category: str | None = None, **extra: Any) -> dict[str, Any]:
    row = {"question_id": str(question_id), "image": image, "text": text, "answer": answer,
           "answer_type": answer_type, "category": category or answer_type.lower(), "source": source}
    row.update({k: v for k, v in extra.items() if v is not None})
    return row


def _yes_no_row(qid, image, question, answer, source, category=None, suffix=True, **extra):
    """A yes/no question is CLOSED (with the suffix); anything else OPEN."""
    norm = normalize_text(answer)
    if norm in ("yes", "no"):
        return make_row(qid, image, yes_no_text(question, suffix), norm, "CLOSED", source, category, **extra)
    return make_row(qid, image, question.strip(), str(answer), "OPEN", source, category, **extra)


def _gpt_turn(where: str, row: dict[str, Any]) -> tuple[str, str]:
    """(human question without ``<image>``, gpt answer) from LLaVA conversations (``conversatons`` too)."""
    conv = row.get("conversations") or row.get("conversatons")
    if not isinstance(conv, list) or len(conv) < 2:
        raise PathkitError(f"{where}: missing field 'conversations'")
    human = next((t.get("value", "") for t in conv if t.get("from") == "human"), None)
    gpt = next((t.get("value", "") for t in conv if t.get("from") == "gpt"), None)
    if human is None or gpt is None:
        raise PathkitError(f"{where}: field 'conversations' needs a human and a gpt turn")
    return human.replace("<image>", "").strip(), str(gpt)


# ---------------------------------------------------------------------------------------------------------
# One loader per benchmark
# ---------------------------------------------------------------------------------------------------------


def load_pathvqa(path, image_root=None, image_dir=None, suffix=True) -> list[dict[str, Any]]:
    """PathVQA test set (HF parquet, PA-LLaVA JSON or Quilt's converted JSON); closed = yes/no answers."""
    rows = []
    for i, (where, rec) in enumerate(read_records(path)):
        if "conversations" in rec or "conversatons" in rec:
            question, answer = _gpt_turn(where, rec)
            question = question.replace(YES_NO_SUFFIX.strip(), "").strip()
        else:
            question = str(_field(where, rec, "question", "Question", "text"))
            answer = str(_field(where, rec, "answer", "Answer"))
        qid = rec.get("question_id", rec.get("id", rec.get("_key", i)))
        image = _image(where, _field(where, rec, "image", "image_name", "img", required=False), image_root,
                       image_dir, f"pathvqa_{qid}")
        rows.append(_yes_no_row(qid, image, question, answer, "pathvqa", suffix=suffix))
    return rows


def _quilt(path, image_root, image_dir, suffix, source) -> list[dict[str, Any]]:
    rows = []
    for i, (where, rec) in enumerate(read_records(path)):
        if "conversations" in rec:
            question, answer = _gpt_turn(where, rec)
        else:
            question = str(_field(where, rec, "question", "text"))
            answer = str(_field(where, rec, "answer"))
        kind = str(rec.get("answer_type", "")).strip().lower()
        qid = rec.get("question_id", rec.get("id", i))
        image = _image(where, _field(where, rec, "image", required=False), image_root, image_dir,
                       f"{source}_{qid}")
        context = rec.get("context")
        if kind == "closed":
            yes_no = rec.get("yes_no_answer") or read_yes_no(answer)
            if yes_no is None or normalize_text(yes_no) not in ("yes", "no"):
                raise PathkitError(f"{where}: closed question without a yes/no answer (field 'yes_no_answer')")
            rows.append(make_row(qid, image, yes_no_text(question, suffix), normalize_text(yes_no), "CLOSED",
                                 source, full_answer=answer, context=context))
        else:
            rows.append(make_row(qid, image, question.strip(), answer, "OPEN", source, context=context))
    return rows


def load_quilt_vqa(path, image_root=None, image_dir=None, suffix=True) -> list[dict[str, Any]]:
    """Quilt-VQA (HF ``wisdomik/Quilt_VQA`` files or the eval JSON with ``yes_no_answer``)."""
    return _quilt(path, image_root, image_dir, suffix, "quilt_vqa")


def load_quilt_vqa_red(path, image_root=None, image_dir=None, suffix=True) -> list[dict[str, Any]]:
    """Quilt-VQA-RED: the same questions on images with the narrator's region circled in red."""
    return _quilt(path, image_root, image_dir, suffix, "quilt_vqa_red")


def _letter_answer(where: str, answer: Any, choices: list[str]) -> str:
    """The option letter of an answer given as ``"B"``, ``"B:..."``, ``"B) ..."`` or the option's text."""
    text = str(answer).strip()
    m = re.match(r"^\(?([A-Ha-h])(?:[\):.\s]|$)", text)
    if m and m.group(1).upper() in LETTERS[: len(choices)]:
        return m.group(1).upper()
    for i, c in enumerate(choices):
        if normalize_text(c) == normalize_text(text):
            return LETTERS[i]
    raise PathkitError(f"{where}: field 'answer' {text!r} is not one of the option letters")


def _strip_letter(choice: str) -> str:
    """``"A:text"``/``" A. text"`` -> ``"text"`` (PMC-VQA stores its choices with the letter inside)."""
    return re.sub(r"^\s*[A-Ha-h]\s*[:.)]\s*", "", str(choice)).strip()


def load_pmc_vqa(path, image_root=None, image_dir=None, suffix=True, drop_in_quilt=True
                 ) -> list[dict[str, Any]]:
    """PMC-VQA (CSV with ``Choice A``..``Choice D``): lettered multiple choice."""
    rows = []
    for i, (where, rec) in enumerate(read_records(path)):
        if drop_in_quilt and str(rec.get("in_quilt", "")).strip().lower() in ("true", "1"):
            continue
        question = str(_field(where, rec, "Question", "question"))
        choices = [_strip_letter(rec[f"Choice {L}"]) for L in "ABCD" if str(rec.get(f"Choice {L}", "")).strip()]
        if len(choices) < 2:
            raise PathkitError(f"{where}: missing field 'Choice A'..'Choice D'")
        answer = _letter_answer(where, _field(where, rec, "Answer", "Answer_label", "answer"), choices)
        qid = rec.get("index", rec.get("id", i))
        image = _image(where, _field(where, rec, "Figure_path", "image", required=False), image_root, image_dir,
                       f"pmc_{qid}")
        rows.append(make_row(qid, image, choice_text(question, choices, suffix), answer, "CLOSED", "pmc_vqa",
                             "choice", choices=choices))
    return rows


def _split_inline_choices(question: str) -> tuple[str, list[str]]:
    """WSI-Bench choice questions carry options inline as ``A) ... B) ...``."""
    parts = re.split(r"\s*\b([A-H])\)\s*", question)
    if len(parts) < 5:
        return question, []
    stem, choices = parts[0].strip(), [parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)]
    return stem, choices


def load_wsi_bench(path, image_root=None, image_dir=None, suffix=True) -> list[dict[str, Any]]:
    """WSI-Bench: a per-task LLaVA JSON (kind from the file name) or the open-question JSONL."""
    path = Path(path)
    name = path.stem
    task = re.sub(r"(_test|_train)$", "", name)
    rows = []
    for i, (where, rec) in enumerate(read_records(path)):
        if "conversations" in rec:
            question, answer = _gpt_turn(where, rec)
            category = task
        else:
            question = str(_field(where, rec, "question", "text"))
            answer = str(_field(where, rec, "T-answer", "answer"))
            category = str(rec.get("metadata") or task)
        qid = rec.get("question_id", rec.get("id", i))
        image = _image(where, _field(where, rec, "image", required=False), image_root, image_dir, f"wsi_{qid}")
        if name.lower().find("_choice") >= 0:
            stem, choices = _split_inline_choices(question)
            letter = _letter_answer(where, answer, choices or list(LETTERS[:4]))
            text = question.strip() + (CHOICE_SUFFIX if suffix else "")
            rows.append(make_row(qid, image, text, letter, "CLOSED", "wsi_bench", category,
                                 choices=choices or None))
        elif "_tf_question" in name.lower():
            rows.append(_yes_no_row(qid, image, question, answer, "wsi_bench", category, suffix))
            if rows[-1]["answer_type"] != "CLOSED":
                raise PathkitError(f"{where}: field 'answer' of a true/false question must be Yes or No")
        else:
            rows.append(make_row(qid, image, question.strip(), answer, "OPEN", "wsi_bench", category))
    return rows


def load_slake(path, image_root=None, image_dir=None, suffix=True, language="en") -> list[dict[str, Any]]:
    """SLAKE (``test.json``): English questions by default; CLOSED/OPEN from ``answer_type``."""
    rows = []
    for i, (where, rec) in enumerate(read_records(path)):
        if language and rec.get("q_lang", language) != language:
            continue
        question = str(_field(where, rec, "question"))
        answer = str(_field(where, rec, "answer"))
        kind = str(_field(where, rec, "answer_type")).upper()
        qid = rec.get("qid", i)
        image = _image(where, _field(where, rec, "img_name", "image", required=False), image_root, image_dir,
                       f"slake_{qid}")
        category = rec.get("content_type") or rec.get("modality")
        if kind == "CLOSED" and normalize_text(answer) in ("yes", "no"):
            rows.append(make_row(qid, image, yes_no_text(question, suffix), normalize_text(answer), "CLOSED",
                                 "slake", category))
        elif kind == "CLOSED":  # closed but not yes/no ("Left" / "Right"): scored by exact match
            rows.append(make_row(qid, image, question.strip(), answer, "CLOSED", "slake", category))
        else:
            rows.append(make_row(qid, image, question.strip(), answer, "OPEN", "slake", category))
    return rows


def load_vqa_rad(path, image_root=None, image_dir=None, suffix=True) -> list[dict[str, Any]]:
    """VQA-RAD (the public JSON with ``answer_type``, or HF parquet where closed = yes/no)."""
    rows = []
    for i, (where, rec) in enumerate(read_records(path)):
        question = str(_field(where, rec, "question"))
        answer = str(_field(where, rec, "answer"))
        qid = rec.get("qid", i)
        image = _image(where, _field(where, rec, "image_name", "image", required=False), image_root, image_dir,
                       f"vqarad_{qid}")
        kind = str(rec.get("answer_type", "")).upper()
        category = rec.get("question_type") or rec.get("image_organ")
        if normalize_text(answer) in ("yes", "no") and kind in ("", "CLOSED"):
            rows.append(make_row(qid, image, yes_no_text(question, suffix), normalize_text(answer), "CLOSED",
                                 "vqa_rad", category))
        else:
            rows.append(make_row(qid, image, question.strip(), answer, kind if kind in ("OPEN", "CLOSED")
                                 else "OPEN", "vqa_rad", category))
    return rows


def load_mmmu_med(path, image_root=None, image_dir=None, suffix=True,
                  subjects=MMMU_MEDICAL_SUBJECTS) -> list[dict[str, Any]]:
    """MMMU Health & Medicine multiple-choice questions (HuatuoGPT-Vision's headline benchmark)."""
    rows = []
    for where, rec in read_records(path):
        qid = str(_field(where, rec, "id"))
        if subjects and not any(s in qid for s in subjects) and rec.get("subject") not in subjects:
            continue
        if str(rec.get("question_type", "multiple-choice")) != "multiple-choice":
            continue
        options = rec.get("options")
        if isinstance(options, str):
            try:
                options = ast.literal_eval(options)
            except (ValueError, SyntaxError) as err:
                raise PathkitError(f"{where}: field 'options' is not a list ({err})") from err
        if not isinstance(options, list) or len(options) < 2:
            raise PathkitError(f"{where}: missing field 'options'")
        answer = _letter_answer(where, _field(where, rec, "answer"), [str(o) for o in options])
        question = re.sub(r"<image \d+>", "the image", str(_field(where, rec, "question"))).strip()
        image = _image(where, rec.get("image_1") or rec.get("image"), image_root, image_dir, f"mmmu_{qid}")
        rows.append(make_row(qid, image, choice_text(question, [str(o) for o in options], suffix), answer,
                             "CLOSED", "mmmu_med", rec.get("subfield") or "choice", choices=options))
    return rows


LOADERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "pathvqa": load_pathvqa,
    "quilt_vqa": load_quilt_vqa,
    "quilt_vqa_red": load_quilt_vqa_red,
    "pmc_vqa": load_pmc_vqa,
    "wsi_bench": load_wsi_bench,
    "slake": load_slake,
    "vqa_rad": load_vqa_rad,
    "mmmu_med": load_mmmu_med,
}


def load_benchmark(name: str, path: str | Path, image_root: str | Path | None = None,
                   image_dir: str | Path | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Load any benchmark by name (see :data:`LOADERS`)."""
    key = name.lower().replace("-", "_")
    if key not in LOADERS:
        raise PathkitError(f"unknown benchmark {name!r}; choose from {', '.join(LOADERS)}")
    return LOADERS[key](Path(path), image_root=Path(image_root) if image_root else None,
                        image_dir=Path(image_dir) if image_dir else None, **kwargs)


def write_questions(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write questions JSONL atomically, image paths made relative to the file's folder when possible."""
    path = Path(path)
    base = path.parent.resolve()
    out = []
    for row in rows:
        row = dict(row)
        if row.get("image"):
            img = Path(row["image"])
            if img.is_absolute() or img.exists():
                try:
                    row["image"] = os.path.relpath(img.resolve(), base)
                except ValueError:  # another drive (Windows)
                    row["image"] = str(img.resolve())
        out.append(json.loads(json.dumps(row, default=str)))
    return write_jsonl(path, out)
