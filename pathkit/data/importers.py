"""Public pathology VQA data, as published, -> pathkit's files: questions JSONL, images, a LLaVA train file.

``import_data(FORMAT, SRC, OUT)`` reads SRC (a file, or a folder of the format's files) and writes into OUT:

    questions.jsonl           the evaluation contract, one row per test question (``questions_<split>.jsonl`` for
                              a validation split): question_id, image, text, answer, answer_type CLOSED|OPEN
    train.json                LLaVA records, where the source has a training split
    images/                   every image (or slide feature file) the rows use; paths in both files are relative
                              to OUT, so ``--image-folder OUT`` (LLaVA) and the questions file's folder agree
    failures.jsonl            one line per bad row: ``{"item": "<file>:<row>", "reason": "...field..."}``
    summary.json              counts per split and output

Formats (layouts as their authors publish them):

    llava       LLaVA JSON (a list) or JSONL: validated record by record, images copied.
    pathvqa     Hugging Face parquet (``image`` {bytes, path}, ``question``, ``answer``; splits train /
                validation / test in the file names), or Quilt-LLaVA's ``pvqa_test_w_ans.json`` (the PathVQA pickle
                records: ``image`` named without its extension, resolved here). Closed = yes/no answers.
    pmc-vqa     CSV ``Figure_path, Question, Answer, Choice A..D, Answer_label`` (train.csv, test.csv,
                test_clean.csv); lettered choices stored as ``"A:text"``.
    quilt-vqa   Hugging Face Quilt_VQA / QuiltVQA_RED (``image``, ``question``, ``answer``, ``answer_type``,
                ``context``); an evaluation set whatever its split is called.
    wsi-bench   WSI-Bench JSONL (``question_id``, ``image``, ``question``, ``T-answer``, ``metadata``), the per-task
                LLaVA JSON files (``*_choice``, ``*_TF_question`` closed), and ``WSI-Bench-train.json`` (LLaVA) for
                training; images are ``.pt`` slide feature files.
    slidebench  SlideBench-VQA CSV (BCNB: ``ID, Slide, Task, Question, A, B, C, D, Answer``; TCGA adds ``Tumor``,
                ``Broad Category``, ``Narrow Category``); the image is the slide's feature CSV ``<Slide>.csv``
                (under ``--image-folder``, or ``<Tumor>/<Slide>.csv`` as SlideChat stores TCGA).

A bad row (missing field, unreadable or missing image) is one line in failures.jsonl naming the file, row and
field; the import goes on. It fails as a whole only when nothing could be imported. Every output is written
under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

# The benchmark loaders' row rules (closed = yes/no, lettered choices, suffixes) are shared, so importing a
# benchmark and evaluating on it read its rows the same way.
from pathkit.curate.llava_format import IMAGE_TOKEN, record_problem
from pathkit.eval.loaders import (
    _gpt_turn,
    _letter_answer,
    _split_inline_choices,
    _strip_letter,
    _yes_no_row,
    choice_text,
    make_row,
    read_records,
    yes_no_text,
)
from pathkit.eval.metrics import CHOICE_SUFFIX, normalize_text, read_yes_no
from pathkit.io import FailureLog, PathkitError, atomic_path, write_json, write_jsonl
from pathkit.wsi.features import FEATURE_SUFFIXES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "validation",
               "valid": "validation", "validation": "validation", "dev": "validation"}


@dataclass
class Row:
    """One source row turned into pathkit's shape: a question (contract row) or a LLaVA record."""

    split: str
    question: dict[str, Any] | None = None  # evaluation row; its "image" is still the source's reference
    record: dict[str, Any] | None = None  # LLaVA record (llava / WSI-Bench train files)


@dataclass
class ImportSummary:
    """What an import wrote: rows per output, images, failures."""

    out: Path
    counts: Counter = field(default_factory=Counter)  # output file name -> rows
    images: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        parts = ", ".join(f"{n} in {name}" for name, n in sorted(self.counts.items())) or "nothing"
        text = f"imported {parts}; {self.images} image file(s); {len(self.failed)} bad row(s)"
        if self.failed:
            text += f" (first: {self.failed[0]['reason']}; all in {self.out / 'failures.jsonl'})"
        return text


# --------------------------------------------------------------------------------------------- source files


def split_of(path: Path, default: str) -> str:
    """train / validation / test from the file's name or its folders (HF: ``data/test-00000-of-00001.parquet``)."""
    for part in [path.stem, *(p.name for p in path.parents)][:3]:  # HF: default/train/0000.parquet
        for word in re.split(r"[^a-z]+", part.lower()):
            if word in SPLIT_WORDS:
                return SPLIT_WORDS[word]
    return default


def source_files(src: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """SRC itself, or the format's files in the folder SRC (parquet anywhere below it, as HF lays them out)."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise PathkitError(f"{src}: no such file or folder")
    found = [p for p in src.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
    if ".parquet" in suffixes:
        found += [p for p in src.rglob("*.parquet") if p.parent != src]
    found = sorted(p for p in found if not p.name.startswith("."))
    if not found:
        raise PathkitError(f"{src}: no {'/'.join(s.lstrip('.') for s in suffixes)} files")
    return found


# ------------------------------------------------------------------------------------ one converter per format


def _qid(rec: dict[str, Any], *keys: str, fallback: str) -> str:
    for key in keys:
        if rec.get(key) not in (None, ""):
            return str(rec[key])
    return fallback


def _field(where: str, rec: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = rec.get(name)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    raise PathkitError(f"{where}: missing field {names[0]!r}")


def pathvqa_row(where: str, rec: dict[str, Any], i: int, split: str, path: Path) -> Row:
    if "conversations" in rec:
        question, answer = _gpt_turn(where, rec)
        question = question.split(" Please choose from")[0].strip()
    else:
        question, answer = str(_field(where, rec, "question")), str(_field(where, rec, "answer"))
    qid = _qid(rec, "question_id", "id", fallback=f"pathvqa-{split}-{i}")
    row = _yes_no_row(qid, rec.get("image"), question, answer, "pathvqa")
    return Row(split, question=row)


def quilt_vqa_row(where: str, rec: dict[str, Any], i: int, split: str, path: Path) -> Row:
    question, answer = str(_field(where, rec, "question")), str(_field(where, rec, "answer"))
    kind = str(_field(where, rec, "answer_type")).strip().lower()
    qid = _qid(rec, "question_id", "id", fallback=f"quilt_vqa-{i}")
    if kind == "closed":
        yes_no = rec.get("yes_no_answer") or read_yes_no(answer)
        if yes_no is None or normalize_text(yes_no) not in ("yes", "no"):
            raise PathkitError(f"{where}: field 'answer' of a closed question has no yes/no ({answer[:40]!r})")
        row = make_row(qid, rec.get("image"), yes_no_text(question), normalize_text(yes_no), "CLOSED",
                       "quilt_vqa", full_answer=answer, context=rec.get("context"))
    elif kind in ("open", "other"):
        row = make_row(qid, rec.get("image"), question.strip(), answer, "OPEN", "quilt_vqa",
                       context=rec.get("context"))
    else:
        raise PathkitError(f"{where}: field 'answer_type' is {kind!r}, not open or closed")
    return Row("test", question=row)  # Quilt-VQA is an evaluation set, whatever its HF split is named


def pmc_vqa_row(where: str, rec: dict[str, Any], i: int, split: str, path: Path) -> Row:
    question = str(_field(where, rec, "Question"))
    choices = [_strip_letter(rec[f"Choice {L}"]) for L in "ABCD" if str(rec.get(f"Choice {L}") or "").strip()]
    if len(choices) < 2:
        raise PathkitError(f"{where}: missing field 'Choice A'..'Choice D' (fewer than two choices)")
    answer = _letter_answer(where, _field(where, rec, "Answer_label", "Answer"), choices)
    qid = _qid(rec, "index", "id", fallback=f"pmc_vqa-{split}-{i}")
    row = make_row(qid, _field(where, rec, "Figure_path"), choice_text(question, choices), answer, "CLOSED",
                   "pmc_vqa", "choice", choices=choices, answer_text=choices[ord(answer) - ord("A")])
    return Row(split, question=row)


def wsi_bench_row(where: str, rec: dict[str, Any], i: int, split: str, path: Path) -> Row:
    name = path.stem.lower()
    if "conversations" in rec and split == "train":
        return Row("train", record=rec)  # WSI-Bench-train.json and the per-task *_train.json files
    if "conversations" in rec:
        question, answer = _gpt_turn(where, rec)
        category = re.sub(r"(_test|_train)$", "", path.stem)
    else:
        question, answer = str(_field(where, rec, "question")), str(_field(where, rec, "T-answer", "answer"))
        category = str(rec.get("metadata") or path.stem)
    qid = _qid(rec, "question_id", "id", fallback=f"wsi_bench-{i}")
    image = _field(where, rec, "image")
    if "_choice" in name:
        _, choices = _split_inline_choices(question)
        letter = _letter_answer(where, answer, choices or ["A", "B", "C", "D"])
        row = make_row(qid, image, question.strip() + CHOICE_SUFFIX, letter, "CLOSED", "wsi_bench", category,
                       choices=choices or None)
    elif "_tf_question" in name:
        row = _yes_no_row(qid, image, question, answer, "wsi_bench", category)
        if row["answer_type"] != "CLOSED":
            raise PathkitError(f"{where}: field 'answer' of a true/false question must be Yes or No")
    else:
        row = make_row(qid, image, question.strip(), answer, "OPEN", "wsi_bench", category)
    return Row("test", question=row)


def slidebench_row(where: str, rec: dict[str, Any], i: int, split: str, path: Path) -> Row:
    slide = str(_field(where, rec, "Slide")).strip()
    question = str(_field(where, rec, "Question"))
    choices = [str(rec[L]).strip() for L in "ABCD" if str(rec.get(L) or "").strip()]
    if len(choices) < 2:
        raise PathkitError(f"{where}: missing field 'A'..'D' (fewer than two options)")
    answer = _letter_answer(where, _field(where, rec, "Answer"), choices)
    image = f"{rec['Tumor']}/{slide}.csv" if str(rec.get("Tumor") or "").strip() else f"{slide}.csv"
    category = rec.get("Task") or rec.get("Narrow Category") or rec.get("Broad Category")
    qid = _qid(rec, "ID", fallback=f"slidebench-{i}")
    row = make_row(qid, image, choice_text(question, choices), answer, "CLOSED", "slidebench", category,
                   choices=choices, slide=slide, broad_category=rec.get("Broad Category"))
    return Row("test", question=row)


def llava_row(where: str, rec: dict[str, Any], i: int, split: str, path: Path) -> Row:
    problem = record_problem(rec)
    if problem is not None:
        raise PathkitError(f"{where} (id={rec.get('id')!r}): {problem}")
    return Row(split, record=rec)


@dataclass(frozen=True)
class Format:
    convert: Callable[[str, dict[str, Any], int, str, Path], Row]
    suffixes: tuple[str, ...]
    default_split: str


FORMATS: dict[str, Format] = {
    "llava": Format(llava_row, (".json", ".jsonl"), "train"),
    "pathvqa": Format(pathvqa_row, (".parquet", ".json", ".jsonl"), "test"),
    "pmc-vqa": Format(pmc_vqa_row, (".csv",), "test"),
    "quilt-vqa": Format(quilt_vqa_row, (".parquet", ".json", ".jsonl"), "test"),
    "wsi-bench": Format(wsi_bench_row, (".jsonl", ".json"), "test"),
    "slidebench": Format(slidebench_row, (".csv",), "test"),
}


# ---------------------------------------------------------------------------------------------------- images


class ImageStore:
    """Copies (or hard-links) each image once into ``OUT/images`` and returns its path relative to OUT."""

    def __init__(self, out: Path):
        self.dir = out / "images"
        self.written: dict[str, str] = {}  # name under images/ -> source key
        self.by_source: dict[str, str] = {}  # source path or bytes hash -> "images/<name>"

    def add(self, where: str, ref: Any, fallback_name: str, roots: list[Path]) -> str:
        if isinstance(ref, dict):  # HF Image feature: {"bytes": ..., "path": ...}
            if ref.get("bytes"):
                return self._add_bytes(where, bytes(ref["bytes"]), ref.get("path"), fallback_name)
            ref = ref.get("path")
        if not isinstance(ref, str) or not ref.strip():
            raise PathkitError(f"{where}: missing field 'image'")
        return self._add_file(where, self.resolve(where, ref, roots), ref)

    @staticmethod
    def resolve(where: str, ref: str, roots: list[Path]) -> Path:
        """The source file of ``ref``; a name without an extension (PathVQA's pickle) gets the one on disk."""
        rel = Path(ref)
        if not rel.is_absolute() and ".." in rel.parts:
            raise PathkitError(f"{where}: field 'image' {ref!r} leaves the image folder")
        candidates = [rel] if rel.is_absolute() else [root / rel for root in roots]
        for path in candidates:
            if path.is_file():
                return path
            if not path.suffix or path.suffix.lower() not in IMAGE_SUFFIXES + FEATURE_SUFFIXES:
                for suffix in IMAGE_SUFFIXES + FEATURE_SUFFIXES:
                    if path.with_name(path.name + suffix).is_file():
                        return path.with_name(path.name + suffix)
        raise PathkitError(f"{where}: field 'image' {ref!r} not found under {', '.join(map(str, roots))} (give --image-folder)")

    def _add_file(self, where: str, src: Path, ref: str) -> str:
        key = str(src.resolve())
        if key in self.by_source:
            return self.by_source[key]
        if src.suffix.lower() not in FEATURE_SUFFIXES:
            _check_image(where, src.read_bytes())
        rel_ref = Path(ref)
        name = (rel_ref.name if rel_ref.is_absolute() else rel_ref.as_posix())
        if not Path(name).suffix:
            name += src.suffix
        name = self._unique(name, key)
        dest = self.dir / name
        with atomic_path(dest) as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)  # same file system: no second copy of a large feature file
            except OSError:
                shutil.copyfile(src, tmp)
        self.by_source[key] = f"images/{name}"
        return self.by_source[key]

    def _add_bytes(self, where: str, data: bytes, path: str | None, fallback_name: str) -> str:
        digest = hashlib.sha1(data).hexdigest()
        if digest in self.by_source:
            return self.by_source[digest]
        fmt = _check_image(where, data)
        ext = Path(path).suffix if path and Path(path).suffix else "." + {"JPEG": "jpg"}.get(fmt, fmt.lower())
        base = Path(path).name if path else f"{fallback_name}{ext}"
        if not Path(base).suffix:
            base += ext
        name = self._unique(re.sub(r"[^A-Za-z0-9_.-]", "_", base), digest)
        with atomic_path(self.dir / name) as tmp:
            tmp.write_bytes(data)
        self.by_source[digest] = f"images/{name}"
        return self.by_source[digest]

    def _unique(self, name: str, key: str) -> str:
        """``name``, or ``stem-2.ext``... when another source already took it."""
        stem, suffix = os.path.splitext(name)
        candidate, n = name, 1
        while self.written.get(candidate, key) != key:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        self.written[candidate] = key
        return candidate

    @property
    def count(self) -> int:
        return len(self.written)


def _check_image(where: str, data: bytes) -> str:
    """The image's format (JPEG, PNG, ...); an unreadable image is a bad row."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
            return im.format or "PNG"
    except UnidentifiedImageError as err:
        raise PathkitError(f"{where}: field 'image' is not a readable image (no image format PIL knows)") from err
    except (OSError, SyntaxError) as err:  # truncated or corrupt data of a known format
        raise PathkitError(f"{where}: field 'image' is not a readable image ({err})") from err


# ---------------------------------------------------------------------------------------------------- import


def _rows(fmt: Format, files: list[Path], split: str | None, failures: FailureLog
          ) -> Iterator[tuple[str, int, Path, Row]]:
    for path in files:
        file_split = split or split_of(path, fmt.default_split)
        try:
            records = read_records(path)
            for i, (where, rec) in enumerate(records):
                try:
                    yield where, i, path, fmt.convert(where, rec, i, file_split, path)
                except (PathkitError, ValueError, TypeError, KeyError) as err:  # one bad row, not the batch
                    failures.add(where, err)
        except PathkitError as err:  # the whole file is unreadable: one line, then the next file
            failures.add(str(path), err)


def import_data(fmt_name: str, src: str | Path, out: str | Path, image_folder: str | Path | None = None,
                split: str | None = None) -> ImportSummary:
    """Import SRC in format ``fmt_name`` into OUT (see the module docstring); returns what was written."""
    key = fmt_name.lower().replace("_", "-")
    if key not in FORMATS:
        raise PathkitError(f"unknown format {fmt_name!r}; choose from {', '.join(FORMATS)}")
    fmt = FORMATS[key]
    src, out = Path(src), Path(out)
    files = source_files(src, fmt.suffixes)
    out.mkdir(parents=True, exist_ok=True)
    failures = FailureLog(out / "failures.jsonl")
    questions: dict[str, list[dict[str, Any]]] = {}
    train: list[dict[str, Any]] = []
    seen_ids: dict[tuple[str, str], str] = {}
    store = ImageStore(out)
    for where, i, path, row in _rows(fmt, files, split, failures):
        base = path.parent
        roots = [Path(image_folder)] if image_folder else [base, base / "images", base / "images" / row.split]
        try:
            if row.record is not None:
                train.append(_import_record(where, row.record, store, roots, seen_ids, f"{key}-{i}"))
            else:
                q = dict(row.question)
                _claim_id(seen_ids, ("r" if row.split == "train" else "q", q["question_id"]), where)
                if q.get("image") not in (None, ""):
                    q["image"] = store.add(where, q["image"], f"{key}_{row.split}_{i}", roots)
                if row.split == "train":
                    train.append(_as_llava(q))
                else:
                    name = "questions.jsonl" if row.split == "test" else f"questions_{row.split}.jsonl"
                    questions.setdefault(name, []).append(q)
        except (PathkitError, OSError) as err:
            failures.add(where, err)
    summary = ImportSummary(out=out, images=store.count, failed=list(failures.items))
    failures.write()
    if not questions and not train:
        first = failures.items[0]["reason"] if failures.items else f"{src}: no rows"
        raise PathkitError(f"{src}: nothing could be imported ({len(failures)} bad row(s); first: {first})")
    for name, rows in questions.items():
        write_jsonl(out / name, rows)
        summary.counts[name] = len(rows)
    if train:
        write_json(out / "train.json", train)
        summary.counts["train.json"] = len(train)
    for stale in [*out.glob("questions*.jsonl"), out / "train.json"]:  # an earlier import's, not this one's
        if stale.name not in summary.counts:
            stale.unlink(missing_ok=True)
    write_json(out / "summary.json", {"format": key, "source": str(src), "counts": dict(summary.counts),
                                      "images": summary.images, "bad_rows": len(summary.failed)})
    return summary


def _claim_id(seen: dict[tuple[str, str], str], key: tuple[str, str], where: str) -> None:
    if key in seen:
        raise PathkitError(f"{where}: field 'id' {key[1]!r} repeats {seen[key]}")
    seen[key] = where


def _import_record(where: str, rec: dict[str, Any], store: ImageStore, roots: list[Path], seen: dict,
                   fallback: str) -> dict[str, Any]:
    """A LLaVA record with its image(s) copied into OUT/images."""
    rec = dict(rec)
    _claim_id(seen, ("r", str(rec.get("id", fallback))), where)
    image = rec.get("image")
    if isinstance(image, list):
        rec["image"] = [store.add(where, p, f"{fallback}_{k}", roots) for k, p in enumerate(image)]
    elif image not in (None, ""):
        rec["image"] = store.add(where, image, fallback, roots)
    return rec


def _as_llava(q: dict[str, Any]) -> dict[str, Any]:
    """A training question as a LLaVA record: the question (with its suffix) and the expected answer."""
    human = f"{IMAGE_TOKEN}\n{q['text']}" if q.get("image") else q["text"]
    rec = {"id": q["question_id"], "conversations": [{"from": "human", "value": human},
                                                     {"from": "gpt", "value": str(q["answer"])}],
           "answer_type": q["answer_type"], "source": q.get("source")}
    if q.get("image"):
        rec["image"] = q["image"]
    return rec
