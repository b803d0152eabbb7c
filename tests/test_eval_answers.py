"""``generate_answers`` / ``pathkit eval answers`` with a real tiny VisionLanguageModel: format, resume, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pathkit.cli import app
from pathkit.eval.answers import ANSWER_FIELDS, generate_answers


def tiny_model_dir(session_dir: Path) -> Path:
    """A tiny VLM saved once per test session (shared with the chat tests)."""
    vlm = pytest.importorskip("pathkit.models.vlm")
    out = session_dir / "eval_tiny_vlm"
    if not (out / vlm.META_FILE).exists():
        from pathkit.config import Config

        model = vlm.VisionLanguageModel.from_config(Config.from_name("tiny"))
        model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_dir(session_dir):
    return tiny_model_dir(session_dir)


def _questions(root: Path, n: int = 6, missing: bool = True) -> Path:
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
        rows.append({"question_id": f"q{i}", "image": f"imgs/{i}.png", "text": f"Is there tumour {i}?",
                     "answer": "yes", "answer_type": "CLOSED"})
    if missing:
        rows.append({"question_id": "q_missing", "image": "imgs/nope.png", "text": "What?", "answer": "x",
                     "answer_type": "OPEN"})
    path = root / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_answers_are_resumable_after_a_stop(model_dir, tmp_path):
    questions = _questions(tmp_path)
    out = tmp_path / "answers.jsonl"

    class Stop(Exception):
        pass

    def stop_after_first_batch(n_written: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        generate_answers(model_dir, questions, out, batch_size=2, max_new_tokens=4,
                         on_batch=stop_after_first_batch, progress=False)
    first = _rows(out)
    assert [r["question_id"] for r in first] == ["q0", "q1"]

    res = generate_answers(model_dir, questions, out, batch_size=2, max_new_tokens=4, progress=False)
    assert res["skipped"] == 2 and res["answered"] == 4 and res["failed"] == 1
    rows = _rows(out)
    ids = [r["question_id"] for r in rows]
    assert sorted(ids) == [f"q{i}" for i in range(6)] and len(ids) == len(set(ids))
    assert rows[:2] == first  # the first run's answers are kept, not redone
    for r in rows:
        assert tuple(r) == ANSWER_FIELDS and isinstance(r["text"], str)
        assert r["model_id"] == model_dir.name and r["prompt"].startswith("Is there tumour")
    fails = _rows(tmp_path / "answers.failures.jsonl")
    assert len(fails) == 1 and "q_missing" in fails[0]["item"] and "image not found" in fails[0]["reason"]

    again = generate_answers(model_dir, questions, out, batch_size=2, progress=False)
    assert again["answered"] == 0 and len(_rows(out)) == 6


def test_answers_match_the_model_greedy_answer(model_dir, tmp_path):
    from pathkit.models.vlm import VisionLanguageModel

    questions = _questions(tmp_path, n=1, missing=False)
    out = tmp_path / "a.jsonl"
    generate_answers(model_dir, questions, out, batch_size=1, max_new_tokens=6, progress=False)
    model = VisionLanguageModel.from_pretrained(model_dir)
    img = Image.open(tmp_path / "imgs" / "0.png").convert("RGB")
    assert _rows(out)[0]["text"] == model.answer(["Is there tumour 0?"], images=[img], max_new_tokens=6)[0]


def test_cli_resumes_a_preseeded_partial_file_with_a_torn_line(model_dir, tmp_path):
    questions = _questions(tmp_path, n=4, missing=False)
    out = tmp_path / "answers.jsonl"
    seeded = {"question_id": "q1", "prompt": "p", "text": "seeded", "answer_id": "seed", "model_id": "m",
              "metadata": {}}
    out.write_text(json.dumps(seeded) + "\n" + '{"question_id": "q2", "te')  # killed mid-write
    res = CliRunner().invoke(app, ["eval", "answers", str(model_dir), str(questions), "--out", str(out),
                                   "--batch-size", "3", "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    ids = [r["question_id"] for r in rows]
    assert sorted(ids) == ["q0", "q1", "q2", "q3"] and len(set(ids)) == 4
    assert rows[0] == seeded
    assert "answered 3, already done 1" in res.output


def test_cli_bad_model_dir_is_one_line_error(tmp_path):
    import subprocess
    import sys

    questions = _questions(tmp_path, n=1, missing=False)
    exe = Path(sys.executable).parent / "pathkit"
    proc = subprocess.run([str(exe), "eval", "answers", str(tmp_path / "nomodel"), str(questions), "--out",
                           str(tmp_path / "a.jsonl")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ")
    assert "model folder not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_slide_feature_questions_are_answered_with_features_and_coords(session_dir, tmp_path):
    vlm = pytest.importorskip("pathkit.models.vlm")
    import torch

    from pathkit.config import Config
    from pathkit.wsi.features import REQUIRED_ATTRS, write_features

    cfg = Config.from_name("tiny")
    model_dir = session_dir / "eval_tiny_slide_vlm"
    if not (model_dir / vlm.META_FILE).exists():
        vlm.VisionLanguageModel.from_config(cfg, vision="slide", slide_encoder=False).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((12, cfg.longnet.in_dim)).astype(np.float32)
    coords = rng.integers(0, 4000, (12, 2))
    attrs = {**{k: 1 for k in REQUIRED_ATTRS}, "slide": "s1.svs", "encoder": "random"}
    write_features(tmp_path / "slides" / "s1.h5", coords, attrs, features=feats)
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": "s1-0", "image": "slides/s1.h5", "text": "Diagnosis?",
                                     "answer": "adenocarcinoma", "answer_type": "OPEN"}) + "\n")
    out = tmp_path / "a.jsonl"
    res = generate_answers(model_dir, questions, out, max_new_tokens=4, progress=False)
    assert res["answered"] == 1 and res["failed"] == 0
    model = vlm.VisionLanguageModel.from_pretrained(model_dir)
    direct = model.answer(["Diagnosis?"], slide_features=[torch.from_numpy(feats)],
                          slide_coords=[torch.from_numpy(coords)], max_new_tokens=4)[0]
    assert _rows(out)[0]["text"] == direct
