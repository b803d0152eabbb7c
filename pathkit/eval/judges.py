"""LLM judges: the LLaVA-Med / Quilt GPT-4 relative score, and WSI-Bench's WSI-Precision and WSI-Relevance.

All judges talk to an OpenAI-compatible server through :class:`pathkit.instruct.client.ChatClient` (retries,
cache) and keep an append-only journal per stage, so a rerun sends no request for an item already judged. A
malformed judge reply is retried once without the cache; a second malformed reply is recorded as a failure
(``ok: false`` in the journal, counted in the summary, retried by the next run).

**Relative score** (LLaVA-Med ``eval_multimodal_chat_gpt_score.py``, Quilt ``quilt_gpt_eval.py``): the judge sees
the context (caption), the question, Assistant 1 = the reference answer and Assistant 2 = the model's, and
writes two 1-10 scores on its first line. Quilt reports the ratio of the mean scores (per category and
overall); LLaVA-Med the mean of per-item ratios; both are returned, times 100.

**WSI-Precision** (WSI-Bench ``WSI-Metric``): claims are extracted from the *reference* answer, then each claim
is scored against the *model's* answer: 1 (correct), 0.7 (mostly correct), 0.3 (mentioned, core wrong) or 0.
**WSI-Relevance**: claims are extracted from the *model's* answer and each is scored by how relevant the
reference is to it. Both: item = mean of its claim scores; type = mean of its items; overall = mean of items.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pathkit.instruct.client import ChatClient
from pathkit.io import JsonlAppender, PathkitError, iter_jsonl, one_line

CLAIM_SCORES = (0.0, 0.3, 0.7, 1.0)

# --------------------------------------------------------------------------------------------------------
# Prompts (the seeds' instructions, reworded)
# --------------------------------------------------------------------------------------------------------

RELATIVE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
RELATIVE_INSTRUCTION = (
    "We would like your feedback on the performance of two AI assistants answering the user question shown "
    "above about an image. The image is not shown; its content is given as a caption{boxes}. Rate the "
    "helpfulness, relevance, accuracy and level of detail of each response. Each assistant gets one overall "
    "score from 1 to 10; higher is better.\nFirst output a single line with only the two scores, Assistant 1's "
    "then Assistant 2's, separated by a space.\nOn the following lines explain your evaluation, avoiding bias "
    "and making sure the order in which the responses were presented does not affect your judgment."
)
BOXES_NOTE = (", with bounding boxes of the objects given as (x1, y1, x2, y2), floats from 0 to 1: top-left x, "
              "top-left y, bottom-right x, bottom-right y")

CLAIMS_SYSTEM = (
    "You process pathology question-answer pairs. Given an answer, remove content that does not address the "
    "question and split the rest into distinct, granular claims. Keep closely connected information together "
    "in one claim; split complex sentences only when that does not separate connected ideas; do not omit or "
    "repeat anything. Output only the claims, as a JSON list of strings: [\"claim1\", \"claim2\", ...]"
)
PRECISION_SYSTEM = (
    "Act as an impartial judge of a pathology dialogue. For each claim, judge whether the assistant's response "
    "gets it right and give a score: 1 = completely correct regarding the claim; 0.7 = mostly correct, closely "
    "aligned; 0.3 = the claim is mentioned but its core is wrong (e.g. differentiation degree or malignancy); "
    "0 = completely incorrect. Output a JSON list with one object per claim: "
    "[{\"claim\": \"...\", \"explanation\": \"...\", \"score\": 1 or 0.7 or 0.3 or 0}, ...]"
)
RELEVANCE_SYSTEM = (
    "Act as an impartial judge. For each claim taken from a model's answer, judge how relevant the ground-truth "
    "answer is to it: 1 = completely relevant; 0.7 = mostly relevant with minor omissions or deviations; "
    "0.3 = partially relevant with significant omissions or irrelevant content; 0 = not relevant. Output a "
    "JSON list with one object per claim: [{\"claim\": \"...\", \"explanation\": \"...\", "
    "\"score\": 1 or 0.7 or 0.3 or 0}, ...]"
)


class MalformedReply(ValueError):
    """The judge's reply could not be parsed."""


# --------------------------------------------------------------------------------------------------------
# Chat access
# --------------------------------------------------------------------------------------------------------


def make_client(base_url: str | None, model: str, api_key_env: str = "OPENAI_API_KEY",
                cache_dir: str | Path | None = None, **kwargs: Any) -> Any:
    """The team's :class:`ChatClient` (retries, backoff, cache) for the judge model."""
    return ChatClient(base_url, model, api_key_env=api_key_env, cache_dir=cache_dir, **kwargs)


def _ask(client: Any, messages: list[dict[str, Any]], parse: Callable[[str], Any], params: dict[str, Any]
         ) -> tuple[Any, str, int]:
    """Ask, parse; on a malformed reply ask once more bypassing the cache. -> (parsed, reply, attempts)."""
    reply = client.chat(messages, **params).text
    try:
        return parse(reply), reply, 1
    except MalformedReply:
        reply = client.chat(messages, use_cache=False, **params).text
        return parse(reply), reply, 2  # a second MalformedReply propagates to the caller


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class Journal:
    """Finished judge calls by key; appends one fsynced line per call (ok or failed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for _, row in iter_jsonl(self.path, strict=False):
                if row.get("ok") and "key" in row:
                    self.done[row["key"]] = row
        self._out = JsonlAppender(self.path)

    def run(self, key: str, qid: str, fn: Callable[[], tuple[Any, str, int]]) -> dict[str, Any]:
        if key in self.done:
            return {**self.done[key], "cached": True}
        try:
            parsed, reply, attempts = fn()
            row = {"key": key, "question_id": qid, "ok": True, "parsed": parsed, "reply": reply,
                   "attempts": attempts}
        except Exception as err:  # malformed twice, or the request failed for good
            row = {"key": key, "question_id": qid, "ok": False, "error": one_line(err)}
        self._out.append(row)
        if row["ok"]:
            self.done[key] = row
        return row

    def close(self) -> None:
        self._out.close()


# --------------------------------------------------------------------------------------------------------
# Relative score
# --------------------------------------------------------------------------------------------------------

_PAIR = re.compile(r"(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)")


def parse_score_pair(reply: str) -> list[float]:
    """Two scores from the reply's first line, which holds only them ("8 6", "8, 6", "8.5 6"), each in [0, 10]
    (the seeds' parser: the first line, commas to spaces, exactly two numbers)."""
    first = (reply or "").strip().split("\n")[0]
    m = _PAIR.fullmatch(first.replace(",", " ").strip())
    if m is None:
        raise MalformedReply(f"expected two scores on the first line, got {first[:60]!r}")
    pair = [float(m.group(1)), float(m.group(2))]
    if not all(0 <= s <= 10 for s in pair):
        raise MalformedReply(f"scores out of range: {pair}")
    return pair


def relative_prompt(question: str, reference: str, answer: str, context: str = "", boxes: bool = False
                    ) -> list[dict[str, str]]:
    """The two-assistant review prompt (reference first, model second)."""
    content = (f"[Context]\n{context}\n\n[Question]\n{question}\n\n"
               f"[Assistant 1]\n{reference}\n\n[End of Assistant 1]\n\n"
               f"[Assistant 2]\n{answer}\n\n[End of Assistant 2]\n\n"
               f"[System]\n{RELATIVE_INSTRUCTION.format(boxes=BOXES_NOTE if boxes else '')}\n\n")
    return [{"role": "system", "content": RELATIVE_SYSTEM}, {"role": "user", "content": content}]


def relative_score(items: Iterable[dict[str, Any]], client: Any, journal_path: str | Path,
                   temperature: float = 0.2, max_tokens: int = 1024) -> dict[str, Any]:
    """Judge each item ``{question_id, question, reference, answer, context?, category?}``; summarise.

    Returns ``{"overall": {...}, "by_category": {...}, "n_failed", "failures"}`` where each summary has
    ``reference_mean`` and ``model_mean`` (1-10), ``relative_score`` (100 * mean model / mean reference, Quilt)
    and ``mean_ratio`` (100 * mean of per-item ratios, LLaVA-Med), and ``n``.
    """
    journal = Journal(journal_path)
    params = {"temperature": temperature, "max_tokens": max_tokens}
    scored: list[tuple[str, list[float]]] = []
    failures = []
    try:
        for it in items:
            qid = str(it["question_id"])
            messages = relative_prompt(it["question"], it["reference"], it["answer"], it.get("context", ""),
                                       boxes=bool(it.get("boxes")))
            row = journal.run(_key("relative", messages, params), qid,
                              lambda m=messages: _ask(client, m, parse_score_pair, params))
            if row["ok"]:
                scored.append((str(it.get("category") or "all"), row["parsed"]))
            else:
                failures.append({"question_id": qid, "error": row["error"]})
    finally:
        journal.close()

    def summary(pairs: list[list[float]]) -> dict[str, Any]:
        if not pairs:
            return {"n": 0, "reference_mean": None, "model_mean": None, "relative_score": None,
                    "mean_ratio": None}
        ref = sum(p[0] for p in pairs) / len(pairs)
        mod = sum(p[1] for p in pairs) / len(pairs)
        ratios = [p[1] / p[0] for p in pairs if p[0] > 0]
        return {"n": len(pairs), "reference_mean": ref, "model_mean": mod,
                "relative_score": 100 * mod / ref if ref > 0 else None,
                "mean_ratio": 100 * sum(ratios) / len(ratios) if ratios else None}

    by_cat: dict[str, list] = defaultdict(list)
    for cat, pair in scored:
        by_cat[cat].append(pair)
    return {"overall": summary([p for _, p in scored]),
            "by_category": {k: summary(v) for k, v in sorted(by_cat.items())},
            "n_failed": len(failures), "failures": failures}


# --------------------------------------------------------------------------------------------------------
# WSI-Precision / WSI-Relevance
# --------------------------------------------------------------------------------------------------------


def _json_block(reply: str) -> Any:
    """The first JSON (or Python-literal) list in a reply, code fences allowed."""
    text = (reply or "").strip()
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        raise MalformedReply("no list in the reply")
    block = text[start:end + 1]
    try:
        return json.loads(block)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(block)
        except (ValueError, SyntaxError) as err:
            raise MalformedReply(f"unparseable list: {err}") from err


def parse_claims(reply: str) -> list[str]:
    """A non-empty list of claim strings."""
    claims = _json_block(reply)
    if not isinstance(claims, list) or not claims or not all(isinstance(c, str) and c.strip() for c in claims):
        raise MalformedReply("expected a non-empty list of claim strings")
    return [c.strip() for c in claims]


def parse_claim_scores(reply: str, n_claims: int | None = None) -> list[dict[str, Any]]:
    """A list of ``{claim, explanation, score}`` with score in {1, 0.7, 0.3, 0} (one per claim when known)."""
    rows = _json_block(reply)
    if not isinstance(rows, list) or not rows:
        raise MalformedReply("expected a non-empty list of claim results")
    out = []
    for r in rows:
        if not isinstance(r, dict) or "score" not in r:
            raise MalformedReply("each claim result needs a 'score'")
        try:
            s = float(r["score"])
        except (TypeError, ValueError) as err:
            raise MalformedReply(f"score {r['score']!r} is not a number") from err
        if not any(abs(s - c) < 1e-6 for c in CLAIM_SCORES):
            raise MalformedReply(f"score {s} is not one of 1, 0.7, 0.3, 0")
        out.append({"claim": str(r.get("claim", "")), "explanation": str(r.get("explanation", "")), "score": s})
    if n_claims is not None and len(out) != n_claims:
        raise MalformedReply(f"{len(out)} results for {n_claims} claims")
    return out


def _claim_metric(items: Iterable[dict[str, Any]], client: Any, journal_dir: str | Path, kind: str,
                  params: dict[str, Any]) -> dict[str, Any]:
    """Shared body of WSI-Precision (``kind="precision"``) and WSI-Relevance (``kind="relevance"``)."""
    journal_dir = Path(journal_dir)
    claims_journal = Journal(journal_dir / f"wsi_{kind}_claims.jsonl")
    judge_journal = Journal(journal_dir / f"wsi_{kind}_scores.jsonl")
    per_item: list[dict[str, Any]] = []
    failures = []
    try:
        for it in items:
            qid = str(it["question_id"])
            source = it["reference"] if kind == "precision" else it["answer"]
            other = it["answer"] if kind == "precision" else it["reference"]
            msgs = [{"role": "system", "content": CLAIMS_SYSTEM},
                    {"role": "user", "content": f"Question: {it.get('question', '')}\nAnswer: {source}"}]
            got = claims_journal.run(_key("claims", msgs, params), qid,
                                     lambda m=msgs: _ask(client, m, parse_claims, params))
            if not got["ok"]:
                failures.append({"question_id": qid, "stage": "claims", "error": got["error"]})
                continue
            claims = got["parsed"]
            label = "pathology dialogue response" if kind == "precision" else "ground truth answer"
            msgs = [{"role": "system", "content": PRECISION_SYSTEM if kind == "precision" else RELEVANCE_SYSTEM},
                    {"role": "user", "content": f"claims: {json.dumps(claims)}\n{label}: {other}"}]
            res = judge_journal.run(
                _key("judge", kind, msgs, params), qid,
                lambda m=msgs, n=len(claims): _ask(client, m, functools.partial(parse_claim_scores, n_claims=n), params))
            if not res["ok"]:
                failures.append({"question_id": qid, "stage": "judge", "error": res["error"]})
                continue
            scores = [r["score"] for r in res["parsed"]]
            per_item.append({"question_id": qid, "type": str(it.get("category") or "all"),
                             "score": sum(scores) / len(scores), "claim_results": res["parsed"]})
    finally:
        claims_journal.close()
        judge_journal.close()
    by_type: dict[str, list[float]] = defaultdict(list)
    for p in per_item:
        by_type[p["type"]].append(p["score"])
    overall = round(sum(p["score"] for p in per_item) / len(per_item), 3) if per_item else None
    return {"overall": overall, "by_type": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_type.items())},
            "n": len(per_item), "n_failed": len(failures), "items": per_item, "failures": failures}


def wsi_precision(items: Iterable[dict[str, Any]], client: Any, journal_dir: str | Path,
                  **params: Any) -> dict[str, Any]:
    """WSI-Precision over items ``{question_id, question, reference, answer, category?}``."""
    return _claim_metric(items, client, journal_dir, "precision", params)


def wsi_relevance(items: Iterable[dict[str, Any]], client: Any, journal_dir: str | Path,
                  **params: Any) -> dict[str, Any]:
    """WSI-Relevance over items ``{question_id, question, reference, answer, category?}``."""
    return _claim_metric(items, client, journal_dir, "relevance", params)


def judge_items(questions: list[dict[str, Any]], answers: dict[str, dict[str, Any]],
                open_only: bool = True) -> list[dict[str, Any]]:
    """Judge inputs from evaluation questions + answers (open questions by default)."""
    out = []
    for q in questions:
        if open_only and q.get("answer_type") != "OPEN":
            continue
        a = answers.get(str(q["question_id"]))
        if a is None:
            raise PathkitError(f"question_id {q['question_id']}: no answer to judge")
        out.append({"question_id": str(q["question_id"]), "question": q["text"], "reference": q["answer"],
                    "answer": a["text"], "context": q.get("context") or "", "category": q.get("category")})
    return out
