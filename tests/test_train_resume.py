"""A stage killed mid-epoch and restarted continues exactly: same next-step loss, same final weights."""

from __future__ import annotations

import pytest

from pathkit.config import Config
from pathkit.io import read_json, read_jsonl
from pathkit.train.recipes import DataSpec, Recipe, Stage
from pathkit.train.runner import run_recipe
from pathkit.workdir import tutorial_data


def _recipe() -> Recipe:
    # 24 conversations, batch 4, accumulation 2: 6 batches = 3 optimiser steps per epoch, 2 epochs.
    stage = Stage(name="instruct", data=DataSpec(source="tiles", format="instruct", max_samples=24),
                  trainable={"connector": True, "llm": True}, lr=3e-3, epochs=2, batch_size=4, grad_accum=2,
                  warmup_ratio=0.2)
    return Recipe(name="resume_check", vision="image", stages=(stage,), config={"llm.lora_r": 0})


@pytest.mark.slow
def test_resume_mid_epoch_gives_the_uninterrupted_losses_and_weights(tmp_path):
    cfg = Config.from_name("tiny")
    recipe = _recipe()
    data = tutorial_data(recipe, cfg, tmp_path / "data")["train"]
    straight = run_recipe(recipe, cfg, tmp_path / "straight", data)
    assert "interrupted" not in straight
    expected = read_jsonl(tmp_path / "straight" / "instruct" / "losses.jsonl")
    assert [r["step"] for r in expected] == list(range(6))

    out = tmp_path / "killed"
    first = run_recipe(recipe, cfg, out, data, stop_after_steps=2)
    assert first["interrupted"] == {"stage": "instruct", "after_steps": 2}
    assert (out / "instruct" / "checkpoints" / "last.ckpt").exists()
    assert not (out / "instruct" / "model").exists()
    second = run_recipe(recipe, cfg, out, data)
    assert second["stages"]["instruct"]["resumed_from"].endswith("last.ckpt")
    resumed = read_jsonl(out / "instruct" / "losses.jsonl")
    assert [r["step"] for r in resumed] == list(range(6))
    # step 2 is the first step after the restart: mid-epoch (batches 5-6 of 6), with optimiser moments,
    # scheduler position, data order and RNG all restored, it must match the uninterrupted run
    for a, b in zip(expected, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    assert resumed[2]["loss"] != pytest.approx(resumed[1]["loss"])  # the test looks at distinct steps

    from safetensors.torch import load_file

    w1 = load_file(str(tmp_path / "straight" / "instruct" / "model" / "model.safetensors"))
    w2 = load_file(str(out / "instruct" / "model" / "model.safetensors"))
    assert w1.keys() == w2.keys() and len(w1) > 0
    for k in w1:
        assert (w1[k] - w2[k]).abs().max().item() < 1e-5, k
    # a finished stage is reused, not retrained
    third = run_recipe(recipe, cfg, out, data)
    assert third["stages"]["instruct"].get("reused") is True
    assert read_json(out / "summary.json")["stages"]["instruct"]["reused"] is True
