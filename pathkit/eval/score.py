"""Score an answers file against a questions file: every metric of :mod:`pathkit.eval.metrics`, with bootstrap
95% intervals, overall and broken down by answer type and by category.

Questions (evaluation contract): ``{"question_id", "image", "text", "answer", "answer_type"}`` (+ optional
``category``); answers (LLaVA's format): ``{"question_id", "text", ...}``. A question without an answer is
scored as an empty answer (wrong) and counted in ``n_missing_answers``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pathkit.eval import metrics as M
from pathkit.io import PathkitError, iter_jsonl, write_json

ANSWER_TYPE_ALIASES = {"closed": "CLOSED", "yes/no": "CLOSED", "open": "OPEN", "other": "OPEN", "number": "OPEN"}
OPEN_METRICS = ("open_recall", "open_precision", "open_f1", "exact_match", "seed_exact_match",
                "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "meteor")

DEFINITIONS = {
    "closed_accuracy": "pathkit default: first yes/no word (or option letter) of the normalised answer equals "
                       "the ground truth; an answer with neither is wrong",
    "closed_accuracy_variants.llava_med": "LLaVA-Med run_eval.py: substring 'yes'/'no' anywhere ('normal' "
                                          "contains 'no'); items with yes/no but without the truth are dropped",
    "closed_accuracy_variants.quilt": "Quilt-LLaVA quilt_eval.py: 'no'/'not' token -> no, else yes; yes/no "
                                      "truths only",
    "closed_accuracy_variants.pa_llava": "PA-LLaVA VQAEval.py: exact match after deleting ,.'!?\"()*#:;~",
    "open_recall": "LLaVA-Med/Quilt calculate_f1score recall on normalize_word unigrams",
    "exact_match": "normalised answer == normalised truth",
    "seed_exact_match": "LLaVA-Med/Quilt calculate_exactmatch (distinct truth words found / answer tokens)",
    "bleu_n": "WSI-Bench: nltk sentence_bleu, uniform weights over 1..n grams, SmoothingFunction().method4, "
              "mean over items",
    "rouge_l": "rouge-score ROUGE-L F-measure, mean over items",
    "meteor": "nltk single_meteor_score on word tokens, mean over items",
    "ci95": "percentile bootstrap over items",
}


def normalize_answer_type(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip()
    if v in ("CLOSED", "OPEN"):
        return v
    return ANSWER_TYPE_ALIASES.get(v.lower())


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """Questions JSONL with each required field checked; a bad line raises ``file:line: ...`` naming the field."""
    rows = []
    seen: set[str] = set()
    for lineno, row in iter_jsonl(path):
        for key in ("question_id", "text", "answer", "answer_type"):
            if key not in row:
                raise PathkitError(f"{path}:{lineno}: missing field '{key}'")
        kind = normalize_answer_type(row["answer_type"])
        if kind is None:
            raise PathkitError(f"{path}:{lineno}: field 'answer_type' must be CLOSED or OPEN, "
                               f"got {row['answer_type']!r}")
        if not isinstance(row["answer"], (str, int, float)):
            raise PathkitError(f"{path}:{lineno}: field 'answer' must be a string, got "
                               f"{type(row['answer']).__name__}")
        qid = str(row["question_id"])
        if qid in seen:
            raise PathkitError(f"{path}:{lineno}: duplicate question_id {qid!r}")
        seen.add(qid)
        rows.append({**row, "question_id": qid, "answer": str(row["answer"]), "answer_type": kind})
    return rows


def read_answers(path: str | Path) -> dict[str, dict[str, Any]]:
    """Answers JSONL keyed by question_id (the first answer of a question wins)."""
    out: dict[str, dict[str, Any]] = {}
    for lineno, row in iter_jsonl(path):
        for key in ("question_id", "text"):
            if key not in row:
                raise PathkitError(f"{path}:{lineno}: missing field '{key}'")
        if not isinstance(row["text"], str):
            raise PathkitError(f"{path}:{lineno}: field 'text' must be a string, got {type(row['text']).__name__}")
        out.setdefault(str(row["question_id"]), row)
    return out


def item_scores(question: dict[str, Any], answer: str) -> dict[str, Any]:
    """Every per-item metric for one question (closed: the four accuracies; open: the text metrics)."""
    truth = question["answer"]
    if question["answer_type"] == "CLOSED":
        return {"closed_accuracy": int(M.closed_correct(answer, truth)),
                **{name: fn(answer, truth) for name, fn in M.SEED_CLOSED_VARIANTS.items()}}
    f1, precision, recall = M.token_f1_scores(answer, truth)
    bleu = M.bleu_scores(answer, truth)
    return {"open_recall": recall, "open_precision": precision, "open_f1": f1,
            "exact_match": M.exact_match(answer, truth), "seed_exact_match": M.seed_exact_match(answer, truth),
            **{f"bleu_{n + 1}": b for n, b in enumerate(bleu)}, "rouge_l": M.rouge_l(answer, truth),
            "meteor": M.meteor(answer, truth)}


def aggregate(items: Iterable[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics with 95% intervals for a group of scored items."""
    items = list(items)
    closed = [it for it in items if it["answer_type"] == "CLOSED"]
    open_ = [it for it in items if it["answer_type"] == "OPEN"]
    out: dict[str, Any] = {"n": len(items), "n_closed": len(closed), "n_open": len(open_)}
    out["closed_accuracy"] = M.summarize([it["scores"]["closed_accuracy"] for it in closed], n_boot, seed)
    out["closed_accuracy_variants"] = {
        name: M.summarize([it["scores"][name] for it in closed], n_boot, seed) for name in M.SEED_CLOSED_VARIANTS
    }
    meteor_reader, meteor_source = M.wordnet_reader() if open_ else (None, "no open questions")
    for name in OPEN_METRICS:
        if name == "meteor" and meteor_reader is None:
            out[name] = {"value": None, "ci95": None, "n": 0, "reason": meteor_source}
            continue
        out[name] = M.summarize([it["scores"][name] for it in open_], n_boot, seed)
    return out


def score(questions: list[dict[str, Any]], answers: dict[str, dict[str, Any]], n_boot: int = 1000,
          seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Score answers (by question_id) against questions: overall, by answer type and by category."""
    items = []
    missing = 0
    for q in tqdm(questions, desc="score", disable=not progress or len(questions) < 200):
        ans = answers.get(q["question_id"])
        if ans is None:
            missing += 1
        text = ans["text"] if ans is not None else ""
        category = q.get("category") or (q.get("metadata") if isinstance(q.get("metadata"), str) else None)
        items.append({"question_id": q["question_id"], "answer_type": q["answer_type"],
                      "category": str(category) if category else "none", "scores": item_scores(q, text)})
    result = aggregate(items, n_boot, seed)
    result["n_missing_answers"] = missing
    result["n_unmatched_answers"] = len(set(answers) - {q["question_id"] for q in questions})
    by_type: dict[str, list] = defaultdict(list)
    by_cat: dict[str, list] = defaultdict(list)
    for it in items:
        by_type[it["answer_type"]].append(it)
        by_cat[it["category"]].append(it)
    result["by_answer_type"] = {k: aggregate(v, n_boot, seed) for k, v in sorted(by_type.items())}
    result["by_category"] = {k: aggregate(v, n_boot, seed) for k, v in sorted(by_cat.items())}
    _, meteor_source = M.wordnet_reader()
    result["meteor_source"] = meteor_source
    result["definitions"] = DEFINITIONS
    result["items"] = items
    return result


def score_files(answers_path: str | Path, questions_path: str | Path, out_path: str | Path | None = None,
                n_boot: int = 1000, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Read both files, score, and (if ``out_path``) write the metrics JSON atomically."""
    questions = read_questions(questions_path)
    answers = read_answers(answers_path)
    result = score(questions, answers, n_boot=n_boot, seed=seed, progress=progress)
    result["files"] = {"answers": str(answers_path), "questions": str(questions_path)}
    if out_path is not None:
        write_json(out_path, result)
    return result


def summary_scores(questions: list[dict[str, Any]], answers: list[str]) -> dict[str, Any]:
    """The training summary's scores: closed_accuracy (yes/no + lettered, pathkit's rule), yes_no_accuracy,
    choice_accuracy, open_recall, their counts, and the mean per category (or answer type)."""
    per_cat: dict[str, list[float]] = {}
    closed, yes_no, choice, opened = [], [], [], []
    for q, a in zip(questions, answers):
        if q["answer_type"].upper() == "CLOSED":
            hit = float(M.closed_correct(a, q["answer"]))
            closed.append(hit)
            (yes_no if q["answer"].lower() in ("yes", "no") else choice).append(hit)
        else:
            hit = float(M.open_recall(a, q["answer"]))
            opened.append(hit)
        per_cat.setdefault(q.get("category") or q["answer_type"], []).append(hit)

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {"closed_accuracy": mean(closed), "yes_no_accuracy": mean(yes_no), "choice_accuracy": mean(choice),
            "open_recall": mean(opened), "n_closed": len(closed), "n_yes_no": len(yes_no), "n_open": len(opened),
            "per_category": {k: mean(v) for k, v in sorted(per_cat.items())}}
