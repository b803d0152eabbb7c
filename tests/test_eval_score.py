"""``pathkit eval score`` end to end: numbers against hand-computed values, breakdowns, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathkit.cli import app
from pathkit.eval import metrics as M

QUESTIONS = [
    {"question_id": 1, "image": None, "text": "Is this normal?", "answer": "no", "answer_type": "CLOSED",
     "category": "yes/no"},
    {"question_id": 2, "image": None, "text": "Is there tumour?", "answer": "yes", "answer_type": "CLOSED",
     "category": "yes/no"},
    {"question_id": 3, "image": None, "text": "Which class?", "answer": "B", "answer_type": "CLOSED",
     "category": "choice"},
    {"question_id": 4, "image": None, "text": "What is shown?", "answer": "tumor cells with large nuclei",
     "answer_type": "OPEN", "category": "open"},
    {"question_id": 5, "image": None, "text": "What tissue?", "answer": "adipose tissue", "answer_type": "OPEN",
     "category": "open"},
]
ANSWERS = {1: "normal", 2: "Yes.", 3: "B) stroma", 4: "large tumor cells", 5: "adipose tissue"}


def _write(tmp_path: Path, answers=ANSWERS, questions=QUESTIONS) -> tuple[Path, Path]:
    q = tmp_path / "q.jsonl"
    a = tmp_path / "a.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in questions))
    a.write_text("".join(json.dumps({"question_id": k, "prompt": "", "text": v, "answer_id": str(k),
                                     "model_id": "m", "metadata": {}}) + "\n" for k, v in answers.items()))
    return q, a


def test_score_cli_end_to_end(tmp_path):
    q, a = _write(tmp_path)
    out = tmp_path / "metrics.json"
    res = CliRunner().invoke(app, ["eval", "score", "--answers", str(a), "--questions", str(q), "--out",
                                   str(out), "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    assert m["n_closed"] == 3 and m["n_open"] == 2 and m["n_missing_answers"] == 0
    # closed by hand: "normal" (wrong), "Yes." (right), "B) stroma" (right) -> 2/3
    assert m["closed_accuracy"]["value"] == pytest.approx(2 / 3)
    lo, hi = m["closed_accuracy"]["ci95"]
    assert lo <= 2 / 3 <= hi
    v = m["closed_accuracy_variants"]
    # llava_med: normal->hit (substring), Yes.->hit, "b stroma"->0: 2/3; quilt skips the letter: 1/2
    assert v["llava_med"]["value"] == pytest.approx(2 / 3)
    assert v["quilt"]["value"] == pytest.approx(0.5) and v["quilt"]["n"] == 2
    assert v["pa_llava"]["value"] == pytest.approx(1 / 3)  # "Yes." -> "yes" matches; "b) stroma" does not
    # open: recall 1.0 for item 4? truth {tumor, cells, with, large, nuclei}: found 3 of 5 -> 0.6; item 5: 1.0
    assert m["open_recall"]["value"] == pytest.approx((0.6 + 1.0) / 2)
    assert m["exact_match"]["value"] == pytest.approx(0.5)
    assert m["bleu_1"]["value"] == pytest.approx((M.bleu_scores(ANSWERS[4], QUESTIONS[3]["answer"])[0] + 1) / 2)
    assert m["rouge_l"]["value"] == pytest.approx((M.rouge_l(ANSWERS[4], QUESTIONS[3]["answer"]) + 1) / 2)
    assert "value" in m["meteor"] and ("reason" in m["meteor"] or m["meteor"]["value"] > 0)
    assert set(m["by_answer_type"]) == {"CLOSED", "OPEN"}
    assert m["by_category"]["choice"]["closed_accuracy"]["value"] == 1.0
    assert m["by_category"]["open"]["n_open"] == 2
    assert "accuracy 0.667" in res.output


def test_missing_answer_counts_as_wrong(tmp_path):
    answers = dict(ANSWERS)
    del answers[2]
    answers[99] = "stray"
    q, a = _write(tmp_path, answers)
    from pathkit.eval.score import score_files

    m = score_files(a, q, n_boot=0)
    assert m["n_missing_answers"] == 1 and m["n_unmatched_answers"] == 1
    assert m["closed_accuracy"]["value"] == pytest.approx(1 / 3) and m["closed_accuracy"]["ci95"] is None


@pytest.mark.parametrize("line,field", [
    ('{"question_id": 1, "text": "x", "answer": "yes"}', "answer_type"),
    ('{"question_id": 1, "text": "x", "answer": "yes", "answer_type": "MAYBE"}', "answer_type"),
    ('{"question_id": 1, "text": "x", "answer_type": "OPEN"', "invalid JSON"),
])
def test_bad_questions_give_one_line_error_with_file_and_line(tmp_path, line, field):
    good = json.dumps(QUESTIONS[0])
    q = tmp_path / "q.jsonl"
    q.write_text(good + "\n" + line + "\n")
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"question_id": 1, "text": "no"}) + "\n")
    exe = Path(sys.executable).parent / "pathkit"
    proc = subprocess.run([str(exe), "eval", "score", "--answers", str(a), "--questions", str(q), "--out",
                           str(tmp_path / "m.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"{q}:2" in err[0] and field in err[0]
    assert not (tmp_path / "m.json").exists()


def test_bad_answers_name_the_field(tmp_path):
    q, a = _write(tmp_path)
    a.write_text(json.dumps({"question_id": 1, "answer": "no"}) + "\n")
    from pathkit.eval.score import score_files
    from pathkit.io import PathkitError

    with pytest.raises(PathkitError, match=r"a.jsonl:1: missing field 'text'"):
        score_files(a, q)
