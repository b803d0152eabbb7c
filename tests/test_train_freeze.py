"""Each stage's freeze policy trains exactly the parts it names, with the learning rates it names."""

from __future__ import annotations

import pytest

from pathkit.config import Config
from pathkit.train.recipes import Stage, get_recipe
from pathkit.train.vlm_module import VLMModule

PARTS = ("vision", "slide_encoder", "connector", "llm", "lora")


def _build(recipe_name: str):
    from pathkit.models.vlm import VisionLanguageModel

    recipe = get_recipe(recipe_name, "tiny")
    cfg = Config.from_name("tiny").override(recipe.config)
    return recipe, VisionLanguageModel.from_config(cfg, vision=recipe.vision)


def _trainable_by_part(model) -> dict[str, tuple[int, int]]:
    return {p: (sum(q.numel() for _, q in model.part_parameters(p) if q.requires_grad),
                sum(q.numel() for _, q in model.part_parameters(p))) for p in PARTS}


@pytest.mark.parametrize("recipe_name", ["quilt_llava", "pa_llava", "wsi_llava"])
def test_stage_policies_train_exactly_the_named_parts(recipe_name):
    recipe, model = _build(recipe_name)
    for stage in recipe.stages:
        if stage.kind != "vlm":
            continue
        module = VLMModule(model, stage, total_steps=10)
        counts = _trainable_by_part(model)
        for part, (trainable, total) in counts.items():
            if stage.trainable.get(part):
                assert total > 0, f"{stage.name}: part {part} has no parameters in this model"
                assert trainable == total, f"{stage.name}: {part} should train fully ({trainable}/{total})"
            else:
                assert trainable == 0, f"{stage.name}: {part} should be frozen ({trainable}/{total} trainable)"
        opt = module.configure_optimizers()["optimizer"]
        in_optimizer = sum(p.numel() for g in opt.param_groups for p in g["params"])
        assert in_optimizer == sum(t for t, _ in counts.values())
        base = {g["name"]: g["initial_lr"] for g in opt.param_groups}  # before the schedule's multiplier
        assert base["connector"] == pytest.approx(stage.projector_lr or stage.lr)
        for part in ("llm", "lora", "vision", "slide_encoder"):
            if part in base:
                assert base[part] == pytest.approx(stage.lr)


def test_quilt_stage_one_is_projector_only_and_stage_two_adds_the_llm():
    recipe, model = _build("quilt_llava")
    VLMModule(model, recipe.stage("alignment"), total_steps=1)
    one = _trainable_by_part(model)
    assert one["connector"][0] == one["connector"][1] > 0
    assert one["llm"][0] == 0 and one["vision"][0] == 0
    VLMModule(model, recipe.stage("instruct"), total_steps=1)
    two = _trainable_by_part(model)
    assert two["llm"][0] == two["llm"][1] > 0 and two["vision"][0] == 0


def test_weight_decay_skips_biases_and_norms():
    _, model = _build("quilt_llava")
    stage = Stage(name="s", trainable={"connector": True, "llm": True}, weight_decay=0.1)
    opt = VLMModule(model, stage, total_steps=5).configure_optimizers()["optimizer"]
    for group in opt.param_groups:
        dims = {p.ndim for p in group["params"]}
        assert (group["weight_decay"] == 0.1) == (dims == {2} or min(dims) >= 2)
