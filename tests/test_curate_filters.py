"""Text and image filters on known cases: pathology vs other captions, H&E tiles vs photos/IHC/blank images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pathkit.curate.image_filter import ImageFilter, he_likeness, image_measurements, llm_cleaning_classifier
from pathkit.curate.pipeline import filter_records, removal_counts
from pathkit.curate.text_filter import TextFilter, pathology_vocabulary, vocabulary_hits


def test_vocabulary_ships_and_text_filter_known_cases():
    vocab = pathology_vocabulary()
    assert len(vocab) > 200 and {"carcinoma", "stroma", "mitoses", "eosin"} <= vocab
    f = TextFilter(min_hits=2)
    assert f("Invasive ductal carcinoma with desmoplastic stroma and frequent mitoses.")
    assert f("H&E section of lymph node showing reactive follicles.")
    assert f.check("The weather today is sunny and we went to the beach.").startswith("off_topic")
    assert f.check("Click subscribe and like the video.").startswith("off_topic")
    assert TextFilter(min_words=20).check("Carcinoma with necrosis.").startswith("too_short")
    assert vocabulary_hits("well-differentiated adenocarcinoma") == {"differentiated", "adenocarcinoma"}


def test_he_score_separates_synthetic_he_from_other_images():
    from skimage import data

    tissue = pytest.importorskip("pathkit.synthetic.tissue")
    rng = np.random.default_rng(0)
    he = [tissue.render_tissue(c, 128, 128, rng) for c in tissue.CLASSES]
    others = [data.camera(), data.coffee(), data.chelsea(), data.immunohistochemistry()]  # grey, photos, DAB IHC
    f = ImageFilter()
    assert all(f.check(img) is None for img in he), [f.check(img) for img in he]
    assert all(f.check(img).startswith("not_he_like") for img in others)
    assert min(he_likeness(img)[0] for img in he) > 0.6 > 0.3 > max(he_likeness(img)[0] for img in others)


def test_image_rules_size_aspect_blank_overexposed():
    rng = np.random.default_rng(0)
    pink = np.clip(rng.normal([200, 120, 180], 25, (128, 128, 3)), 0, 255).astype(np.uint8)
    f = ImageFilter()
    assert f.check(pink) is None
    assert f.check(pink[:32, :32]).startswith("too_small")
    assert f.check(np.concatenate([pink] * 5, axis=1)).startswith("aspect")
    assert f.check(np.full((128, 128, 3), 255, np.uint8)).startswith("blank")
    over = pink.copy()
    over[:, :100] = 255
    assert f.check(over).split(" ")[0] in ("blank", "overexposed")
    assert image_measurements(pink)["width"] == 128
    assert ImageFilter(classifier=lambda img: 0.1).check(pink).startswith("classifier")


def test_llm_cleaning_hook_through_the_local_server(tmp_path):
    from pathkit.instruct.client import ChatClient
    from pathkit.instruct.local_server import serve

    pink = np.clip(np.random.default_rng(0).normal([200, 120, 180], 25, (96, 96, 3)), 0, 255).astype(np.uint8)
    with serve() as server:
        client = ChatClient(server.base_url, "cleaner")
        yes = llm_cleaning_classifier(client, caption="H&E biopsy: carcinoma infiltrating the stroma.")
        no = llm_cleaning_classifier(client, caption="Mouse liver, hepatocytes with steatosis, H&E.")
        assert ImageFilter(classifier=yes).check(pink) is None
        assert ImageFilter(classifier=no).check(pink).startswith("classifier")
        assert server.request_count == 2
        assert server.requests[0]["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png")


def test_filter_records_and_cli(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(np.clip(rng.normal([200, 120, 180], 25, (96, 96, 3)), 0, 255).astype(np.uint8)).save(tmp_path / "he.png")
    Image.fromarray(np.full((96, 96, 3), 255, np.uint8)).save(tmp_path / "white.png")

    def rec(i, image, text):
        return {"id": i, "image": image, "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                           {"from": "gpt", "value": text}]}

    records = [rec("a", "he.png", "Carcinoma cells infiltrating stroma with necrosis."),
               rec("b", "he.png", "Subscribe to the channel for more videos."),
               rec("c", "white.png", "Benign glands with mucin in the mucosa."),
               rec("d", "missing.png", "Benign glands with mucin in the mucosa.")]
    kept, removed = filter_records(records, TextFilter(), ImageFilter(), image_root=tmp_path)
    assert [r["id"] for r in kept] == ["a"]
    assert removal_counts(removed) == {"off_topic": 1, "blank": 1, "unreadable": 1}
    (tmp_path / "in.json").write_text(json.dumps(records))
    proc = subprocess.run([sys.executable, "-m", "pathkit.cli", "curate", "filter", str(tmp_path / "in.json"),
                           "--images", "--out", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads((tmp_path / "out.json").read_text())] == ["a"]
    assert len((tmp_path / "out.removed.jsonl").read_text().splitlines()) == 3
