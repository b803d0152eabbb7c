"""Benchmark loaders on small files written in each benchmark's own format (JSON, JSONL, CSV, parquet)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from pathkit.eval.loaders import load_benchmark, write_questions
from pathkit.eval.metrics import CHOICE_SUFFIX, YES_NO_SUFFIX
from pathkit.eval.score import read_questions
from pathkit.io import PathkitError


def _png_bytes(color=(200, 50, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def test_pathvqa_parquet_with_image_bytes_and_pa_llava_json(tmp_path):
    src = tmp_path / "test.parquet"
    _parquet(src, [{"image": {"bytes": _png_bytes(), "path": "a.png"}, "question": "Is this necrosis?",
                    "answer": "yes"},
                   {"image": {"bytes": _png_bytes(), "path": "b.png"}, "question": "What is present?",
                    "answer": "hemorrhage"}])
    rows = load_benchmark("pathvqa", src, image_dir=tmp_path / "imgs")
    assert [r["answer_type"] for r in rows] == ["CLOSED", "OPEN"]
    assert rows[0]["text"] == "Is this necrosis?" + YES_NO_SUFFIX and rows[0]["answer"] == "yes"
    assert Image.open(rows[0]["image"]).size == (8, 8)
    out = tmp_path / "q" / "pathvqa.jsonl"
    write_questions(out, rows)
    back = read_questions(out)  # the evaluation contract holds
    assert not back[0]["image"].startswith("/") and (out.parent / back[0]["image"]).exists()

    pa = tmp_path / "pvqa.json"  # PA-LLaVA: id-keyed dict
    pa.write_text(json.dumps({"q7": {"question": "Is it benign?", "image": "img/x.jpg", "answer": "No",
                                     "question_type": "is", "answer_type": "yes/no"}}))
    rows = load_benchmark("pathvqa", pa, image_root=tmp_path)
    assert rows[0]["question_id"] == "q7" and rows[0]["answer"] == "no" and rows[0]["answer_type"] == "CLOSED"
    assert rows[0]["image"] == str(tmp_path / "img/x.jpg")


def test_quilt_vqa_closed_sentence_answers_reduce_to_yes_no(tmp_path):
    src = tmp_path / "quilt.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"image": "i1.jpg", "question": "Is this a carcinoma?", "answer": "Yes, an invasive carcinoma.",
         "answer_type": "closed", "context": "narrator..."},
        {"image": "i2.jpg", "question": "What is this?", "answer": "A granuloma.", "answer_type": "open",
         "context": ""},
    ]))
    rows = load_benchmark("quilt_vqa", src)
    assert rows[0]["answer"] == "yes" and rows[0]["full_answer"].startswith("Yes,")
    assert rows[1]["answer_type"] == "OPEN" and rows[1]["answer"] == "A granuloma."
    red = load_benchmark("quilt_vqa_red", src)
    assert {r["source"] for r in red} == {"quilt_vqa_red"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "x", "question": "Q?", "answer": "maybe", "answer_type": "closed"}))
    with pytest.raises(PathkitError, match=r"bad.jsonl:1: .*yes_no_answer"):
        load_benchmark("quilt_vqa", bad)


def test_pmc_vqa_csv_lettered_choices(tmp_path):
    src = tmp_path / "pmc.csv"
    src.write_text("Figure_path,Question,Choice A,Choice B,Choice C,Choice D,Answer,in_quilt\n"
                   "f1.jpg,What stain is used?,A:H&E,B:PAS,C:Trichrome,D:Giemsa,B,False\n"
                   "f2.jpg,Which organ?,A:Liver,B:Lung,C:Kidney,D:Skin,A,True\n")
    rows = load_benchmark("pmc_vqa", src)
    assert len(rows) == 1  # in_quilt rows dropped, as Quilt does
    r = rows[0]
    assert r["answer"] == "B" and r["answer_type"] == "CLOSED" and r["choices"][1] == "PAS"
    assert "A) H&E\nB) PAS" in r["text"] and r["text"].endswith(CHOICE_SUFFIX)
    bad = tmp_path / "bad.csv"
    bad.write_text("Figure_path,Question,Choice A,Choice B,Answer\nf,Q?,A:x,B:y,E\n")
    with pytest.raises(PathkitError, match=r"bad.csv:2: field 'answer'"):
        load_benchmark("pmc_vqa", bad)


def test_wsi_bench_kind_from_file_name(tmp_path):
    def llava(qid, q, a):
        return {"id": qid, "image": "TCGA-XX/slide.pt",
                "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]}

    choice = tmp_path / "Diagnosis_choice.json"
    choice.write_text(json.dumps([llava("s1-0", "What is the diagnosis? A) adenocarcinoma B) squamous cell "
                                               "carcinoma C) melanoma D) lymphoma", "B")]))
    tf = tmp_path / "Prognosis_TF_question.json"
    tf.write_text(json.dumps([llava("s1-1", "Is the prognosis favourable?", "No")]))
    open_ = tmp_path / "WSI-Bench-test.jsonl"
    open_.write_text(json.dumps({"question_id": "Report_s1-0_0", "image": "s1.pt", "question": "Describe.",
                                 "T-answer": "Moderately differentiated adenocarcinoma.",
                                 "metadata": "Report"}) + "\n")
    c = load_benchmark("wsi_bench", choice)[0]
    assert c["answer"] == "B" and c["answer_type"] == "CLOSED" and c["choices"][2] == "melanoma"
    assert c["category"] == "Diagnosis_choice" and "<image>" not in c["text"]
    t = load_benchmark("wsi_bench", tf)[0]
    assert t["answer"] == "no" and t["text"].endswith(YES_NO_SUFFIX)
    o = load_benchmark("wsi_bench", open_)[0]
    assert o["answer_type"] == "OPEN" and o["category"] == "Report" and o["answer"].startswith("Moderately")


def test_slake_vqa_rad_and_mmmu(tmp_path):
    slake = tmp_path / "test.json"
    slake.write_text(json.dumps([
        {"img_name": "xmlab1/source.jpg", "question": "Is the liver healthy?", "answer": "Yes", "q_lang": "en",
         "answer_type": "CLOSED", "content_type": "Abnormality", "qid": 11},
        {"img_name": "xmlab1/source.jpg", "question": "肝脏健康吗?", "answer": "是", "q_lang": "zh",
         "answer_type": "CLOSED", "qid": 12},
        {"img_name": "xmlab2/source.jpg", "question": "Which side is the lesion on?", "answer": "Left",
         "q_lang": "en", "answer_type": "CLOSED", "qid": 13},
    ]))
    rows = load_benchmark("slake", slake)
    assert [r["question_id"] for r in rows] == ["11", "13"]  # English only
    assert rows[0]["answer"] == "yes" and rows[1]["answer_type"] == "CLOSED" and rows[1]["answer"] == "Left"

    rad = tmp_path / "VQA_RAD Dataset Public.json"
    rad.write_text(json.dumps([
        {"qid": 1, "image_name": "synpic1.jpg", "question": "Is there a fracture?", "answer": "no",
         "answer_type": "CLOSED", "question_type": "PRES"},
        {"qid": 2, "image_name": "synpic2.jpg", "question": "How many lesions?", "answer": 2,
         "answer_type": "OPEN", "question_type": "COUNT"},
    ]))
    rows = load_benchmark("vqa_rad", rad)
    assert rows[0]["answer_type"] == "CLOSED" and rows[1]["answer"] == "2" and rows[1]["category"] == "COUNT"

    mmmu = tmp_path / "validation.parquet"
    _parquet(mmmu, [
        {"id": "validation_Clinical_Medicine_1", "question": "<image 1> What is shown?",
         "options": "['Infarct', 'Abscess', 'Tumour']", "answer": "C",
         "image_1": {"bytes": _png_bytes(), "path": "m.png"}, "question_type": "multiple-choice",
         "subfield": "Pathology"},
        {"id": "validation_Art_1", "question": "Which style?", "options": "['a', 'b']", "answer": "A",
         "image_1": None, "question_type": "multiple-choice", "subfield": "Art"},
        {"id": "validation_Pharmacy_2", "question": "Dose?", "options": "[]", "answer": "10",
         "image_1": None, "question_type": "open", "subfield": "Pharmacy"},
    ])
    rows = load_benchmark("mmmu_med", mmmu, image_dir=tmp_path / "mm")
    assert len(rows) == 1 and rows[0]["answer"] == "C" and "C) Tumour" in rows[0]["text"]
    assert "<image 1>" not in rows[0]["text"] and rows[0]["category"] == "Pathology"


def test_bad_inputs_name_the_record_and_field(tmp_path):
    with pytest.raises(PathkitError, match="file not found"):
        load_benchmark("slake", tmp_path / "missing.json")
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps([{"img_name": "a.jpg", "answer": "yes", "answer_type": "CLOSED"}]))
    with pytest.raises(PathkitError, match=r"x.json\[0\]: missing field 'question'"):
        load_benchmark("slake", bad)
    with pytest.raises(PathkitError, match="unknown benchmark"):
        load_benchmark("nope", bad)
    txt = tmp_path / "x.txt"
    txt.write_text("hi")
    with pytest.raises(PathkitError, match="unsupported file type"):
        load_benchmark("pathvqa", txt)


def test_convert_cli_writes_the_evaluation_format(tmp_path):
    from typer.testing import CliRunner

    from pathkit.cli import app

    src = tmp_path / "test.parquet"
    _parquet(src, [{"image": {"bytes": _png_bytes(), "path": "a.png"}, "question": "Is this necrosis?",
                    "answer": "no"}])
    out = tmp_path / "eval" / "pathvqa.jsonl"
    res = CliRunner().invoke(app, ["eval", "convert", "pathvqa", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = read_questions(out)
    assert rows[0]["answer_type"] == "CLOSED" and (out.parent / rows[0]["image"]).exists()
    assert "1 questions (1 closed)" in res.output
