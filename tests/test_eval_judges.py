"""LLM judges through the real openai client against the loopback OpenAI-compatible server, canned replies."""

from __future__ import annotations

import json
import re

import pytest

from pathkit.eval import judges as J
from pathkit.instruct.local_server import serve


def judge_responder(messages, body):
    """Deterministic judge: relative -> "8 8" when the answers agree, else "8 4"; claims -> sentences;
    claim scores -> 1 when the claim occurs in the other text, 0.3 when its first word does, else 0."""
    system = messages[0]["content"]
    user = messages[-1]["content"]
    if system == J.RELATIVE_SYSTEM:
        a1 = re.search(r"\[Assistant 1\]\n(.*?)\n\n\[End of Assistant 1\]", user, re.S).group(1)
        a2 = re.search(r"\[Assistant 2\]\n(.*?)\n\n\[End of Assistant 2\]", user, re.S).group(1)
        return ("8 8" if a1 == a2 else "8 4") + "\nBoth answers were considered."
    if system == J.CLAIMS_SYSTEM:
        answer = user.split("Answer: ", 1)[1]
        return json.dumps([s.strip() for s in answer.split(".") if s.strip()])
    claims_line, other = user.split("\n", 1)
    claims = json.loads(claims_line[len("claims: "):])
    other = other.split(": ", 1)[1].lower()
    out = []
    for c in claims:
        score = 1 if c.lower() in other else (0.3 if c.split()[0].lower() in other else 0)
        out.append({"claim": c, "explanation": "canned", "score": score})
    return "Here you go:\n```json\n" + json.dumps(out) + "\n```"


@pytest.fixture()
def server():
    with serve(judge_responder) as s:
        yield s


def _client(server, tmp_path):
    return J.make_client(server.base_url, "judge-model", cache_dir=tmp_path / "cache", max_attempts=1)


ITEMS = [
    {"question_id": "1", "question": "Q1", "reference": "Tumour cells.", "answer": "Tumour cells.",
     "category": "conv"},
    {"question_id": "2", "question": "Q2", "reference": "Necrosis.", "answer": "Stroma.", "category": "conv"},
    {"question_id": "3", "question": "Q3", "reference": "Glands.", "answer": "Fat.", "category": "detail"},
]


def test_score_pair_parsing():
    assert J.parse_score_pair("8 6\nbecause") == [8.0, 6.0]
    assert J.parse_score_pair("8, 7.5") == [8.0, 7.5]
    for bad in ("Assistant 1 gets 8", "8\n6", "", "11 3"):
        with pytest.raises(J.MalformedReply):
            J.parse_score_pair(bad)
    assert J.parse_claim_scores('[{"claim": "a", "score": 0.7}]', 1)[0]["score"] == 0.7
    with pytest.raises(J.MalformedReply):
        J.parse_claim_scores('[{"claim": "a", "score": 0.5}]')


def test_relative_score_means_ratio_and_resume(server, tmp_path):
    client = _client(server, tmp_path)
    res = J.relative_score(ITEMS, client, tmp_path / "relative.jsonl")
    o = res["overall"]
    assert o["n"] == 3 and o["reference_mean"] == 8 and o["model_mean"] == pytest.approx(16 / 3)
    assert o["relative_score"] == pytest.approx(100 * (16 / 3) / 8)              # Quilt: ratio of means
    assert o["mean_ratio"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)           # LLaVA-Med: mean of ratios
    assert res["by_category"]["conv"]["relative_score"] == pytest.approx(75.0)
    assert res["by_category"]["detail"]["relative_score"] == pytest.approx(50.0)
    sent = server.request_count
    again = J.relative_score(ITEMS, client, tmp_path / "relative.jsonl")  # journal: nothing sent again
    assert server.request_count == sent and again["overall"] == o


def test_malformed_reply_retried_once_then_recorded_and_retried_next_run(server, tmp_path):
    client = _client(server, tmp_path)
    server.faults.add("malformed", times=1)
    res = J.relative_score(ITEMS[:1], client, tmp_path / "r1.jsonl")
    assert res["n_failed"] == 0 and res["overall"]["n"] == 1 and server.request_count == 2

    server.reset_counts()
    server.faults.add("malformed", times=2)
    res = J.relative_score(ITEMS[1:2], client, tmp_path / "r2.jsonl")
    assert res["n_failed"] == 1 and res["overall"]["n"] == 0 and server.request_count == 2
    assert "expected two scores" in res["failures"][0]["error"]
    journal = [json.loads(x) for x in (tmp_path / "r2.jsonl").read_text().splitlines()]
    assert journal[0]["ok"] is False
    res = J.relative_score(ITEMS[1:2], client, tmp_path / "r2.jsonl")  # next run retries the failure
    assert res["n_failed"] == 0 and res["overall"]["model_mean"] == 4


def test_wsi_precision_and_relevance(server, tmp_path):
    client = _client(server, tmp_path)
    items = [
        # reference claims: "Adenocarcinoma", "Moderately differentiated"; answer mentions the first only
        {"question_id": "a", "question": "Diagnosis?", "reference": "Adenocarcinoma. Moderately differentiated.",
         "answer": "Adenocarcinoma. Poorly differentiated. Lymph node metastasis.", "category": "Report"},
        {"question_id": "b", "question": "Grade?", "reference": "Grade 2.", "answer": "Grade 2.",
         "category": "Grade"},
    ]
    prec = J.wsi_precision(items, client, tmp_path / "judge")
    # item a: claim 1 found (1), claim 2 "Moderately differentiated" absent, first word absent (0) -> 0.5
    assert [i["score"] for i in prec["items"]] == [0.5, 1.0]
    assert prec["by_type"] == {"Grade": 1.0, "Report": 0.5} and prec["overall"] == 0.75
    rel = J.wsi_relevance(items, client, tmp_path / "judge")
    # item a: model claims "Adenocarcinoma" (1), "Poorly differentiated" (0), "Lymph node metastasis" (0)
    assert [round(i["score"], 3) for i in rel["items"]] == [0.333, 1.0]
    assert rel["overall"] == round((1 / 3 + 1) / 2, 3)
    sent = server.request_count
    J.wsi_precision(items, client, tmp_path / "judge")
    assert server.request_count == sent  # resumed from the journals


def test_judge_items_from_questions_and_answers():
    qs = [{"question_id": 1, "text": "Q", "answer": "A", "answer_type": "OPEN", "category": "c"},
          {"question_id": 2, "text": "Q2", "answer": "yes", "answer_type": "CLOSED"}]
    items = J.judge_items(qs, {"1": {"text": "B"}, "2": {"text": "no"}})
    assert items == [{"question_id": "1", "question": "Q", "reference": "A", "answer": "B", "context": "",
                      "category": "c"}]


def test_judge_cli_end_to_end_and_resume(server, tmp_path):
    from typer.testing import CliRunner

    from pathkit.cli import app

    q = tmp_path / "q.jsonl"
    a = tmp_path / "a.jsonl"
    q.write_text("".join(json.dumps({"question_id": it["question_id"], "image": None, "text": it["question"],
                                     "answer": it["reference"], "answer_type": "OPEN",
                                     "category": it["category"]}) + "\n" for it in ITEMS))
    a.write_text("".join(json.dumps({"question_id": it["question_id"], "text": it["answer"]}) + "\n"
                         for it in ITEMS))
    out = tmp_path / "judge.json"
    args = ["eval", "judge", "--answers", str(a), "--questions", str(q), "--out", str(out), "--model", "m",
            "--base-url", server.base_url, "--metric", "relative", "--metric", "wsi_precision"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["relative"]["overall"]["relative_score"] == pytest.approx(100 * (16 / 3) / 8)
    assert got["wsi_precision"]["overall"] == pytest.approx(round((1 + 0 + 0) / 3, 3))
    sent = server.request_count
    assert CliRunner().invoke(app, args).exit_code == 0 and server.request_count == sent
