"""A stage's training records from a file: validate the whole file, resolve its images, take the stage's view.

A training file is LLaVA JSON (a list) or JSONL (one record a line) in the DESIGN.md contract. ``image`` is a
path relative to the image folder (LLaVA's ``--image_folder``; default the file's own folder), a list of paths,
a slide feature file, or absent (a text-only record). Every record is checked before training
(:func:`pathkit.curate.llava_format.check_llava_file`, streamed); a file with bad records stops the run with
one line per problem and a summary, unless ``skip_bad_records``, which trains on the rest and lists the bad ones
in ``bad_records.jsonl``.

Each stage takes a view of the same records (``DataSpec.format``):

* ``captions``: LLaVA's ``plain`` pre-training: ``<image>`` then the first assistant turn;
* ``describe``: a describe-the-image instruction answered by the first assistant turn (PA-LLaVA's
  ``dataformat.py``); a record whose first human turn already asks something keeps it;
* ``instruct``: every turn, text-only records included;
* ``pairs``: the image and the first assistant turn, for contrastive stages.

A record marked ``"split": "heldout"`` is never trained on; a contrastive stage measures its retrieval and
zero-shot scores on those records (on its training pairs when the file has none).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pathkit.curate.llava_format import (
    BadRecord,
    bad_records_line,
    check_llava_file,
    image_paths,
    is_feature_file,
)
from pathkit.io import PathkitError, write_jsonl

VIEWS = ("captions", "describe", "instruct", "pairs")

# PA-LLaVA's dataformat.py draws one of 21 captioning prompts (pt_prompt.txt) per pair; a few of the same kind.
DESCRIBE_PROMPTS = (
    "Describe the histopathology image in detail.",
    "What does this pathology image show?",
    "Provide a description of the tissue in the image.",
    "Summarize the morphological findings in this image.",
    "Write a caption for this pathology image.",
    "Explain what is visible in this microscopy image.",
)


class BadRecordsError(PathkitError):
    """A training file with bad records: ``str()`` is the one-line summary, ``problems`` one line each."""

    def __init__(self, path: str | Path, bad: list[BadRecord]):
        super().__init__(bad_records_line(path, bad))
        self.bad = bad
        self.problems = [b.line() for b in bad]


def read_training_file(path: str | Path, image_folder: str | Path | None = None, skip_bad_records: bool = False,
                       bad_records_out: str | Path | None = None) -> list[dict[str, Any]]:
    """Every good record of a training file, its ``image`` paths made absolute.

    Bad records raise :class:`BadRecordsError`; with ``skip_bad_records`` they are left out and written to
    ``bad_records_out`` (JSONL: file, index, id, field, problem)."""
    path = Path(path)
    good, bad = check_llava_file(path, image_folder)
    if bad and not skip_bad_records:
        raise BadRecordsError(path, bad)
    if bad and bad_records_out is not None:
        write_jsonl(bad_records_out, [b.to_dict() for b in bad])
    if not good:
        raise PathkitError(f"{path}: no usable records")
    base = Path(image_folder) if image_folder is not None else path.parent
    out = []
    for rec in good:
        if rec.get("image") is not None:
            paths = [os.path.normpath(p) for p in image_paths(rec["image"], base)]  # "a/../b" -> "b"
            rec = {**rec, "image": paths if isinstance(rec["image"], list) else paths[0]}
        out.append(rec)
    return out


def _first_exchange(rec: dict[str, Any]) -> tuple[str, str]:
    turns = rec["conversations"]
    return turns[0]["value"], turns[1]["value"]


def stage_view(records: list[dict[str, Any]], view: str) -> list[dict[str, Any]]:
    """The records a stage trains on (see the module docstring); text-only records only in ``instruct``."""
    if view not in VIEWS:
        raise PathkitError(f"view {view!r}: must be one of {VIEWS}")
    if view == "instruct":
        return list(records)
    out = []
    for rec in (r for r in records if r.get("image") is not None):
        question, answer = _first_exchange(rec)
        i = len(out)
        if view == "describe" and question.replace("<image>", "").strip():
            pass  # already an instruction: keep the first exchange as it is
        elif view == "describe":
            prompt = DESCRIBE_PROMPTS[i % len(DESCRIBE_PROMPTS)]
            question = f"<image>\n{prompt}" if i % 2 == 0 else f"{prompt}\n<image>"  # PA-LLaVA: either side
        else:  # captions and pairs: the bare image, then the answer
            question = "<image>\n"
        out.append({**rec, "conversations": [{"from": "human", "value": question},
                                             {"from": "gpt", "value": answer}]})
    return out


# ------------------------------------------------------------------------------------------------ stages


def stage_files(recipe: Any, train_data: str | Path | dict[str, str | Path] | None) -> dict[str, Path]:
    """Each stage's training file: ``train_data`` (one file for all stages, or ``{stage: file}``), else the
    stage's own ``DataSpec.path``. A stage without a file is a one-line error naming it."""
    names = [s.name for s in recipe.stages]
    given = {} if train_data is None else (
        dict(train_data) if isinstance(train_data, dict) else {n: train_data for n in names})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise PathkitError(f"--train-data {unknown[0]}=...: recipe {recipe.name} has no stage {unknown[0]!r}; "
                           f"stages: {names}")
    files = {}
    for stage in recipe.stages:
        path = given.get(stage.name) or stage.data.path
        if not path:
            raise PathkitError(f"stage {stage.name}: no training data: give --train-data FILE (or "
                               f"{stage.name}=FILE); the tutorial's files come from pathkit.workdir.tutorial_data")
        files[stage.name] = Path(path)
    return files


def read_stage_files(files: dict[str, Path], image_folder: str | Path | None, skip_bad_records: bool,
                     out_dir: Path) -> dict[Path, list[dict[str, Any]]]:
    """Every training file read and validated once, before any stage trains (a bad record found after an
    hour of training is an hour lost). Bad records of every file go to ``out_dir/bad_records.jsonl``."""
    out: dict[Path, list[dict[str, Any]]] = {}
    skipped: list[dict[str, Any]] = []
    for path in dict.fromkeys(files.values()):
        try:
            out[path] = read_training_file(path, image_folder, skip_bad_records=False)
        except BadRecordsError as err:
            if not skip_bad_records:
                raise
            out[path] = read_training_file(path, image_folder, skip_bad_records=True)
            skipped += [b.to_dict() for b in err.bad]
    bad_path = out_dir / "bad_records.jsonl"
    if skipped:
        write_jsonl(bad_path, skipped)
    else:
        bad_path.unlink(missing_ok=True)
    return out


SOURCE_WORDS = {"tiles": "images", "slides": "slide feature files"}


def records_source(path: str | Path, records: list[dict[str, Any]]) -> str | None:
    """What a file's records show: ``tiles`` (images) or ``slides`` (slide feature files), read from their
    ``image`` paths; None for a file of text-only records. A file that mixes both is a one-line error."""
    first: dict[str, dict[str, Any]] = {}
    for rec in records:
        image = rec.get("image")
        if image is not None:
            one = image[0] if isinstance(image, list) and image else image
            first.setdefault("slides" if is_feature_file(str(one)) else "tiles", rec)
    if len(first) > 1:
        raise PathkitError(f"{path}: mixes images (first: id={first['tiles'].get('id')}) and slide feature files "
                           f"(first: id={first['slides'].get('id')}); a recipe trains on one kind")
    return next(iter(first), None)


def check_stage_sources(recipe: Any, files: dict[str, Path], records_by_file: dict[Path, list[dict[str, Any]]]
                        ) -> None:
    """Every stage's file shows what the stage trains on (``DataSpec.source``: the recipe's image or slide
    towers), before any stage trains: slide features given to PA-LLaVA's CLIP stage would otherwise train the
    wrong tower, or fail an hour in."""
    for stage in recipe.stages:
        path = files[stage.name]
        found = records_source(path, records_by_file[path])
        if found is not None and found != stage.data.source:
            raise PathkitError(f"stage {stage.name}: {path} holds {SOURCE_WORDS[found]}, but recipe "
                               f"{recipe.name} trains this stage on {SOURCE_WORDS[stage.data.source]} "
                               f"(DataSpec.source={stage.data.source})")


def is_heldout(record: dict[str, Any]) -> bool:
    """A record marked ``"split": "heldout"``: never trained on; a contrastive stage measures retrieval on it."""
    return str(record.get("split", "")).lower() == "heldout"


def heldout_records(stage: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage's view of its file's held-out records (see :func:`is_heldout`); often none."""
    return stage_view([r for r in records if is_heldout(r)], stage.data.format)


def stage_records(stage: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage's view of its file's training records (``DataSpec.format``; held-out records left out), capped
    at ``max_samples``."""
    spec = stage.data
    out = stage_view([r for r in records if not is_heldout(r)], spec.format)
    if spec.max_samples:
        out = out[: spec.max_samples]
    if not out:
        raise PathkitError(f"stage {stage.name}: no records for its {spec.format} view (image records needed)")
    return out
