"""Report helpers used by notebook 09: model discovery, question sampling, variant tables, benchmark gathering."""

from __future__ import annotations

import json
import os

import pytest

from pathkit.eval import report


def test_find_and_last_stage_models(tmp_path):
    for i, (recipe, stage, vision) in enumerate([("quilt_llava", "instruct", "image"),
                                                 ("quilt_llava", "alignment", "image"),
                                                 ("wsi_llava", "instruct", "slide")]):
        d = tmp_path / "train" / recipe / stage / "model"
        d.mkdir(parents=True)
        (d / "pathkit_vlm.json").write_text(json.dumps({"vision": vision}))
        os.utime(d / "pathkit_vlm.json", (1000 + i, 1000 + (0 if stage == "alignment" else 10)))
    found = report.find_trained_models(tmp_path)
    assert set(found) == {"quilt_llava/instruct", "quilt_llava/alignment", "wsi_llava/instruct"}
    last = report.last_stage_models(found)
    assert list(last) == ["quilt_llava"] and last["quilt_llava"][0] == "quilt_llava/instruct"
    assert report.find_trained_models(tmp_path / "empty") == {}


def test_stratified_questions_keep_every_type():
    qs = [{"question_id": i, "category": c, "answer_type": "CLOSED"} for i, c in
          enumerate(["a"] * 10 + ["b"] * 10 + ["c"] * 2)]
    got = report.stratified_questions(qs, 7)
    assert len(got) == 7 and {q["category"] for q in got} == {"a", "b", "c"}
    assert report.stratified_questions(qs, None) == qs


def test_disagreement_and_variant_tables():
    t = report.disagreement_table()
    row = t.set_index("answer").loc["not seen"]
    assert (row["pathkit"], row["llava_med"], row["quilt"], row["pa_llava"]) == (0, 1, 1, 0)
    m = {"closed_accuracy": {"value": 0.5, "n": 4},
         "closed_accuracy_variants": {"llava_med": {"value": 1.0, "n": 2}, "quilt": {"value": 0.75, "n": 4},
                                      "pa_llava": {"value": 0.25, "n": 4}}}
    vt = report.variant_table({"m": m})
    assert vt.loc["m", "pathkit"] == 0.5 and vt.loc["m", "llava_med_n"] == 2


def test_gather_benchmarks_finds_ratios_and_survives_bad_files(tmp_path):
    (tmp_path / "bench_a.json").write_text(json.dumps(
        {"speedup": 3.0, "rows": [{"name": "n1024", "ratio": 2.5}], "machine": {"cpus": 2}}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "09_metrics.json").write_text(json.dumps({"speedup": 9}))  # our own outputs are skipped
    recs = {r["name"]: r for r in report.gather_benchmarks(tmp_path)}
    assert set(recs) == {"bench_a", "broken"}
    assert recs["bench_a"]["ratios"] == {"speedup": 3.0, "rows[n1024].ratio": 2.5}
    assert "error" in recs["broken"]
    fig = report.plot_benchmark_overview(list(recs.values()), tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 0 and fig is not None


def test_seed_numbers_are_marked_as_published():
    table = report.SEED_PUBLISHED["huatuogpt_vision_table"]
    assert "README" in table["source"]
    assert all(len(v) == len(table["benchmarks"]) for v in table["models"].values())
    assert table["models"]["HuatuoGPT-Vision-7B"][table["benchmarks"].index("PathVQA")] == pytest.approx(57.9)
