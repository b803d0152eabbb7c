"""Recipes are data: YAML round trip, the seeds' settings at the paper preset, one-line errors, overrides."""

from __future__ import annotations

import pytest

from pathkit.config import Config, ConfigError
from pathkit.train.recipes import PRESETS, RECIPES, Recipe, Stage, get_recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("preset", PRESETS)
def test_recipe_round_trips_yaml_and_applies_to_config(name, preset, tmp_path):
    recipe = get_recipe(name, preset)
    path = tmp_path / "recipe.yaml"
    recipe.to_yaml(path)
    again = Recipe.from_yaml(path)
    assert again == recipe
    assert again.to_yaml() == recipe.to_yaml()
    cfg = Config.from_name(preset).override(recipe.config)  # every override names a real Config field
    for stage in recipe.stages:
        if stage.config:
            cfg.override(stage.config)


def test_paper_preset_carries_the_seed_settings():
    quilt = get_recipe("quilt_llava", "paper")
    align, instruct = quilt.stages
    assert align.trainable_parts == ("connector",) and align.data.template == "plain"
    assert (align.lr, align.batch_size, align.epochs, align.warmup_ratio, align.weight_decay) == (1e-3, 32, 1, 0.03, 0)
    assert instruct.trainable_parts == ("connector", "llm") and instruct.lr == 2e-5 and instruct.batch_size == 16

    pa = get_recipe("pa_llava", "paper")
    assert [s.name for s in pa.stages] == ["clip", "domain_alignment", "vqa_tuning"]
    assert pa.stages[0].kind == "contrastive" and pa.stages[1].init_from == {"vision": "clip"}
    dom, vqa = pa.stages[1], pa.stages[2]
    assert (dom.lr, dom.batch_size, dom.grad_accum, dom.epochs, dom.min_lr) == (1e-4, 6, 6, 9, 0.0)
    assert (vqa.lr, vqa.projector_lr, vqa.batch_size, vqa.grad_accum, vqa.epochs, vqa.min_lr) == \
        (2e-4, 1e-4, 6, 4, 12, 1e-6)
    assert dom.trainable_parts == vqa.trainable_parts == ("connector", "lora")
    cfg = Config.from_name("paper").override(pa.config)
    assert (cfg.llm.lora_r, cfg.llm.lora_alpha, cfg.connector.type, cfg.connector.num_tokens) == \
        (128, 256, "scale_invariant", 196)

    wsi = get_recipe("wsi_llava", "paper")
    ft = wsi.stage("instruction_tuning")
    assert (ft.lr, ft.projector_lr, ft.epochs, ft.batch_size, ft.grad_accum) == (2e-4, 2e-5, 3, 32, 4)
    assert wsi.stage("feature_alignment").trainable_parts == ("connector",)
    assert wsi.stage("wsi_text").trainable_parts == ("slide_encoder", "text")
    assert Config.from_name("paper").override(wsi.config).connector.num_tokens == 576

    huatuo = get_recipe("huatuo_vision", "paper")
    assert Config.from_name("paper").override(huatuo.config).llm.chat_template == "huatuo"


def test_freeze_policy_is_data_not_code():
    stage = get_recipe("pa_llava", "tiny").stage("vqa_tuning")
    policy = stage.freeze_policy()
    assert policy == {"vision": False, "connector": True, "llm": False, "lora": True, "slide_encoder": False,
                      "text": False}


def test_bad_recipes_fail_with_one_line_naming_the_field():
    with pytest.raises(ConfigError, match=r"Stage\[s\]\.trainable.*unknown part\(s\) \['projector'\]"):
        Stage(name="s", trainable={"projector": True})
    with pytest.raises(ConfigError, match=r"Stage\[s\]\.trainable.*trains nothing"):
        Stage(name="s", trainable={"connector": False})
    with pytest.raises(ConfigError, match=r"init_from\.vision.*earlier stage"):
        Recipe(name="r", stages=(Stage(name="a", init_from={"vision": "b"}), Stage(name="b")))
    with pytest.raises(ConfigError, match="must be one of"):
        get_recipe("llava_nonexistent")
    with pytest.raises(ConfigError, match=r"DataSpec.format='captionz'"):
        Stage(name="s", data={"format": "captionz"})


def test_override_stage_fields():
    recipe = get_recipe("quilt_llava", "tiny")
    changed = recipe.override({"instruct.lr": "1e-4", "*.epochs": 1, "alignment.data.max_samples": 8})
    assert changed.stage("instruct").lr == 1e-4
    assert all(s.epochs == 1 for s in changed.stages)
    assert changed.stage("alignment").data.max_samples == 8
    assert recipe.stage("instruct").lr != 1e-4  # the original is unchanged
    with pytest.raises(ConfigError, match="unknown field 'lrr'"):
        recipe.override({"instruct.lrr": 1})
    with pytest.raises(ConfigError, match="expected <stage>.<field>"):
        recipe.override({"nostage.lr": 1})


def test_set_wins_over_the_recipe_and_reaches_every_stage_config():
    from pathkit.config import Config
    from pathkit.train.recipes import with_overrides
    from pathkit.train.runner import stage_config

    recipe = get_recipe("pa_llava", "tiny")
    assert recipe.config["llm.lora_r"] == 16
    cfg, changed = with_overrides(Config.from_name("tiny"), recipe,
                                  {"llm.lora_r": 4, "seed": 7, "vqa_tuning.lr": 1e-4})
    assert changed.stage("vqa_tuning").lr == 1e-4 and changed.stage("clip").lr == recipe.stage("clip").lr
    for stage in changed.stages:  # the user's value, not the recipe's 16
        assert stage_config(cfg, changed, stage).llm.lora_r == 4
    assert stage_config(cfg, changed, changed.stages[0]).seed == 7
    assert "lora_r: 4" in changed.to_yaml()  # recorded in the run's recipe.yaml


def test_a_name_both_a_stage_and_a_config_section_is_read_unambiguously():
    """pa_llava has a stage ``clip`` and Config has a section ``clip``: the field decides, ``stage.`` /
    ``config.`` say it outright, and a key that fits neither reading is an error naming both."""
    from pathkit.sweep.overrides import apply_overrides
    from pathkit.train.recipes import with_overrides

    tiny, recipe = Config.from_name("tiny"), get_recipe("pa_llava", "tiny")
    assert "clip" in {s.name for s in recipe.stages} and hasattr(tiny, "clip")
    cfg, changed = with_overrides(tiny, recipe, {"clip.init_temperature": 0.2, "clip.lr": 3e-4})
    assert cfg.clip.init_temperature == 0.2 and changed.stage("clip").lr == 3e-4
    assert changed.stage("vqa_tuning").lr == recipe.stage("vqa_tuning").lr
    cfg, changed = with_overrides(tiny, recipe, {"config.clip.embed_dim": 32, "stage.clip.epochs": 3})
    assert cfg.clip.embed_dim == 32 and changed.stage("clip").epochs == 3
    assert changed.config["clip.embed_dim"] == 32  # recorded as a Config key, without the prefix
    with pytest.raises(ConfigError, match=r"'clip' is both a Config section and a stage, and 'nope' is a field "
                                          r"of neither .*init_temperature.*; write config\.clip\.nope or "
                                          r"stage\.clip\.nope"):
        with_overrides(tiny, recipe, {"clip.nope": 1})
    with pytest.raises(ConfigError, match="no stage 'nostage'"):
        with_overrides(tiny, recipe, {"stage.nostage.lr": 1})
    # notebooks' overrides read keys the same way
    cfg, changed = apply_overrides(tiny, {"clip.init_temperature": 0.3, "clip.lr": 2e-4}, recipe)
    assert cfg.clip.init_temperature == 0.3 and changed.stage("clip").lr == 2e-4


def test_train_command_help_and_bad_input():
    from typer.testing import CliRunner

    from pathkit.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "--preset" in result.output and "--set" in result.output
    result = runner.invoke(app, ["train", "no_such_recipe", "--out", "/tmp/pathkit_never_written"])
    assert result.exit_code != 0
    assert "recipe 'no_such_recipe': must be one of" in str(result.exception)
