"""LLaVA JSON validation names the record index, id and field; converters produce valid records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pathkit.curate.llava_format import (
    narratives_to_llava,
    tiles_to_llava,
    validate_llava,
    validate_llava_file,
)
from pathkit.io import PathkitError


def good(i="a", image="x.png"):
    return {"id": i, "image": image, "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                       {"from": "gpt", "value": "A."}]}


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.pop("id"), "id"),
    (lambda r: r.update(image=5), "image"),
    (lambda r: r.update(conversations=[]), "conversations"),
    (lambda r: r["conversations"][0].update({"from": "gpt"}), "conversations[0].from"),
    (lambda r: r["conversations"][1].update(value=None), "conversations[1].value"),
    (lambda r: r["conversations"][1].update(value="  "), "conversations[1].value"),
    (lambda r: r["conversations"].append({"from": "human", "value": "more?"}), "conversations[2]"),
    (lambda r: r["conversations"][0].update(value="Q without token"), "0 <image> token(s) for 1 image(s)"),
    (lambda r: r.update(image=["a.png", "b.png"]), "1 <image> token(s) for 2 image(s)"),
    (lambda r: r.pop("image"), "1 <image> token(s) for 0 image(s)"),
])
def test_errors_name_index_id_and_field(mutate, field):
    records = [good("r0"), good("r1"), good("r2")]
    mutate(records[1])
    with pytest.raises(PathkitError) as info:
        validate_llava(records, "data.json")
    msg = str(info.value)
    assert msg.startswith("data.json: record 1 (id=") and field in msg and "\n" not in msg
    if "id" in records[1]:
        assert "id='r1'" in msg


def test_valid_variants_and_collect_all(tmp_path):
    multi = good("m", ["a.png", "b.png"])
    multi["conversations"][0]["value"] = "<image>\n<image>\nCompare."
    text_only = {"id": 7, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
                 "extra": {"kept": True}}
    assert validate_llava([good(), multi, text_only, good("h5", "slide.h5")]) == 4
    errors: list[str] = []
    assert validate_llava([good("a"), good("a"), {"id": "z"}], "f.json", errors) == 1
    assert len(errors) == 2 and "duplicate of record 0" in errors[0] and "record 2 (id='z')" in errors[1]
    (tmp_path / "broken.json").write_text('[{"id": 1,')
    with pytest.raises(PathkitError, match="broken.json:1"):
        validate_llava_file(tmp_path / "broken.json")
    (tmp_path / "bad.json").write_text(json.dumps([good("ok"), {"id": "bad", "conversations": "x"}]))
    proc = subprocess.run([sys.executable, "-m", "pathkit.cli", "curate", "validate", str(tmp_path / "bad.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "record 1 (id='bad'): conversations" in proc.stderr


def test_converters_give_valid_llava():
    narratives = [{"video": "v.mp4", "chunk": 0, "start": 0, "end": 5, "frame": "frames/v_0.png", "width": 200,
                   "height": 100, "caption": "Tumour cells here.", "cursor": [[0.1, 20, 30]],
                   "groundings": [{"text": "tumour cells", "start": 0, "end": 1, "box": [20, 10, 120, 60]}],
                   "heatmap": "h.npy"}]
    recs = narratives_to_llava(narratives)
    assert validate_llava(recs) == 1 and recs[0]["id"] == "v-0" and recs[0]["boxes"][0]["box"] == [0.1, 0.1, 0.6, 0.6]
    tiles = [{"id": f"t{i}", "image": f"images/t{i}.png", "label": "tumor", "attributes": {}, "split": s,
              "caption": "Tumor tile."} for i, s in enumerate(["train", "test", "train"])]
    assert [r["id"] for r in tiles_to_llava(tiles, split="train")] == ["t0", "t2"]
    assert validate_llava(tiles_to_llava(tiles)) == 3
    with pytest.raises(PathkitError, match="missing field 'caption'"):
        tiles_to_llava([{"id": "x", "image": "y"}])
