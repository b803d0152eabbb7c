"""``pathkit data import`` on fixtures in each source's published layout (columns, types and file names as the
authors publish them: Hugging Face parquet with an ``Image`` struct, PMC-VQA's CSV, Quilt-LLaVA's converted
PathVQA JSON, WSI-Bench's JSONL/JSON with ``.pt`` features, SlideBench-VQA (BCNB) CSV with SlideChat feature CSVs).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pathkit.cli import app
from pathkit.curate.llava_format import validate_llava_file
from pathkit.data.importers import import_data
from pathkit.io import PathkitError, read_json, read_jsonl
from pathkit.wsi.features import read_features

YES_NO = " Please choose from the following two options: [yes, no]"


def _ihc_crop(k: int, fmt: str = "JPEG") -> bytes:
    """A 64 px crop of scikit-image's real IHC image (colon tissue), encoded as a file would hold it."""
    from skimage.data import immunohistochemistry

    image = immunohistochemistry()[64 * k: 64 * k + 64, 64 * k: 64 * k + 64]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def _hf_image_parquet(path: Path, rows: list[dict], extra: dict[str, pa.DataType]) -> None:
    """A parquet file as ``datasets`` writes an ``Image()`` column: struct<bytes: binary, path: string>, with the
    features in the schema's ``huggingface`` metadata."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type)] + [(k, t) for k, t in extra.items()])
    features = {"image": {"_type": "Image"}} | {k: {"dtype": "string", "_type": "Value"} for k in extra}
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _reasons(out: Path) -> list[str]:
    return [r["reason"] for r in read_jsonl(out / "failures.jsonl")] if (out / "failures.jsonl").exists() else []


def _no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------------------------------- PathVQA


@pytest.fixture(scope="module")
def pathvqa_hf(tmp_path_factory):
    """flaviagiammarino/path-vqa: data/{train,test}-0000x-of-0000n.parquet, columns image, question, answer."""
    root = tmp_path_factory.mktemp("path-vqa")
    shared = _ihc_crop(1)
    test_rows = [
        {"image": {"bytes": shared, "path": None}, "question": "is the mucosa ulcerated?", "answer": "yes"},
        {"image": {"bytes": shared, "path": None}, "question": "what is present?", "answer": "glands"},
        {"image": {"bytes": _ihc_crop(2, "PNG"), "path": "test_0007.png"}, "question": "are crypts seen?",
         "answer": "no"},
        {"image": {"bytes": b"not an image", "path": None}, "question": "what is this?", "answer": "noise"},
        {"image": {"bytes": _ihc_crop(3), "path": None}, "question": None, "answer": "yes"},
    ]
    train_rows = [{"image": {"bytes": _ihc_crop(4), "path": None}, "question": "is this colon?", "answer": "yes"},
                  {"image": {"bytes": _ihc_crop(5), "path": None}, "question": "what stain is used?",
                   "answer": "ihc"}]
    cols = {"question": pa.string(), "answer": pa.string()}
    _hf_image_parquet(root / "data" / "test-00000-of-00001.parquet", test_rows, cols)
    _hf_image_parquet(root / "data" / "train-00000-of-00001.parquet", train_rows, cols)
    return root, shared


def test_pathvqa_hf_parquet(pathvqa_hf, tmp_path):
    root, shared = pathvqa_hf
    out = tmp_path / "out"
    summary = import_data("pathvqa", root, out)
    questions = read_jsonl(out / "questions.jsonl")
    assert [q["answer_type"] for q in questions] == ["CLOSED", "OPEN", "CLOSED"]
    assert questions[0]["text"] == "is the mucosa ulcerated?" + YES_NO and questions[0]["answer"] == "yes"
    assert questions[1]["text"] == "what is present?" and questions[1]["answer"] == "glands"
    assert questions[0]["image"] == questions[1]["image"]  # one image file for the rows that share it
    assert (out / questions[0]["image"]).read_bytes() == shared
    assert questions[2]["image"] == "images/test_0007.png"
    assert len({q["question_id"] for q in questions}) == 3
    train = read_json(out / "train.json")
    assert validate_llava_file(out / "train.json") == 2
    assert train[0]["conversations"][0]["value"] == "<image>\nis this colon?" + YES_NO
    assert train[0]["conversations"][1]["value"] == "yes" and (out / train[0]["image"]).is_file()
    reasons = _reasons(out)
    assert len(reasons) == 2 and len(summary.failed) == 2
    assert "test-00000-of-00001.parquet[row 3]" in reasons[0] and "field 'image'" in reasons[0]
    assert "test-00000-of-00001.parquet[row 4]" in reasons[1] and "field 'question'" in reasons[1]
    assert summary.images == 4 and _no_temp_files(out)


def test_pathvqa_quilt_converted_json_resolves_names_without_extension(tmp_path):
    """Quilt-LLaVA's pvqa_test_w_ans.json: PathVQA pickle records (image named without '.jpg') + answer_type, id."""
    images = tmp_path / "pvqa" / "images" / "test"
    images.mkdir(parents=True)
    (images / "test_0262.jpg").write_bytes(_ihc_crop(1))
    records = [{"image": "test_0262", "question": "is there fibrosis?", "answer": "no", "answer_type": "CLOSED",
                "id": 0},
               {"image": "test_0262", "question": "where is this from?", "answer": "colon", "answer_type": "OPEN",
                "id": 1},
               {"image": "test_9999", "question": "is it benign?", "answer": "yes", "answer_type": "CLOSED", "id": 2}]
    src = tmp_path / "pvqa_test_w_ans.json"
    src.write_text(json.dumps(records))
    out = tmp_path / "out"
    import_data("pathvqa", src, out, image_folder=images)
    questions = read_jsonl(out / "questions.jsonl")
    assert [q["question_id"] for q in questions] == ["0", "1"]
    assert questions[0]["image"] == "images/test_0262.jpg" and (out / "images" / "test_0262.jpg").is_file()
    assert questions[0]["text"].endswith(YES_NO) and questions[1]["answer_type"] == "OPEN"
    (reason,) = _reasons(out)
    assert "pvqa_test_w_ans.json[2]" in reason and "field 'image' 'test_9999' not found" in reason
    from pathkit.eval.loaders import load_benchmark  # the evaluation loader resolves the bare names too

    rows = load_benchmark("pathvqa", src, image_root=images)
    assert rows[0]["image"] == str(images / "test_0262.jpg") and rows[2]["image"] == str(images / "test_9999")


# --------------------------------------------------------------------------------------------------- PMC-VQA


def test_pmc_vqa_csv(tmp_path):
    """xmcmic/PMC-VQA: train.csv / test_clean.csv, choices stored as 'A:text' (some with a leading space)."""
    figures = tmp_path / "images"
    figures.mkdir()
    (figures / "PMC1064097_F1.jpg").write_bytes(_ihc_crop(1))
    (figures / "PMC2000000_F2.jpg").write_bytes(_ihc_crop(2))
    header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    test = pd.DataFrame([
        ["PMC1064097_F1.jpg", "What is the uptake pattern in the breast?", "Focal uptake pattern",
         "A:Diffuse uptake pattern", " B:Focal uptake pattern", " C:No uptake pattern",
         " D:Cannot determine from the information given", "B"],
        ["PMC2000000_F2.jpg", "Which stain is shown?", "DAB", "A:H&E", " B:DAB", " C:PAS", " D:Trichrome", "E"],
    ], columns=header)
    test.to_csv(tmp_path / "test_clean.csv", index=False)
    test.iloc[:1].assign(Figure_path="PMC2000000_F2.jpg").to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "out"
    import_data("pmc-vqa", tmp_path, out)
    (q,) = read_jsonl(out / "questions.jsonl")
    assert q["answer"] == "B" and q["answer_type"] == "CLOSED"
    assert q["choices"] == ["Diffuse uptake pattern", "Focal uptake pattern", "No uptake pattern",
                            "Cannot determine from the information given"]
    assert "\nB) Focal uptake pattern\n" in q["text"] and q["image"] == "images/PMC1064097_F1.jpg"
    (rec,) = read_json(out / "train.json")
    assert rec["conversations"][1]["value"] == "B" and rec["image"] == "images/PMC2000000_F2.jpg"
    (reason,) = _reasons(out)
    assert "test_clean.csv:3" in reason and "field 'answer'" in reason


# ------------------------------------------------------------------------------------------------- Quilt-VQA


def test_quilt_vqa_hf_is_an_evaluation_set(tmp_path):
    """wisdomik/Quilt_VQA: image, question, answer, answer_type, context (all rows are questions, whatever the
    split is called)."""
    rows = [{"image": {"bytes": _ihc_crop(1), "path": None}, "question": "Is there necrosis?",
             "answer": "Yes, there is extensive necrosis in the center.", "answer_type": "closed",
             "context": "the narrator points at the necrotic core"},
            {"image": {"bytes": _ihc_crop(2), "path": None}, "question": "What cells are these?",
             "answer": "These are plasma cells.", "answer_type": "open", "context": "plasma cells"},
            {"image": {"bytes": _ihc_crop(3), "path": None}, "question": "Is it malignant?",
             "answer": "It could be either.", "answer_type": "closed", "context": ""}]
    cols = {"question": pa.string(), "answer": pa.string(), "answer_type": pa.string(), "context": pa.string()}
    _hf_image_parquet(tmp_path / "Quilt_VQA" / "data" / "train-00000-of-00001.parquet", rows, cols)
    out = tmp_path / "out"
    import_data("quilt-vqa", tmp_path / "Quilt_VQA", out)
    assert not (out / "train.json").exists()
    q = read_jsonl(out / "questions.jsonl")
    assert [r["answer_type"] for r in q] == ["CLOSED", "OPEN"] and q[0]["answer"] == "yes"
    assert q[0]["full_answer"].startswith("Yes, there is") and q[1]["context"] == "plasma cells"
    (reason,) = _reasons(out)
    assert "[row 2]" in reason and "field 'answer'" in reason


# ------------------------------------------------------------------------------------------------- WSI-Bench


@pytest.fixture(scope="module")
def wsi_bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsi-bench")
    feats = root / "WSIBench-pt" / "TCGA-BRCA"
    feats.mkdir(parents=True)
    for k, uuid in enumerate(("0a1b2c3d-0000", "4e5f6a7b-1111")):
        torch.save(torch.full((576, 1024), float(k)), feats / f"{uuid}.pt")  # (576, 1024), zero-padded tokens
    bench = root / "WSI-Bench"
    bench.mkdir()
    rows = [{"question_id": "Morphology_TCGA-A1-A0SB-1_0", "image": "TCGA-BRCA/0a1b2c3d-0000.pt",
             "question": "Describe the tumour architecture.", "T-answer": "Solid nests of tumour cells.",
             "metadata": "Morphology"},
            {"question_id": "Report_TCGA-A1-A0SB-1_1", "image": "TCGA-BRCA/missing.pt",
             "question": "Write the report.", "T-answer": "Invasive ductal carcinoma.", "metadata": "Report"}]
    (bench / "WSI-Bench-test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    choice = [{"id": "TCGA-A1-A0SB-2", "image": "TCGA-BRCA/4e5f6a7b-1111.pt",
               "conversations": [{"from": "human", "value": "<image>\nWhich pattern? A) solid B) papillary "
                                  "C) cribriform D) lobular"}, {"from": "gpt", "value": "A"}]}]
    (bench / "Morphology_choice_test.json").write_text(json.dumps(choice))
    train = [{"id": "TCGA-A1-A0SB-7", "image": "TCGA-BRCA/4e5f6a7b-1111.pt",
              "conversations": [{"from": "human", "value": "<image>\nWhat is the diagnosis?"},
                                {"from": "gpt", "value": "Invasive ductal carcinoma."}]}]
    (bench / "WSI-Bench-train.json").write_text(json.dumps(train))
    return root


def test_wsi_bench_jsonl_choice_and_train_files(wsi_bench, tmp_path):
    out = tmp_path / "out"
    import_data("wsi-bench", wsi_bench / "WSI-Bench", out, image_folder=wsi_bench / "WSIBench-pt")
    q = {r["question_id"]: r for r in read_jsonl(out / "questions.jsonl")}
    assert set(q) == {"Morphology_TCGA-A1-A0SB-1_0", "TCGA-A1-A0SB-2"}
    open_q = q["Morphology_TCGA-A1-A0SB-1_0"]
    assert open_q["answer_type"] == "OPEN" and open_q["answer"] == "Solid nests of tumour cells."
    assert open_q["image"] == "images/TCGA-BRCA/0a1b2c3d-0000.pt" and open_q["category"] == "Morphology"
    assert q["TCGA-A1-A0SB-2"]["answer"] == "A" and q["TCGA-A1-A0SB-2"]["answer_type"] == "CLOSED"
    coords, feats, _ = read_features(out / open_q["image"])
    assert coords is None and feats.shape == (576, 1024)
    (rec,) = read_json(out / "train.json")
    assert rec["image"] == "images/TCGA-BRCA/4e5f6a7b-1111.pt" and validate_llava_file(out / "train.json") == 1
    (reason,) = _reasons(out)
    assert "WSI-Bench-test.jsonl:2" in reason and "'TCGA-BRCA/missing.pt' not found" in reason


# ------------------------------------------------------------------------------------------------ SlideBench


def test_slidebench_bcnb_csv_with_slidechat_feature_csvs(tmp_path):
    feats = tmp_path / "BCNB_patch_feat"
    feats.mkdir()
    rng = np.random.default_rng(0)
    for slide in ("101", "102"):
        frame = pd.DataFrame(rng.standard_normal((5, 512)).astype(np.float32))
        frame["patch_name"] = [f"{slide}_{i}.jpg" for i in range(5)]  # BCNB feature rows end with the patch name
        frame.to_csv(feats / f"{slide}.csv", index=False, float_format="%.4f")
    bench = pd.DataFrame([
        [0, 101, "ER status", "What is the ER status of this tumour?", "Positive", "Negative", "", "", "A"],
        [1, 102, "HER2 status", "What is the HER2 expression level?", "0", "1+", "2+", "3+", "C"],
        [2, 103, "ER status", "What is the ER status of this tumour?", "Positive", "Negative", "", "", "B"],
    ], columns=["ID", "Slide", "Task", "Question", "A", "B", "C", "D", "Answer"])
    bench.to_csv(tmp_path / "SlideBench-VQA-BCNB.csv", index=False)
    out = tmp_path / "out"
    import_data("slidebench", tmp_path / "SlideBench-VQA-BCNB.csv", out, image_folder=feats)
    q = read_jsonl(out / "questions.jsonl")
    assert [r["question_id"] for r in q] == ["0", "1"] and q[0]["choices"] == ["Positive", "Negative"]
    assert q[1]["answer"] == "C" and q[1]["category"] == "HER2 status" and q[0]["image"] == "images/101.csv"
    coords, features, _ = read_features(out / q[0]["image"])
    assert coords is None and features.shape == (5, 512)
    (reason,) = _reasons(out)
    assert "SlideBench-VQA-BCNB.csv:4" in reason and "'103.csv' not found" in reason


# ----------------------------------------------------------------------------------------------------- LLaVA


def test_llava_validate_and_copy(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(_ihc_crop(1))
    (tmp_path / "imgs" / "b.png").write_bytes(_ihc_crop(2, "PNG"))
    records = [
        {"id": "r1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                        {"from": "gpt", "value": "Glands."}], "source": "x"},
        {"id": "r2", "image": ["a.jpg", "b.png"],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nCompare."}, {"from": "gpt", "value": "B."}]},
        {"id": "r3", "conversations": [{"from": "human", "value": "What is H&E?"}, {"from": "gpt", "value": "A stain."}]},
        {"id": "r4", "image": "a.jpg", "conversations": [{"from": "human", "value": "Describe."},
                                                        {"from": "gpt", "value": "x"}]},
        {"id": "r1", "image": "b.png", "conversations": [{"from": "human", "value": "<image>\nAgain."},
                                                        {"from": "gpt", "value": "y"}]},
        {"id": "r6", "image": "../secret.png", "conversations": [{"from": "human", "value": "<image>\nx"},
                                                                {"from": "gpt", "value": "y"}]},
    ]
    src = tmp_path / "train_llava.json"
    src.write_text(json.dumps(records))
    out = tmp_path / "out"
    out.mkdir()
    (out / "questions.jsonl").write_text("{}\n")  # an earlier import's output that this one does not write
    result = CliRunner().invoke(app, ["data", "import", "llava", str(src), "--out", str(out), "--image-folder",
                                      str(tmp_path / "imgs")])
    assert result.exit_code == 1, result.output  # some rows bad: listed, the rest imported
    assert "imported 3 in train.json" in result.output and "3 bad row(s)" in result.output
    train = read_json(out / "train.json")
    assert [r["id"] for r in train] == ["r1", "r2", "r3"] and train[0]["source"] == "x"
    assert train[1]["image"] == ["images/a.jpg", "images/b.png"] and "image" not in train[2]
    assert validate_llava_file(out / "train.json") == 3 and not (out / "questions.jsonl").exists()
    reasons = _reasons(out)
    assert "train_llava.json[3] (id='r4'): conversations: 0 <image> token(s) for 1 image(s)" in reasons[0]
    assert "train_llava.json[4]" in reasons[1] and "field 'id' 'r1' repeats" in reasons[1]
    assert "train_llava.json[5]" in reasons[2] and "leaves the image folder" in reasons[2]


def test_nothing_importable_is_one_error_line(tmp_path):
    src = tmp_path / "bad.csv"
    pd.DataFrame({"Question": ["q?"], "Answer": ["A"]}).to_csv(src, index=False)
    with pytest.raises(PathkitError, match="nothing could be imported"):
        import_data("slidebench", src, tmp_path / "out")
    proc = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "pathkit.cli", "data", "import", "slidebench", str(src), "--out",
         str(tmp_path / "out2")], capture_output=True, text=True)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "bad.csv:2: missing field 'Slide'" in line
    assert not (tmp_path / "out2" / "questions.jsonl").exists()
