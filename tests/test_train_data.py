"""Collator padding + label mask, length-grouped DDP sharding, mid-epoch resume of the sampler, schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pathkit.io import PathkitError
from pathkit.train.data import (
    IGNORE_INDEX,
    ConversationDataset,
    LengthGroupedBatchSampler,
    pad_collate,
)
from pathkit.train.records import BadRecordsError, read_training_file, stage_view
from pathkit.train.schedule import cosine_with_warmup, warmup_steps_for


@pytest.fixture(scope="module")
def tokenizer():
    from pathkit.models.llm import load_llm

    return load_llm("tiny")[1]


def _conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def test_collator_pads_dynamically_and_masks_all_but_answers(tokenizer):
    records = [{"id": "a", "conversations": _conv("Is this tumor?", "yes")},
               {"id": "b", "conversations": _conv("Describe the tissue in detail please.",
                                                  "Dense stroma with sparse elongated nuclei.")}]
    ds = ConversationDataset(records, tokenizer, "vicuna_v1", max_length=256)
    items = [ds[0], ds[1]]
    batch = pad_collate(tokenizer.pad_token_id)(items)
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (2, max(lengths))  # padded to the longest of THIS batch only
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        # the supervised tokens decode to exactly the answer (plus the template's end-of-answer token)
        labels = batch["labels"][i, :n]
        supervised = labels[labels != IGNORE_INDEX].tolist()
        text = tokenizer.decode(supervised, skip_special_tokens=True).strip()
        assert text == records[i]["conversations"][1]["value"]
        # and nothing of the question is supervised
        assert "tumor" not in tokenizer.decode(supervised) or i == 1


def test_plain_template_supervises_only_the_caption(tokenizer):
    recs = stage_view([{"id": "t", "image": "x.png", "conversations": _conv("<image>\nDescribe it.",
                                                                            "Sheets of atypical cells.")}],
                      "captions")
    assert recs[0]["conversations"][0]["value"].strip() == "<image>"
    ds = ConversationDataset(recs, tokenizer, "plain", max_length=64, load_image=lambda p: torch.zeros(3, 8, 8))
    item = ds[0]
    assert item["image"].shape == (3, 8, 8)
    sup = item["labels"][item["labels"] != IGNORE_INDEX].tolist()
    assert tokenizer.decode(sup).strip() == "Sheets of atypical cells."
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert item["input_ids"].tolist().count(image_id) == 1


def test_bad_records_name_the_record_and_field(tmp_path, tokenizer):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"id": "ok", "conversations": _conv("q", "a")}, {"id": "x", "image": "a.png"}]))
    with pytest.raises(BadRecordsError, match=r"bad.json: 1 bad record \(first: #1 id=x: conversations"):
        read_training_file(path)
    ds = ConversationDataset([{"id": "r7", "conversations": [{"from": "robot", "value": "hi"}]}], tokenizer,
                             "vicuna_v1", 64)
    with pytest.raises(PathkitError, match=r"record r7: .*'from'"):
        ds[0]


def test_length_grouped_sampler_covers_everything_once_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=203).tolist()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3, group=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(203 / 8)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(203))
    # padding waste is far below that of random batches
    def waste(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)
    random_batches = [list(range(203))[i:i + 8] for i in range(0, 203, 8)]
    assert waste(batches) < 0.5 * waste(random_batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order every epoch


def test_sampler_shards_ranks_disjointly_with_equal_counts():
    lengths = list(range(100))
    per_rank = [list(LengthGroupedBatchSampler(lengths, 4, seed=1, rank=r, world_size=3)) for r in range(3)]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1  # every rank takes the same number of steps (DDP would hang otherwise)
    seen = [set(i for b in bs for i in b) for bs in per_rank]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert all(len(b) == 4 for bs in per_rank for b in bs)


def test_sampler_resumes_at_the_next_batch():
    lengths = list(np.random.default_rng(1).integers(1, 50, size=64))
    full = LengthGroupedBatchSampler(lengths, 4, seed=5)
    full.set_epoch(2)
    expected = list(full)
    run = LengthGroupedBatchSampler(lengths, 4, seed=5)
    run.set_epoch(2)
    it = iter(run)
    for _ in range(6):  # the trainer finished six batches, then the process died
        next(it)
        run.consumed += 1
    state = run.state_dict()
    assert state == {"epoch": 2, "consumed": 6}
    fresh = LengthGroupedBatchSampler(lengths, 4, seed=5)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # Lightning sets the epoch again on restart: must not lose the position
    assert list(fresh) == expected[6:]
    fresh.set_epoch(3)  # next epoch starts from its first batch
    assert len(list(fresh)) == len(expected)


def test_cosine_schedule_with_warmup():
    total, warm = 100, warmup_steps_for(100, 0.03)
    assert warm == 3
    values = [cosine_with_warmup(s, total, warm, min_ratio=0.1) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.25) and values[2] == pytest.approx(0.75)
    assert values[3] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1)
    assert values[50] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 47 / 97)))
    assert all(a >= b for a, b in zip(values[3:], values[4:]))  # monotone after warm-up


def test_modality_grouping_keeps_images_and_text_apart_and_changes_nothing_for_one_modality():
    lengths = np.random.default_rng(0).integers(5, 200, size=53).tolist()
    modalities = [i % 5 != 0 for i in range(53)]  # every fifth record is text-only
    mixed = LengthGroupedBatchSampler(lengths, 4, seed=1, modalities=modalities)
    batches = list(mixed)
    assert sorted(i for b in batches for i in b) == list(range(53)) and len(mixed) == len(batches)
    assert all(len({modalities[i] for i in b}) == 1 for b in batches)  # never an image beside a text-only record
    # one modality: exactly the batches of the plain length-grouped sampler (the tutorial's numerics stay put)
    same = LengthGroupedBatchSampler(lengths, 4, seed=1, modalities=[True] * 53)
    assert list(same) == list(LengthGroupedBatchSampler(lengths, 4, seed=1))


def test_truncated_records_are_counted(tokenizer):
    short = {"id": "s", "conversations": _conv("Is this tumor?", "yes")}
    long = {"id": "l", "conversations": _conv("Describe it.", " ".join(["cells"] * 200))}
    ds = ConversationDataset([short, long, long], tokenizer, "vicuna_v1", max_length=64)
    assert ds.count_truncated() == 2
    assert len(ds[1]["input_ids"]) == 64  # and training cuts them at max_length


# ------------------------------------------------------------------------------------------------ truncation

def _tiny_vlm(recipe_name: str, stage_name: str):
    from pathkit.config import Config
    from pathkit.models.vlm import VisionLanguageModel
    from pathkit.train.recipes import get_recipe
    from pathkit.train.runner import stage_config

    recipe = get_recipe(recipe_name, "tiny")
    cfg = stage_config(Config.from_name("tiny"), recipe, recipe.stage(stage_name))
    torch.manual_seed(0)
    return VisionLanguageModel.from_config(cfg, vision=recipe.vision).eval(), cfg


def _visual_input(model, cfg, tmp_path: Path, tiles: int = 0) -> str:
    """A real PNG for an image model; a feature file of ``tiles`` tiles (pathkit's own .h5) for a slide model."""
    from PIL import Image

    from pathkit.wsi.features import write_features

    rng = np.random.default_rng(0)
    if not tiles:
        path = tmp_path / "tile.png"
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path)
        return str(path)
    coords = np.stack(np.meshgrid(np.arange(tiles) * 256, [0]), -1).reshape(-1, 2)[:tiles]
    path = tmp_path / "slide.h5"
    write_features(path, coords, {"mpp": 0.5, "patch_size": 256, "patch_size_level0": 256, "level": 0, "slide": "s",
                                     "encoder": "tiny"},
                   features=rng.normal(size=(tiles, cfg.longnet.in_dim)).astype(np.float32))
    return str(path)


@pytest.mark.parametrize(("recipe_name", "stage_name", "tiles"), [
    ("quilt_llava", "instruct", 0), ("pa_llava", "vqa_tuning", 0), ("wsi_llava", "instruction_tuning", 5),
    ("wsi_llava", "instruction_tuning", 300)])
def test_visual_token_count_is_what_the_model_splices_in(tmp_path, recipe_name, stage_name, tiles):
    from pathkit.train.data import image_loader_for

    model, cfg = _tiny_vlm(recipe_name, stage_name)
    visual = _visual_input(model, cfg, tmp_path, tiles)
    with torch.no_grad():
        if tiles:
            feats = ConversationDataset([], model.tokenizer, "plain", 8).load_features(visual)
            encoded = model.visual_tokens(slide_features=[feats["features"]], slide_coords=[feats["coords"]])
        else:
            encoded = model.visual_tokens(images=[image_loader_for(model, cfg)(visual)])
    assert model.visual_token_count(tiles or None) == encoded[0].shape[0]


@pytest.mark.parametrize(("recipe_name", "stage_name", "tiles"), [
    ("quilt_llava", "instruct", 0), ("wsi_llava", "instruction_tuning", 200)])
def test_truncation_counts_visual_tokens_and_cuts_where_llava_cuts_the_spliced_sequence(
        tmp_path, recipe_name, stage_name, tiles):
    """A record whose text and visual tokens just fit is kept whole; one token more and it is counted and cut:
    its spliced sequence equals the whole record's spliced sequence cut at max_length (LLaVA's
    ``prepare_inputs_labels_for_multimodal``), through the real tiny model."""
    from pathkit.train.data import image_loader_for

    model, cfg = _tiny_vlm(recipe_name, stage_name)
    visual = _visual_input(model, cfg, tmp_path, tiles)
    record = {"id": "r", "image": visual, "conversations": _conv("<image>\nDescribe it.", "cells " * 12)}
    load = image_loader_for(model, cfg) if not tiles else None
    whole = ConversationDataset([record], model.tokenizer, "vicuna_v1", 10_000, load_image=load,
                                visual_token_count=model.visual_token_count)
    total = whole.sequence_length(0)
    text = len(whole[0]["input_ids"])
    assert total == text - 1 + model.visual_token_count(tiles or None) > text + 4

    def spliced(item, max_length=None):
        batch = pad_collate(model.tokenizer.pad_token_id)([item])
        features = model.visual_tokens(batch.get("images"), batch.get("slide_features"), batch.get("slide_coords"))
        embeds, mask, labels, _ = model.splice(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                               features, max_length=max_length)
        return embeds[0], labels[0]

    with torch.no_grad():
        for max_length, truncated in ((total, 0), (total - 1, 1), (total - 7, 1)):
            ds = ConversationDataset([record], model.tokenizer, "vicuna_v1", max_length, load_image=load,
                                     visual_token_count=model.visual_token_count)
            assert ds.count_truncated() == truncated
            embeds, labels = spliced(ds[0])
            ref_embeds, ref_labels = spliced(whole[0], max_length=max_length)
            assert embeds.shape[0] == min(total, max_length)
            assert torch.equal(labels, ref_labels) and torch.allclose(embeds, ref_embeds)
        # text-only counting, as before, would miss it: the text alone is far under the limit
        text_only = ConversationDataset([record], model.tokenizer, "vicuna_v1", total - 1, load_image=load)
        assert text_only.count_truncated() == 0
