"""The paper recipes' optimiser settings reach the optimiser, its schedule and the Lightning Trainer.

Each recipe is built at the ``paper`` preset with tiny models standing in for the paper's (model names and sizes
overridden, every stage value kept), the way the runner builds a stage: ``stage_config``, the model, the stage's
Lightning module and ``make_trainer`` (``clip_trainer`` for contrastive stages). Nothing trains: the test reads
the optimiser's parameter groups, steps the scheduler through the whole stage, and reads the Trainer's
``accumulate_grad_batches``. The expected values are the seeds' own (shared/reference/seed-systems.md §0.4, §2.5,
§3.3, §4.3), written out here, not read from the recipes; the schedule is checked against transformers'
``get_cosine_with_min_lr_schedule_with_warmup`` (the cosine LLaVA's HF Trainer runs).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from pathkit.config import Config, ConfigError
from pathkit.train.recipes import Recipe, get_recipe, with_overrides
from pathkit.train.runner import make_trainer, stage_config

pytestmark = pytest.mark.usefixtures("one_thread")

HF = (0.9, 0.999)  # AdamW betas of the HF Trainer (LLaVA, WSI-LLaVA) and of PA-LLaVA's configs
CLIP = (0.9, 0.98)

# The seeds' settings per stage. parts: what trains (and so which parameter groups exist).
PAPER = {
    ("quilt_llava", "alignment"): dict(lr=1e-3, projector_lr=None, min_lr=0.0, weight_decay=0.0, warmup_ratio=0.03,
                                       betas=HF, batch_size=32, grad_accum=1, epochs=1, grad_clip=1.0,
                                       parts={"connector"}),
    ("quilt_llava", "instruct"): dict(lr=2e-5, projector_lr=None, min_lr=0.0, weight_decay=0.0, warmup_ratio=0.03,
                                      betas=HF, batch_size=16, grad_accum=1, epochs=1, grad_clip=1.0,
                                      parts={"connector", "llm"}),
    ("pa_llava", "clip"): dict(lr=1e-5, projector_lr=None, min_lr=0.0, weight_decay=0.1, warmup_ratio=0.1,
                               betas=CLIP, batch_size=256, grad_accum=1, epochs=10, grad_clip=1.0,
                               parts={"vision", "text"}),
    ("pa_llava", "domain_alignment"): dict(lr=1e-4, projector_lr=None, min_lr=0.0, weight_decay=0.0,
                                           warmup_ratio=0.03, betas=HF, batch_size=6, grad_accum=6, epochs=9,
                                           grad_clip=1.0, parts={"connector", "lora"}),
    ("pa_llava", "vqa_tuning"): dict(lr=2e-4, projector_lr=1e-4, min_lr=1e-6, weight_decay=0.0, warmup_ratio=0.03,
                                     betas=HF, batch_size=6, grad_accum=4, epochs=12, grad_clip=1.0,
                                     parts={"connector", "lora"}),
    ("wsi_llava", "wsi_text"): dict(lr=1e-4, projector_lr=None, min_lr=0.0, weight_decay=0.05, warmup_ratio=0.1,
                                    betas=CLIP, batch_size=32, grad_accum=1, epochs=10, grad_clip=1.0,
                                    parts={"slide_encoder", "text"}),
    ("wsi_llava", "feature_alignment"): dict(lr=1e-3, projector_lr=None, min_lr=0.0, weight_decay=0.0,
                                             warmup_ratio=0.03, betas=HF, batch_size=32, grad_accum=4, epochs=1,
                                             grad_clip=1.0, parts={"connector"}),
    ("wsi_llava", "instruction_tuning"): dict(lr=2e-4, projector_lr=2e-5, min_lr=0.0, weight_decay=0.0,
                                              warmup_ratio=0.03, betas=HF, batch_size=32, grad_accum=4, epochs=3,
                                              grad_clip=1.0, parts={"connector", "lora"}),
    ("huatuo_vision", "alignment_vqa"): dict(lr=1e-3, projector_lr=None, min_lr=0.0, weight_decay=0.0,
                                             warmup_ratio=0.03, betas=HF, batch_size=32, grad_accum=1, epochs=1,
                                             grad_clip=1.0, parts={"connector"}),
    ("huatuo_vision", "instruction_vqa"): dict(lr=2e-5, projector_lr=None, min_lr=0.0, weight_decay=0.0,
                                               warmup_ratio=0.03, betas=HF, batch_size=16, grad_accum=1, epochs=1,
                                               grad_clip=1.0, parts={"connector", "llm"}),
}

# Tiny stand-ins for the paper's models: names and sizes only, no optimiser or schedule value.
TINY_MODELS = {"encoder.name": "tiny", "encoder.image_size": 64, "llm.name": "tiny", "llm.max_length": 256,
               "llm.lora_r": 4, "llm.lora_alpha": 8}
TINY_SHAPES = {
    "quilt_llava": TINY_MODELS,
    "huatuo_vision": TINY_MODELS,
    # (pa_llava's stage named "clip" takes the "clip." keys: its CLIP keeps the paper's 512-wide joint space)
    "pa_llava": {**TINY_MODELS, "text_encoder.name": "tiny", "connector.num_tokens": 8,
                 "connector.qformer_layers": 1, "connector.tile_size": 64, "connector.max_tiles": 2},
    "wsi_llava": {**TINY_MODELS, "text_encoder.name": "tiny", "clip.embed_dim": 16, "connector.num_tokens": 8,
                  "longnet.in_dim": 64, "longnet.dim": 64, "longnet.depth": 1, "longnet.heads": 4,
                  "longnet.segment_lengths": [16, 64], "longnet.dilation_rates": [1, 2]},
}
RECORDS = 1000  # training records per stage, for the schedule's length


def _paper_at_tiny_shapes(name: str) -> tuple[Config, Recipe]:
    return with_overrides(Config.from_name("paper"), get_recipe(name, "paper"), TINY_SHAPES[name])


def _optimizer_steps(stage) -> int:
    """The runner's count: length-grouped batches of the records, ``grad_accum`` of them per optimiser step."""
    from pathkit.train.data import LengthGroupedBatchSampler
    from pathkit.train.schedule import optimizer_steps

    batches = len(LengthGroupedBatchSampler(list(range(RECORDS)), stage.batch_size))
    assert batches == math.ceil(RECORDS / stage.batch_size)
    return optimizer_steps(batches, stage.epochs, stage.grad_accum, stage.max_steps)


def _lr_trace(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The lr of every group before each of ``steps`` optimiser steps, then after the last one."""
    trace = [[g["lr"] for g in optimizer.param_groups]]
    optimizer.step()  # no gradients: changes nothing, keeps torch's step-order check quiet
    for _ in range(steps):
        scheduler.step()
        trace.append([g["lr"] for g in optimizer.param_groups])
    return trace


def _check_schedule(optimizer, scheduler, total: int, want: dict) -> None:
    """Linear warm-up over ``ceil(ratio * total)`` steps, then transformers' cosine to ``min_lr / lr`` of every
    group's base lr, ending there."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    base = [g["initial_lr"] for g in optimizer.param_groups]
    warmup = math.ceil(want["warmup_ratio"] * total)
    trace = _lr_trace(optimizer, scheduler, total)
    reference_opt = torch.optim.AdamW([{"params": [torch.zeros(1, requires_grad=True)], "lr": b} for b in base],
                                      lr=want["lr"])
    reference = get_cosine_with_min_lr_schedule_with_warmup(reference_opt, warmup, total,
                                                            min_lr_rate=want["min_lr"] / want["lr"])
    expected = _lr_trace(reference_opt, reference, total)
    for step in range(warmup, total + 1):  # HF's warm-up starts at lr 0; pathkit's first step already moves
        assert trace[step] == pytest.approx(expected[step], rel=1e-9, abs=1e-15), f"step {step}"
    for g, b in enumerate(base):
        ramp = [row[g] for row in trace[: warmup + 1]]
        assert all(a < c for a, c in zip(ramp, ramp[1:])) and ramp[0] > 0, "warm-up rises from above 0"
        assert ramp[-1] == pytest.approx(b), "warm-up ends at the base lr"
        assert trace[-1][g] == pytest.approx(b * want["min_lr"] / want["lr"], abs=1e-15), "ends at the floor"
    assert warmup == math.ceil(0.03 * total) or want["warmup_ratio"] != 0.03


@pytest.mark.parametrize("name,stage_name", sorted(PAPER))
def test_paper_recipe_at_tiny_shapes_keeps_the_seed_settings(name, stage_name):
    cfg, recipe = _paper_at_tiny_shapes(name)
    stage, want = recipe.stage(stage_name), PAPER[(name, stage_name)]
    assert stage == get_recipe(name, "paper").stage(stage_name)  # the tiny shapes left the stage alone
    for key, value in want.items():
        got = set(stage.trainable_parts) if key == "parts" else getattr(stage, key)
        assert got == (tuple(value) if key == "betas" else value), f"{name}.{stage_name}.{key}"
    assert cfg.encoder.name == "tiny" and cfg.llm.name == "tiny"


_MODELS: dict[str, torch.nn.Module] = {}


def _vlm(name: str, cfg: Config, recipe: Recipe, stage):
    """The runner's model for the recipe's VLM stages (built once per recipe; each module re-applies its freeze)."""
    from pathkit.models.vlm import VisionLanguageModel

    if name not in _MODELS:
        _MODELS[name] = VisionLanguageModel.from_config(stage_config(cfg, recipe, stage), vision=recipe.vision)
    return _MODELS[name]


VLM_STAGES = sorted(k for k in PAPER if not PAPER[k]["parts"] & {"text"})


@pytest.mark.parametrize("name,stage_name", VLM_STAGES)
def test_vlm_stage_reaches_optimizer_schedule_and_trainer(name, stage_name, tmp_path):
    from pathkit.train.vlm_module import VLMModule

    cfg, recipe = _paper_at_tiny_shapes(name)
    stage, want = recipe.stage(stage_name), PAPER[(name, stage_name)]
    scfg = stage_config(cfg, recipe, stage)
    model = _vlm(name, cfg, recipe, stage)
    total = _optimizer_steps(stage)
    module = VLMModule(model, stage, total, gradient_checkpointing=scfg.train.gradient_checkpointing)
    trainer = make_trainer(scfg, stage, tmp_path, total, checkpoint_every=20, stop_after_steps=None, progress=False)
    assert trainer.accumulate_grad_batches == want["grad_accum"]
    assert trainer.gradient_clip_val == want["grad_clip"]
    assert (trainer.max_steps, trainer.max_epochs) == (total, want["epochs"])
    per_epoch = math.ceil(math.ceil(RECORDS / want["batch_size"]) / want["grad_accum"])
    assert total == per_epoch * want["epochs"]

    conf = module.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    assert isinstance(optimizer, torch.optim.AdamW)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    by_part = {part: {id(p) for _, p in model.part_parameters(part)} for part in want["parts"]}
    assert trainable == set().union(*by_part.values()), "exactly the stage's parts train"
    seen: set[int] = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= by_part[group["name"]] and not ids & seen
        seen |= ids
        lr = want["projector_lr"] if group["name"] == "connector" and want["projector_lr"] else want["lr"]
        assert group["initial_lr"] == pytest.approx(lr), group["name"]
        assert group["weight_decay"] == want["weight_decay"] == 0.0
        assert tuple(group["betas"]) == want["betas"]
    assert seen == trainable, "every trainable parameter is in exactly one group"
    assert {g["name"] for g in optimizer.param_groups} == want["parts"]
    _check_schedule(optimizer, scheduler, total, want)


@pytest.mark.parametrize("name,stage_name", [("pa_llava", "clip"), ("wsi_llava", "wsi_text")])
def test_contrastive_stage_reaches_optimizer_schedule_and_trainer(name, stage_name, tmp_path):
    from pathkit.models.clip import build_clip
    from pathkit.train.contrastive import ContrastiveModule, clip_trainer
    from pathkit.train.contrastive_stage import clip_settings

    cfg, recipe = _paper_at_tiny_shapes(name)
    stage, want = recipe.stage(stage_name), PAPER[(name, stage_name)]
    scfg = stage_config(cfg, recipe, stage)
    settings = clip_settings(stage)
    for key in ("lr", "weight_decay", "betas", "warmup_ratio", "min_lr", "grad_accum", "grad_clip", "epochs",
                "batch_size"):
        assert settings[key] == (tuple(want[key]) if key == "betas" else want[key]), key
    total = _optimizer_steps(stage)
    model = build_clip(scfg, vision="image" if stage.data.source == "tiles" else "longnet")
    module = ContrastiveModule(model, total_steps=total, lr=settings["lr"], weight_decay=settings["weight_decay"],
                               betas=settings["betas"], warmup_ratio=settings["warmup_ratio"],
                               min_lr_ratio=settings["min_lr"] / settings["lr"])
    trainer = clip_trainer(scfg, tmp_path, epochs=settings["epochs"], max_steps=settings["max_steps"],
                           grad_accum=settings["grad_accum"], grad_clip=settings["grad_clip"])
    assert trainer.accumulate_grad_batches == want["grad_accum"] and trainer.gradient_clip_val == want["grad_clip"]
    conf = module.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == want["weight_decay"] > 0 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert all(tuple(g["betas"]) == want["betas"] and g["initial_lr"] == want["lr"] for g in optimizer.param_groups)
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    _check_schedule(optimizer, scheduler, total, want)


def test_stage_settings_override_reaches_the_trainer(tmp_path):
    cfg, recipe = with_overrides(Config.from_name("tiny"), get_recipe("quilt_llava", "tiny"),
                                 {"instruct.grad_accum": 3, "instruct.grad_clip": 0.5})
    stage = recipe.stage("instruct")
    trainer = make_trainer(stage_config(cfg, recipe, stage), stage, tmp_path, 10, 20, None, False)
    assert (trainer.accumulate_grad_batches, trainer.gradient_clip_val) == (3, 0.5)


@pytest.mark.parametrize("recipe_name,key,value,says", [
    ("quilt_llava", "train.lr", 1e-4, r"unknown field 'lr'; optimiser settings belong to each recipe stage"),
    ("quilt_llava", "train.grad_accum", 8, r"unknown field 'grad_accum'"),
    ("quilt_llava", "train.projector_lr", 2e-5, r"unknown field 'projector_lr'"),
    ("quilt_llava", "train.warmup_ratio", 0.1, r"unknown field 'warmup_ratio'"),
    ("quilt_llava", "longnet.depth", 4, r"'longnet.depth' changes nothing: recipe quilt_llava never reads"),
    ("quilt_llava", "clip.embed_dim", 32, r"'clip.embed_dim' changes nothing"),
    ("pa_llava", "video.analysis_fps", 2.0, r"'video.analysis_fps' changes nothing"),
    ("pa_llava", "clip.projector_lr", 1e-4, r"Stage\[clip\]\.projector_lr=0\.0001: contrastive stages never read"),
    ("pa_llava", "clip.trainable.lora", True, r"Stage\[clip\]\.trainable=.*\['lora'\]"),
    ("pa_llava", "clip.data.template", "plain", r"Stage\[clip\]\.data\.template='plain'"),
    ("pa_llava", "domain_alignment.trainable.text", True, r"Stage\[domain_alignment\]\.trainable\.text"),
    ("pa_llava", "vqa_tuning.init_from.vision", "clip", r"Stage\[vqa_tuning\]\.init_from\.vision='clip'"),
    ("wsi_llava", "instruction_tuning.trainable.vision", True, r"trainable\.vision.*has no vision"),
])
def test_an_override_that_changes_nothing_is_an_error_naming_it(recipe_name, key, value, says):
    with pytest.raises(ConfigError, match=says):
        with_overrides(Config.from_name("tiny"), get_recipe(recipe_name, "tiny"), {key: value})


def test_a_stage_config_key_that_changes_nothing_is_an_error_naming_it():
    data = get_recipe("huatuo_vision", "tiny").to_dict()
    data["stages"][0]["config"] = {"longnet.depth": 2}
    with pytest.raises(ConfigError, match=r"Stage\[alignment_vqa\]\.config: 'longnet.depth' changes nothing"):
        Recipe.from_dict(data)
    data["stages"][0]["config"] = {"llm.nope": 1}
    with pytest.raises(ConfigError, match=r"'llm.nope' is not a Config field"):
        Recipe.from_dict(data)


def test_train_command_refuses_a_dead_key_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pathkit.cli", "train", "quilt_llava", "--set", "train.grad_accum=8",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.grad_accum" in lines[0] and lines[0].startswith("error: ")
    assert not (tmp_path / "run").exists()
