"""Training from files pathkit never wrote: a LLaVA JSON and an image folder made here, bad records, views, CLI.

The data set: 64 px tiles of two stains (hematoxylin-rich purple, eosin-rich pink) with noise and nuclei-like
blobs, drawn with numpy here, one question template ("Is this tissue hematoxylin-rich?"), a caption per tile and
a few text-only records. Files are written in LLaVA's own layout (a JSON list, ``image`` relative to an image
folder that is not the file's folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pathkit.curate.llava_format import check_llava_file, iter_llava_file, validate_llava_file
from pathkit.io import PathkitError
from pathkit.train.records import BadRecordsError, read_training_file, stage_view

QUESTION = "Is this tissue hematoxylin-rich? Please answer yes or no."
STAINS = {"hematoxylin": (95, 60, 165), "eosin": (232, 135, 185)}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATHKIT_TORCH_THREADS": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def _tile(stain: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    base = np.array(STAINS[stain], float)
    img = base + rng.normal(0, 18, (size, size, 3))
    for _ in range(int(rng.integers(3, 8))):  # darker nucleus-like blobs
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(3, 7))]
        yy, xx = np.ogrid[:size, :size]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] *= 0.6
    return np.clip(img, 0, 255).astype(np.uint8)


def write_two_stain_set(root: Path, per_class: int = 24, heldout: int = 8, seed: int = 0) -> dict[str, Path]:
    """images/<stain>_<i>.png, data/train.json (LLaVA list), data/questions.jsonl (held-out, yes/no)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(parents=True, exist_ok=True)
    train, questions = [], []
    for stain in STAINS:
        for i in range(per_class + heldout):
            name = f"{stain}_{i}.png"
            Image.fromarray(_tile(stain, rng)).save(root / "images" / name)
            answer = "yes" if stain == "hematoxylin" else "no"
            if i < per_class:
                caption = f"{stain.capitalize()}-rich tissue with scattered dark nuclei."
                train.append({"id": f"{stain}_{i}_caption", "image": name, "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the tissue."}, {"from": "gpt", "value": caption}]})
                train.append({"id": f"{stain}_{i}_qa", "image": name, "conversations": [
                    {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": answer}]})
            else:
                questions.append({"question_id": f"{stain}_{i}", "image": f"../images/{name}", "text": QUESTION,
                                  "answer": answer, "answer_type": "CLOSED", "category": "stain_yes_no"})
    for k in range(4):  # text-only records: trained as text, never batched with images
        train.append({"id": f"text_{k}", "conversations": [
            {"from": "human", "value": "Which stain colours nuclei purple?"}, {"from": "gpt", "value": "Hematoxylin."}]})
    (root / "data" / "train.json").write_text(json.dumps(train, indent=1))
    (root / "data" / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return {"train": root / "data" / "train.json", "questions": root / "data" / "questions.jsonl",
            "images": root / "images"}


@pytest.fixture(scope="module")
def stain_set(tmp_path_factory) -> dict[str, Path]:
    return write_two_stain_set(tmp_path_factory.mktemp("stains"))


# ------------------------------------------------------------------------------------------------ files


def test_streamed_json_list_equals_json_load_and_errors_name_line_and_column(tmp_path):
    records = [{"id": i, "text": "x" * (i % 50), "nested": {"a": [1, 2, {"b": "]"}]}} for i in range(3000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records, indent=2))
    assert [r for _, r in iter_llava_file(path, chunk_size=4096)] == json.loads(path.read_text())
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert [i for i, _ in iter_llava_file(jsonl)] == list(range(3000))
    (tmp_path / "torn.json").write_text('[{"id": 1},\n {"id": 2,\n  "x": ]')
    with pytest.raises(PathkitError, match=r"torn.json:3:8: invalid JSON"):
        list(iter_llava_file(tmp_path / "torn.json", chunk_size=8))
    (tmp_path / "torn.json").write_text('[{"id": 1}')
    with pytest.raises(PathkitError, match="unexpected end of file"):
        list(iter_llava_file(tmp_path / "torn.json"))


def test_views_of_the_same_records(stain_set):
    records = read_training_file(stain_set["train"], stain_set["images"])
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in records if "image" in r)
    instruct = stage_view(records, "instruct")
    assert instruct == records  # every turn, text-only records included
    captions = stage_view(records, "captions")
    assert len(captions) == len([r for r in records if "image" in r])  # text-only records have no caption
    assert {c["conversations"][0]["value"] for c in captions} == {"<image>\n"}
    assert [c["conversations"][1]["value"] for c in captions] == [
        r["conversations"][1]["value"] for r in records if "image" in r]  # the first assistant turn
    pairs = stage_view(records, "pairs")
    assert [(p["image"], p["conversations"][1]["value"]) for p in pairs] == [
        (c["image"], c["conversations"][1]["value"]) for c in captions]
    # describe: a bare <image> record gets an instruction (either side of the token); a question stays
    described = stage_view(captions[:4], "describe")
    assert all(d["conversations"][0]["value"].replace("<image>", "").strip() for d in described)
    assert described[0]["conversations"][0]["value"].startswith("<image>")
    assert described[1]["conversations"][0]["value"].endswith("<image>")
    assert stage_view(records[:2], "describe")[1]["conversations"][0]["value"] == f"<image>\n{QUESTION}"
    # a record marked "split": "heldout" never trains; a contrastive stage scores retrieval on it
    from pathkit.train.recipes import DataSpec, Stage
    from pathkit.train.records import heldout_records, stage_records

    marked = [{**r, "split": "heldout"} if i < 3 else r for i, r in enumerate(records)]
    clip = Stage(name="clip", kind="contrastive", data=DataSpec(format="pairs"), trainable={"vision": True})
    assert [r["id"] for r in heldout_records(clip, marked)] == [r["id"] for r in records[:3]]
    assert [r["id"] for r in stage_records(clip, marked)] == [r["id"] for r in pairs[3:]]


def test_each_bad_record_is_one_line_naming_file_index_id_and_field(tmp_path, stain_set):
    import h5py

    good = json.loads(stain_set["train"].read_text())[:2]
    feats = tmp_path / "feats"
    feats.mkdir()
    for name, width in (("a.h5", 8), ("b.h5", 12)):
        with h5py.File(feats / name, "w") as fh:
            fh["coords"] = np.zeros((3, 2), np.int64)
            fh["features"] = np.zeros((3, width), np.float32)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    conv = good[0]["conversations"]
    bad = [
        {"id": "missing", "image": "nope.png", "conversations": conv},
        {"id": "noconv", "image": good[0]["image"]},
        {"id": "late_token", "image": good[0]["image"], "conversations": [
            {"from": "human", "value": "Look."}, {"from": "gpt", "value": "ok"},
            {"from": "human", "value": "<image>\nAnd?"}, {"from": "gpt", "value": "fine"}]},
        {"id": "two_tokens", "image": good[0]["image"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nCompare."}, {"from": "gpt", "value": "same"}]},
        {"id": "unreadable", "image": str(tmp_path / "broken.png"), "conversations": conv},
        {"id": "slide_a", "image": str(feats / "a.h5"), "conversations": conv},
        {"id": "slide_b", "image": str(feats / "b.h5"), "conversations": conv},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(good + bad))
    kept, problems = check_llava_file(path, stain_set["images"])
    assert [r["id"] for r in kept] == [good[0]["id"], good[1]["id"], "slide_a"]
    lines = [p.line() for p in problems]
    assert [p.index for p in problems] == [2, 3, 4, 5, 6, 8]
    assert lines[0] == f"train.json: #2 id=missing: image 'nope.png' not found under {stain_set['images']}"
    assert [p.field for p in problems] == ["image", "conversations", "conversations[0].value", "conversations",
                                         "image", "image"]
    assert "first human turn has no <image>" in lines[2] and "2 <image> token(s) for 1 image(s)" in lines[3]
    assert "unreadable" in lines[4] and "has 12 features per tile" in lines[5] and "has 8" in lines[5]
    # validate_llava_file (the `data import llava` check) streams the same file and names the same records
    errors: list[str] = []
    assert validate_llava_file(path, errors) == 6 and len(errors) == 3


@pytest.mark.slow
def test_cli_stops_on_bad_records_before_training_and_skips_them_on_request(tmp_path, stain_set):
    records = json.loads(stain_set["train"].read_text())[:12]
    records[3]["image"] = "missing.png"
    records[7].pop("conversations")
    path = tmp_path / "train.jsonl"  # JSONL: one record a line
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pathkit.cli", "train", "quilt_llava", "--preset", "tiny", "--train-data",
           str(path), "--image-folder", str(stain_set["images"]), "--out", str(out), "--no-progress",
           "--set", "*.max_steps=1", "--set", "*.batch_size=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1] == (f"error: train.jsonl: 2 bad records (first: #3 id={records[3]['id']}: image 'missing.png' "
                       f"not found under {stain_set['images']})")
    assert err[-2] == f"train.jsonl: #7 id={records[7]['id']}: conversations: missing or empty"
    assert not out.exists()  # nothing half-written

    proc = subprocess.run(cmd + ["--skip-bad-records"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = [json.loads(line) for line in (out / "bad_records.jsonl").read_text().splitlines()]
    assert [(b["index"], b["field"]) for b in bad] == [(3, "image"), (7, "conversations")]
    summary = json.loads((out / "summary.json").read_text())
    instruct = summary["stages"]["instruct"]
    assert instruct["records"] + instruct.get("val_records", 0) == 10  # 12 minus the two bad ones
    assert summary["stages"]["alignment"]["records"] == 10
    assert "closed_accuracy" not in summary  # no --eval-questions: nothing to score


def test_stages_lists_name_kind_and_view():
    from typer.testing import CliRunner

    from pathkit.cli import app

    result = CliRunner().invoke(app, ["train", "pa_llava", "--stages"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.strip().splitlines()]
    assert [(r[0], r[1], r[2]) for r in rows] == [("clip", "contrastive", "view=pairs"),
                                                 ("domain_alignment", "vlm", "view=describe"),
                                                 ("vqa_tuning", "vlm", "view=instruct")]


def test_unknown_stage_and_missing_data_are_one_line_errors(tmp_path, stain_set):
    from pathkit.config import Config
    from pathkit.train.recipes import get_recipe
    from pathkit.train.runner import run_recipe

    recipe = get_recipe("quilt_llava", "tiny")
    with pytest.raises(PathkitError, match="stage instruct: no training data"):
        run_recipe(recipe, Config.from_name("tiny"), tmp_path / "x", {"alignment": stain_set["train"]})
    with pytest.raises(PathkitError, match="has no stage 'clip'"):
        run_recipe(recipe, Config.from_name("tiny"), tmp_path / "x", {"clip": stain_set["train"]})
    with pytest.raises(BadRecordsError):
        run_recipe(recipe, Config.from_name("tiny"), tmp_path / "x", stain_set["train"])  # images not found
    assert not (tmp_path / "x").exists()


def test_a_stage_given_the_other_kind_of_visual_input_stops_before_training(tmp_path, stain_set):
    """DataSpec.source is read from the records: images given to WSI-LLaVA's slide stages (or slide features to
    PA-LLaVA's CLIP) are a one-line error before any stage trains; a file mixing both kinds is one too."""
    from pathkit.config import Config
    from pathkit.train.recipes import get_recipe
    from pathkit.train.records import records_source
    from pathkit.train.runner import run_recipe

    with pytest.raises(PathkitError, match=r"stage wsi_text: .*train.json holds images, but recipe wsi_llava "
                                           r"trains this stage on slide feature files \(DataSpec.source=slides\)"):
        run_recipe(get_recipe("wsi_llava", "tiny"), Config.from_name("tiny"), tmp_path / "w", stain_set["train"],
                   image_folder=stain_set["images"])
    assert not (tmp_path / "w").exists()
    records = [{"id": "a", "image": "x.png"}, {"id": "t"}, {"id": "b", "image": ["s.h5"]}, {"id": "c", "image": "y.pt"}]
    with pytest.raises(PathkitError, match=r"f.json: mixes images \(first: id=a\) and slide feature files "
                                           r"\(first: id=b\)"):
        records_source("f.json", records)
    assert records_source("f.json", records[1:]) == "slides" and records_source("f.json", records[1:2]) is None


def test_extra_closed_with_a_given_file_warns_and_is_an_error_when_set(tmp_path, stain_set):
    """Extra closed questions come from the synthetic tiles' labels: a stage trained on a given file warns that
    its extra_closed does nothing, and ``--set STAGE.data.extra_closed=N`` with a file is an error."""
    import warnings

    from pathkit.config import Config
    from pathkit.eval.recipe_run import train_and_evaluate
    from pathkit.train.commands import check_extra_closed_not_set
    from pathkit.train.recipes import get_recipe, with_overrides

    recipe = get_recipe("pa_llava", "tiny")
    assert recipe.stage("vqa_tuning").data.extra_closed > 0
    with pytest.warns(UserWarning, match=r"vqa_tuning \(extra_closed=\d+\): extra closed questions are made only "
                                         r"for the tutorial's synthetic tiles"), pytest.raises(BadRecordsError):
        train_and_evaluate(recipe, Config.from_name("tiny"), tmp_path / "p", stain_set["train"], evaluate=False)
    _, none = with_overrides(Config.from_name("tiny"), recipe, {"*.data.extra_closed": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadRecordsError):  # images are not under the file's folder: stops before training
            train_and_evaluate(none, Config.from_name("tiny"), tmp_path / "p", stain_set["train"], evaluate=False)
    files = {s.name: str(stain_set["train"]) for s in recipe.stages}
    with pytest.raises(PathkitError, match=r"--set vqa_tuning.data.extra_closed=2: extra closed questions are made "
                                           r"only for the tutorial's synthetic tiles; stage vqa_tuning trains on "):
        check_extra_closed_not_set({"vqa_tuning.data.extra_closed": 2}, recipe, files)
    with pytest.raises(PathkitError, match="stage vqa_tuning trains on"):
        check_extra_closed_not_set({"*.data.extra_closed": 1}, recipe, {"vqa_tuning": files["vqa_tuning"]})
    check_extra_closed_not_set({"vqa_tuning.data.extra_closed": 0, "vqa_tuning.lr": 1e-4}, recipe, files)


# ------------------------------------------------------------------------------------------------ learning


def _train_on_stain_set(recipe: str, stain_set: dict[str, Path], out: Path, override: str) -> dict:
    """``pathkit train RECIPE --train-data`` on the stain set's files, as a user runs it; its summary.json."""
    proc = subprocess.run([sys.executable, "-m", "pathkit.cli", "train", recipe, "--preset", "tiny",
                           "--train-data", str(stain_set["train"]), "--image-folder", str(stain_set["images"]),
                           "--eval-questions", str(stain_set["questions"]), "--out", str(out), "--no-progress",
                           "--set", override],
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_quilt_llava_tiny_learns_a_two_stain_set_it_never_saw(tmp_path, stain_set):
    """Done means: a LLaVA JSON + image folder pathkit never wrote; held-out yes/no >= 0.9 (chance 0.5)."""
    out = tmp_path / "quilt"
    summary = _train_on_stain_set("quilt_llava", stain_set, out, "instruct.epochs=15")
    assert summary["n_yes_no"] == 16
    assert summary["yes_no_accuracy"] >= 0.9, summary
    answers = [json.loads(line) for line in (out / "eval" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 16 and {a["metadata"]["answer"] for a in answers} == {"yes", "no"}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pa_llava", "huatuo_vision"])
def test_every_patch_recipe_trains_every_stage_on_files_it_never_saw(tmp_path, stain_set, recipe):
    """The other patch recipes on the same LLaVA JSON + image folder: every stage (PA-LLaVA's CLIP on the pairs
    view, its LoRA stages; HuatuoGPT-Vision's two full stages) trains on its view and the held-out questions are
    answered. One epoch each: this checks the data path, the learning is checked above and in test_train_learning."""
    from pathkit.train.recipes import get_recipe

    out = tmp_path / recipe
    summary = _train_on_stain_set(recipe, stain_set, out, "*.epochs=1")
    stages = [s.name for s in get_recipe(recipe, "tiny").stages]
    assert list(summary["stages"]) == stages
    for name in stages:
        assert (out / name / "model").is_dir() and summary["stages"][name]["steps"] > 0, summary["stages"][name]
    assert summary["n_yes_no"] == 16
    answers = [json.loads(line) for line in (out / "eval" / "answers.jsonl").read_text().splitlines()]
    # one epoch of huatuo's random-init LLM may answer with the end token at once: an answer row, empty text
    assert [a["question_id"] for a in answers] == [json.loads(q)["question_id"]
                                                  for q in stain_set["questions"].read_text().splitlines()]
    assert all(isinstance(a["text"], str) and a["model_id"] for a in answers)
