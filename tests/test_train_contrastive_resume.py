"""A contrastive stage killed mid-epoch and restarted continues exactly: the same per-step losses and learning
rates as the uninterrupted run (model, optimiser, scheduler, data order and RNG restored), the same final weights."""

from __future__ import annotations

import pytest
import torch

from pathkit.config import Config
from pathkit.io import PathkitError, read_json, read_jsonl
from pathkit.models.clip import PathologyCLIP
from pathkit.train.contrastive import PairBatchSampler, train_clip
from pathkit.train.contrastive_stage import run_contrastive_stage
from pathkit.train.recipes import DataSpec, Recipe, Stage
from pathkit.train.records import read_training_file, stage_records
from pathkit.workdir import clip_pairs, tutorial_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path_factory.getbasetemp() / "pathkit_cache"))


def _cfg() -> Config:
    # 6 classes x 4 tiles, a quarter held out: 18 training pairs, batch 4 -> 4 batches (2 dropped) per epoch
    return Config.from_name("tiny").override({"synthetic.tiles_per_class": 4, "clip.embed_dim": 16})


def _stage() -> tuple[Recipe, Stage]:
    stage = Stage(name="clip", kind="contrastive", data=DataSpec(source="tiles", format="pairs"),
                  trainable={"vision": True, "text": True}, lr=3e-3, epochs=2, batch_size=4, weight_decay=0.1,
                  warmup_ratio=0.2)
    return Recipe(name="clip_resume", vision="image", stages=(stage,)), stage


def test_pair_sampler_resumes_at_the_next_batch_of_the_epoch():
    full = PairBatchSampler(18, 4, seed=3)
    full.set_epoch(1)
    batches = list(full)
    assert len(batches) == len(full) == 4 and all(len(b) == 4 for b in batches)
    assert len({i for b in batches for i in b}) == 16  # a permutation, the 2 left over dropped
    other_epoch = PairBatchSampler(18, 4, seed=3)
    assert list(other_epoch) != batches  # epoch 0 is shuffled differently
    resumed = PairBatchSampler(18, 4, seed=3)
    resumed.load_state_dict({"epoch": 1, "consumed": 3})
    resumed.set_epoch(1)  # Lightning sets the (same) epoch again on restart: the skip must survive it
    assert list(resumed) == batches[3:]
    shards = [list(PairBatchSampler(18, 4, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 2
    assert not {i for b in shards[0] for i in b} & {i for b in shards[1] for i in b}


@pytest.mark.slow
def test_contrastive_stage_resumes_mid_epoch_with_the_uninterrupted_losses_and_weights(tmp_path):
    cfg, (recipe, stage) = _cfg(), _stage()
    data = stage_records(stage, read_training_file(tutorial_data(recipe, cfg, tmp_path / "data")["train"][stage.name]))
    straight_dir, killed_dir = tmp_path / "straight" / "clip", tmp_path / "killed" / "clip"
    straight = run_contrastive_stage(recipe, stage, cfg, data, straight_dir, resume=False, checkpoint_every=2)
    assert straight is not None and straight["resumed_from"] is None
    expected = read_jsonl(straight_dir / "losses.jsonl")
    assert [r["step"] for r in expected] == list(range(8))

    # killed in epoch 0 after step 3 (batch 3 of 4), then again in epoch 1 after step 6 (batch 3 of 4)
    assert run_contrastive_stage(recipe, stage, cfg, data, killed_dir, stop_after_steps=3) is None
    assert (killed_dir / "checkpoints" / "last.ckpt").exists()
    assert not (killed_dir / "model").exists() and not (killed_dir / "metrics.json").exists()
    assert [r["step"] for r in read_jsonl(killed_dir / "losses.jsonl")] == [0, 1, 2]
    assert run_contrastive_stage(recipe, stage, cfg, data, killed_dir, stop_after_steps=6) is None
    assert [r["step"] for r in read_jsonl(killed_dir / "losses.jsonl")] == list(range(6))
    resumed_summary = run_contrastive_stage(recipe, stage, cfg, data, killed_dir)
    assert resumed_summary["resumed_from"].endswith("last.ckpt")
    resumed = read_jsonl(killed_dir / "losses.jsonl")
    assert [r["step"] for r in resumed] == list(range(8))
    # steps 3 and 6 are the first after a restart: with optimiser moments, scheduler position, the rest of the
    # epoch's shuffled batches and the RNG restored they match the uninterrupted run. Checked to fail when the data
    # position is not restored (the resumed epoch restarts at its first batch) and when the RNG is not restored.
    for a, b in zip(expected, resumed):
        for key in ("loss", "loss_contrastive", "loss_itm", "temperature"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    assert len({round(r["loss"], 6) for r in expected}) == 8  # the steps are distinct, the comparison means something

    w1 = PathologyCLIP.from_pretrained(straight_dir / "model").state_dict()
    w2 = PathologyCLIP.from_pretrained(killed_dir / "model").state_dict()
    assert w1.keys() == w2.keys() and len(w1) > 0
    for k in w1:
        assert (w1[k].float() - w2[k].float()).abs().max().item() < 1e-5, k
    last = torch.load(killed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 8  # the finished stage keeps its final checkpoint
    # what the finished stage needs is all there
    for name in ("model", "metrics.json", "stage_summary.json", "losses.jsonl"):
        assert (killed_dir / name).exists(), name
    assert read_json(killed_dir / "stage_summary.json")["steps"] == 8


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_from_other_settings_and_fresh_runs_ignore_it(tmp_path):
    cfg = _cfg()
    out = tmp_path / "clip"
    pairs, _ = clip_pairs(cfg, tmp_path)
    first = train_clip(cfg, out, pairs, epochs=1, batch_size=4, lr=3e-3, evaluate=False,
                       stop_after_steps=2)
    assert first["interrupted"] and (out / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(PathkitError, match="other settings"):
        train_clip(cfg, out, pairs, epochs=1, batch_size=4, lr=1e-3, evaluate=False, resume=True)
    fresh = train_clip(cfg, out, pairs, epochs=1, batch_size=4, lr=1e-3, evaluate=False)
    assert fresh["resumed_from"] is None and fresh["steps"] == 4
