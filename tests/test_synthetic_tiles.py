"""Synthetic tissue tiles: the pixels show what the ground truth says, and the text files keep the contracts.

Colour statistics are measured with scikit-image's ``rgb2hed`` (Ruifrok-Johnston colour deconvolution), an
implementation independent of the painter's Beer-Lambert code, and separability with scikit-learn.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hed
from skimage.measure import label as connected_components
from skimage.measure import regionprops
from typer.testing import CliRunner

from pathkit.config import Config, SyntheticConfig
from pathkit.synthetic.text import caption_for, questions_for, report_for_slide
from pathkit.synthetic.tiles import TileDataset, ensure_tile_dataset, split_sizes
from pathkit.synthetic.tissue import CLASSES, render_tissue, sample_attributes, sample_stain

REPO = Path(__file__).resolve().parent.parent


def _tile(label: str, seed: int, size: int = 128, **attrs) -> np.ndarray:
    return render_tissue(label, size, size, np.random.default_rng(seed), **attrs)


def _nuclear_mask(img: np.ndarray) -> np.ndarray:
    """Hematoxylin-dominant pixels by colour deconvolution (independent of the painter)."""
    hed = rgb2hed(img)
    return (hed[..., 0] > 0.06) & (hed[..., 0] > hed[..., 1])


def _white_mask(img: np.ndarray) -> np.ndarray:
    return img.min(axis=-1) > 215


@pytest.fixture(scope="module")
def class_stats() -> dict[str, dict[str, float]]:
    stats = {}
    for c in CLASSES:
        nuc, white, areas = [], [], []
        for seed in range(6):
            img = _tile(c, seed)
            mask = _nuclear_mask(img)
            nuc.append(mask.mean())
            white.append(_white_mask(img).mean())
            areas += [r.area for r in regionprops(connected_components(mask)) if r.area >= 4]
        stats[c] = {"nuclei": float(np.mean(nuc)), "white": float(np.mean(white)),
                    "nucleus_area": float(np.median(areas)) if areas else 0.0}
    return stats


@pytest.fixture(scope="module")
def tiny_tiles(tmp_path_factory) -> TileDataset:
    return ensure_tile_dataset(tmp_path_factory.mktemp("tiles"), Config.from_name("tiny").synthetic, seed=0,
                               progress=False)


# --------------------------------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("label", CLASSES)
def test_render_is_deterministic_per_seed_and_differs_across_seeds(label):
    a, b, c = _tile(label, 3, 96), _tile(label, 3, 96), _tile(label, 4, 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 2.0


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (300, 17)])
def test_render_any_shape(shape):
    for label in CLASSES:
        assert render_tissue(label, *shape, np.random.default_rng(0)).shape == (*shape, 3)


def test_bad_label_and_size_raise():
    with pytest.raises(ValueError, match="label='bone'"):
        render_tissue("bone", 32, 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="height=0"):
        render_tissue("tumor", 0, 32, np.random.default_rng(0))


def test_nuclei_fraction_ranks_classes(class_stats):
    nuclei = {c: s["nuclei"] for c, s in class_stats.items()}
    top_two = sorted(nuclei, key=nuclei.get, reverse=True)[:2]
    assert set(top_two) == {"lymphocytes", "tumor"}, nuclei
    assert min(nuclei, key=nuclei.get) == "adipose", nuclei
    assert nuclei["adipose"] < 0.03 and nuclei["lymphocytes"] > 0.3, nuclei


def test_white_fraction_highest_in_adipose_then_gland(class_stats):
    white = {c: s["white"] for c, s in class_stats.items()}
    ranked = sorted(white, key=white.get, reverse=True)
    assert ranked[:2] == ["adipose", "gland"], white
    assert white["adipose"] > 0.5 and white["tumor"] < 0.02 and white["lymphocytes"] < 0.02, white


def test_tumour_nuclei_larger_than_lymphocyte_nuclei(class_stats):
    assert class_stats["tumor"]["nucleus_area"] > 1.5 * class_stats["lymphocytes"]["nucleus_area"], class_stats


def test_grade_enlarges_nuclei_and_density_raises_nuclear_fraction():
    def median_area(grade):
        areas = []
        for seed in range(4):
            mask = _nuclear_mask(_tile("tumor", seed, 192, grade=grade, pleomorphism=0.2 + 0.12 * (grade - 1),
                                       nuclear_density=0.3, mitoses=False))
            areas += [r.area for r in regionprops(connected_components(mask)) if r.area >= 4]
        return np.median(areas)

    assert median_area(3) > 1.3 * median_area(1)
    sparse = np.mean([_nuclear_mask(_tile("tumor", s, nuclear_density=0.2)).mean() for s in range(4)])
    dense = np.mean([_nuclear_mask(_tile("tumor", s, nuclear_density=0.5)).mean() for s in range(4)])
    assert dense > 1.5 * sparse


def test_mitoses_add_very_dark_chromatin():
    def dark(mitoses):  # same rng state, so only the mitotic figures differ
        return np.mean([(rgb2hed(_tile("tumor", s, 96, grade=2, mitoses=mitoses))[..., 0] > 0.2).sum()
                        for s in range(6)])

    assert dark(True) > dark(False) + 10


def test_stroma_fibres_follow_the_fibre_angle():
    """Eosin texture varies across the fibres more than along them (structure-tensor orientation)."""
    for angle in (0.0, 90.0):
        img = _tile("stroma", 0, 160, fibre_angle=angle).astype(np.float32).mean(-1)
        gy, gx = np.gradient(img)
        along_x = float((gx ** 2).mean())  # large when fibres run vertically
        along_y = float((gy ** 2).mean())
        if angle == 0.0:  # fibres run along x
            assert along_y > 1.5 * along_x
        else:
            assert along_x > 1.5 * along_y


def test_stain_changes_colour_not_structure():
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    textbook = sample_stain(np.random.default_rng(5), strength=0.0)
    other_lab = sample_stain(np.random.default_rng(5), strength=3.0)
    a = render_tissue("tumor", 96, 96, rng_a, stain=textbook)
    b = render_tissue("tumor", 96, 96, rng_b, stain=other_lab)
    assert np.abs(a.astype(int).mean((0, 1)) - b.astype(int).mean((0, 1))).max() > 2
    # the same nuclei, whatever the stain: masks overlap strongly
    ma, mb = _nuclear_mask(a), _nuclear_mask(b)
    assert (ma & mb).sum() / max((ma | mb).sum(), 1) > 0.7


@pytest.mark.parametrize("label", CLASSES)
def test_tiles_at_adjacent_origins_join_without_a_seam(label):
    """Four 64 px tiles painted at their origins equal one 128 px painting of the same field (structures are
    hashed from absolute coordinates); only pixel-scale grain (chromatin, necrotic granules) may differ."""
    rng = np.random.default_rng(0)
    kw = dict(stain=sample_stain(rng), field_seed=7, noise=0.0, **sample_attributes(label, rng))
    kw["mitoses"] = False
    whole = render_tissue(label, 128, 128, np.random.default_rng(1), origin=(1000, 500), **kw).astype(int)
    parts = np.zeros_like(whole)
    for oy in (0, 64):
        for ox in (0, 64):
            parts[oy:oy + 64, ox:ox + 64] = render_tissue(label, 64, 64, np.random.default_rng(2 + ox + oy),
                                                          origin=(1000 + ox, 500 + oy), **kw)
    diff = np.abs(whole - parts)
    if label in ("tumor", "necrosis"):  # grain differs; the blurred images (structures) agree
        import cv2

        smooth = np.abs(cv2.GaussianBlur(whole.astype(np.float32), (0, 0), 3)
                        - cv2.GaussianBlur(parts.astype(np.float32), (0, 0), 3))
        assert smooth.mean() < 4.0, smooth.mean()
    else:
        assert diff.mean() < 0.1 and (diff > 10).mean() < 0.002, (diff.mean(), (diff > 10).mean())
    other = render_tissue(label, 128, 128, np.random.default_rng(1), origin=(1000, 500),
                          **{**kw, "field_seed": 8}).astype(int)
    assert np.abs(whole - other).mean() > 3  # the field seed matters


def test_attributes_are_json_and_in_range():
    rng = np.random.default_rng(0)
    for label in CLASSES:
        for _ in range(20):
            attrs = sample_attributes(label, rng)
            json.dumps(attrs)
            assert 0 <= attrs["nuclear_density"] <= 1
            if label == "tumor":
                assert attrs["grade"] in (1, 2, 3) and isinstance(attrs["mitoses"], bool)
            else:
                assert attrs["grade"] is None and attrs["mitoses"] is False


def test_classes_are_separable_from_colour_histograms(tiny_tiles):
    """A linear model on colour histograms of the train split classifies held-out tiles: the label is in
    the pixels (and a VLM must look at the image to answer)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(img):
        return np.concatenate([np.histogram(img[..., k], bins=16, range=(0, 256))[0] / img[..., k].size
                               for k in range(3)])

    data = {}
    for split in ("train", "heldout"):
        rows = tiny_tiles.metadata(split)
        data[split] = (np.stack([features(tiny_tiles.load_image(r)) for r in rows]), [r["label"] for r in rows])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(*data["train"])
    accuracy = clf.score(*data["heldout"])
    print(f"held-out accuracy of a colour-histogram logistic regression: {accuracy:.3f}")
    assert accuracy > 0.9


# --------------------------------------------------------------------------------------------------- text


def test_yes_no_answers_are_balanced(tiny_tiles):
    for split in ("train", "heldout"):
        qs = tiny_tiles.questions(split)
        yes_no = [q for q in qs if q["answer"] in ("yes", "no")]
        share = Counter(q["answer"] for q in yes_no)["yes"] / len(yes_no)
        assert abs(share - 0.5) <= 0.02, (split, share)
        for category in ("tissue_yes_no", "mitoses_yes_no"):
            cat = [q["answer"] for q in yes_no if q["category"] == category]
            assert cat and abs(cat.count("yes") / len(cat) - 0.5) <= 0.05, (split, category)


def test_choice_answers_point_at_the_true_class(tiny_tiles):
    qs = [q for q in tiny_tiles.questions("train") if q["category"] == "tissue_choice"]
    letters = Counter()
    for q in qs:
        options = dict(re.findall(r"([A-D])\) (\w+)", q["text"]))
        assert len(options) == 4 and options[q["answer"]] == q["label"], q
        letters[q["answer"]] += 1
    assert all(letters[L] >= len(qs) / 8 for L in "ABCD"), letters  # no letter bias to exploit


def test_llava_json_contract(tiny_tiles):
    for split in ("train", "heldout"):
        records = tiny_tiles.llava(split)
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids))
        assert {r["kind"] for r in records} == {"caption", "qa"}
        for r in records:
            assert (tiny_tiles.root / r["image"]).is_file() and r["label"] in CLASSES
            conv = r["conversations"]
            assert len(conv) >= 2 and len(conv) % 2 == 0
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert conv[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in conv) == 1
            assert all(isinstance(t["value"], str) and t["value"] for t in conv)


def test_question_files_contract_and_no_leak(tiny_tiles):
    meta = {r["image"]: r for r in tiny_tiles.metadata()}
    for split in ("train", "heldout"):
        qs = tiny_tiles.questions(split)
        assert len({q["question_id"] for q in qs}) == len(qs)
        for q in qs:
            assert {"question_id", "image", "text", "answer", "answer_type", "category", "label"} <= set(q)
            assert q["answer_type"] in ("CLOSED", "OPEN")
            if q["answer_type"] == "CLOSED":
                assert q["answer"] in ("yes", "no", "A", "B", "C", "D")
            assert meta[q["image"]]["split"] == split and meta[q["image"]]["label"] == q["label"]
            if q["category"] == "mitoses_yes_no":
                assert (q["answer"] == "yes") == meta[q["image"]]["attributes"]["mitoses"]
            if q["category"] == "tissue_open":
                assert q["answer"] == q["label"]
    n_train, n_heldout = split_sizes(40, 0.25)
    assert Counter(r["split"] for r in meta.values()) == {"train": 6 * n_train, "heldout": 6 * n_heldout}


def test_captions_state_the_ground_truth():
    rng = np.random.default_rng(0)
    for _ in range(30):
        attrs = sample_attributes("tumor", rng)
        caption = caption_for("tumor", attrs, rng)
        assert f"grade {attrs['grade']}" in caption
        assert ("Mitotic figures are present" in caption) == attrs["mitoses"]
    captions = {caption_for("stroma", sample_attributes("stroma", rng), rng) for _ in range(30)}
    assert len(captions) > 10  # varied templates
    qs = questions_for("adipose", sample_attributes("adipose", rng), rng, yes=False)
    assert qs[0]["answer"] == "no" and "adipose" not in qs[0]["text"]


def test_report_for_slide_states_diagnosis_and_composition():
    text = report_for_slide("invasive carcinoma", {"stroma": 0.3, "tumor": 0.55, "necrosis": 0.14,
                                                   "adipose": 0.01},
                            np.random.default_rng(0), attributes={"tumor": {"grade": 3, "mitoses": True}})
    assert text.startswith("Diagnosis: invasive carcinoma.")
    assert text.index("tumor (55%)") < text.index("stroma (30%)") < text.index("necrosis (14%)")
    assert "adipose" not in text.lower()
    assert "grade 3; mitotic figures are present" in text


# --------------------------------------------------------------------------------------------------- folder


def test_same_seed_same_bytes_other_seed_other_tiles(tmp_path):
    cfg = SyntheticConfig(tile_size=32, tiles_per_class=4)
    a = ensure_tile_dataset(tmp_path / "a", cfg, seed=1, progress=False)
    b = ensure_tile_dataset(tmp_path / "b", cfg, seed=1, progress=False, workers=2)  # processes: same files
    c = ensure_tile_dataset(tmp_path / "c", cfg, seed=2, progress=False)
    assert a.paths["metadata"].read_text() == b.paths["metadata"].read_text()
    assert a.paths["train_llava"].read_text() == b.paths["train_llava"].read_text()
    assert a.paths["heldout_questions"].read_text() == b.paths["heldout_questions"].read_text()
    row = a.metadata()[0]
    assert (a.root / row["image"]).read_bytes() == (b.root / row["image"]).read_bytes()
    assert (a.root / row["image"]).read_bytes() != (c.root / row["image"]).read_bytes()


def test_reuses_complete_folder_and_rebuilds_incomplete_one(tmp_path):
    cfg = SyntheticConfig(tile_size=32, tiles_per_class=3)
    ds = ensure_tile_dataset(tmp_path, cfg, seed=0, progress=False)
    image = ds.root / ds.metadata()[0]["image"]
    original = image.read_bytes()
    stamp = image.stat().st_mtime_ns
    ensure_tile_dataset(tmp_path, cfg, seed=0, progress=False)  # complete: nothing rewritten
    assert image.stat().st_mtime_ns == stamp

    image.write_bytes(b"torn")  # a crash mid-build: no done.json, a broken image
    ds.paths["done"].unlink()
    ds = ensure_tile_dataset(tmp_path, cfg, seed=0, progress=False)
    assert image.read_bytes() == original and ds.paths["done"].exists()

    ds.paths["done"].write_text("{torn")  # a corrupt marker counts as incomplete
    image.write_bytes(b"torn")
    ds = ensure_tile_dataset(tmp_path, cfg, seed=0, progress=False)
    assert image.read_bytes() == original

    bigger = cfg.replace(tiles_per_class=4)  # other parameters: rebuilt, old files gone
    ds = ensure_tile_dataset(tmp_path, bigger, seed=0, progress=False)
    assert len(ds.metadata()) == 24 and len(list(ds.paths["images"].glob("*.png"))) == 24


@pytest.mark.parametrize("size", [224])
def test_larger_tiles(tmp_path, size):
    ds = ensure_tile_dataset(tmp_path, SyntheticConfig(tile_size=size, tiles_per_class=2), seed=0,
                             progress=False)
    assert ds.load_image(ds.metadata()[0]).shape == (size, size, 3)


def test_bad_files_give_one_line_errors_naming_them(tmp_path):
    from pathkit.io import PathkitError

    ds = TileDataset.at(tmp_path)
    with pytest.raises(PathkitError, match="missing.png"):
        ds.load_image({"image": "images/missing.png"})
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(PathkitError, match="bad.png: cannot read image"):
        ds.load_image({"image": "images/bad.png"})
    ds.paths["metadata"].write_text('{"id": "a"}\n{broken\n')
    with pytest.raises(PathkitError, match=r"metadata.jsonl:2:\d+: invalid JSON"):
        ds.metadata()


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_synth_tiles(tmp_path):
    from pathkit.cli import app

    result = CliRunner().invoke(app, ["synth", "tiles", "--out", str(tmp_path), "--size", "32",
                                      "--per-class", "2"])
    assert result.exit_code == 0, result.output
    assert len(read := (tmp_path / "metadata.jsonl").read_text().splitlines()) == 12, read
    assert (tmp_path / "done.json").exists()


def test_cli_bad_input_is_one_line_error(tmp_path):
    exe = Path(sys.executable).parent / "pathkit"
    proc = subprocess.run([str(exe), "synth", "tiles", "--out", str(tmp_path), "--size", "8"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "tile_size" in lines[0]


def test_cli_synth_video(tmp_path):
    pytest.importorskip("pathkit.synthetic.video")
    from pathkit.cli import app

    out = tmp_path / "lecture.mp4"
    result = CliRunner().invoke(app, ["synth", "video", str(out), "--seconds", "3", "--fps", "5",
                                      "--width", "128", "--height", "96"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and out.with_suffix(".vtt").exists() and out.with_suffix(".truth.json").exists()


def test_cli_synth_slide(tmp_path):
    pytest.importorskip("pathkit.synthetic.slides")
    from pathkit.cli import app

    out = tmp_path / "slide.tiff"
    result = CliRunner().invoke(app, ["synth", "slide", str(out), "--width", "512", "--height", "512"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


def test_eval_scorer_reads_our_answers_and_constant_guessing_is_at_chance(tiny_tiles):
    """pathkit.eval's closed-set rule parses the ground truths, and a model that ignores the image (always
    "yes", always "A") scores chance: 0.5 on yes/no, about 0.25 on four options."""
    metrics = pytest.importorskip("pathkit.eval.metrics")
    qs = [q for q in tiny_tiles.questions("heldout") if q["answer_type"] == "CLOSED"]
    assert all(metrics.closed_correct(q["answer"], q["answer"]) for q in qs)
    yes_no = [q["answer"] for q in qs if q["answer"] in ("yes", "no")]
    letters = [q["answer"] for q in qs if q["answer"] in "ABCD"]
    assert metrics.closed_accuracy(["yes"] * len(yes_no), yes_no) == pytest.approx(0.5, abs=0.02)
    assert metrics.closed_accuracy(["no"] * len(yes_no), yes_no) == pytest.approx(0.5, abs=0.02)
    assert 0.1 <= metrics.closed_accuracy(["A"] * len(letters), letters) <= 0.45


def test_mitoses_do_not_predict_the_tissue_answer(tiny_tiles):
    """No shortcut between questions: on tumour tiles, having mitoses says nothing about whether the tissue
    yes/no question is answered yes."""
    meta = {r["image"]: r for r in tiny_tiles.metadata()}
    pairs = [(meta[q["image"]]["attributes"]["mitoses"], q["answer"] == "yes")
             for split in ("train", "heldout") for q in tiny_tiles.questions(split)
             if q["category"] == "tissue_yes_no" and q["label"] == "tumor"]
    with_m = [yes for m, yes in pairs if m]
    without = [yes for m, yes in pairs if not m]
    assert abs(np.mean(with_m) - np.mean(without)) < 0.15, (np.mean(with_m), np.mean(without))


def test_open_answers_are_class_specific(tiny_tiles):
    from pathkit.synthetic.text import MORPHOLOGY

    for q in tiny_tiles.questions("heldout"):
        if q["category"] == "morphology_open":
            assert q["answer"] in MORPHOLOGY[q["label"]]
        if q["category"] == "grade_open":
            assert re.fullmatch(r"grade [123]", q["answer"])


def test_gallery_figures(tiny_tiles):
    import matplotlib

    matplotlib.use("Agg")
    from pathkit.synthetic.gallery import CLASS_COLOURS, label_colours, qa_examples, tile_gallery

    labels = np.array([[0, 1], [3, 6]], np.uint8)
    rgb = label_colours(labels)
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[0, 1]) == (214, 39, 40)  # tumor red
    assert len(CLASS_COLOURS) == len(CLASSES)
    fig = tile_gallery(tiny_tiles, per_class=2)
    assert len(fig.axes) == len(CLASSES) * 3
    assert {q["category"] for q in qa_examples(tiny_tiles)} >= {"tissue_yes_no", "tissue_choice", "tissue_open"}
