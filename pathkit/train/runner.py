"""``run_recipe``: train every stage of a recipe in order on its training file, checkpoint, resume, summarise.

Training reads only files: each stage gets a LLaVA JSON/JSONL file (``train_data``: one file for every stage,
or ``{stage: file}``; :func:`pathkit.workdir.tutorial_data` writes the tutorial's), validated as a whole before
the first stage, and takes its view of the records (:mod:`pathkit.train.records`). This module keeps the stage
loop, the trainer and model building: for each stage it wraps the model in the stage's Lightning module and fits
it with a Lightning ``Trainer`` (bf16-mixed on a GPU, 32-true on CPU, gradient accumulation, gradient
clipping, any Lightning strategy: ``cfg.train.strategy`` = ``ddp``, ``fsdp``, ...). Outputs::

    out_dir/<stage>/checkpoints/last.ckpt   every ``checkpoint_every`` optimiser steps (model, optimiser,
                                            scheduler, data position, RNG): a restart continues mid-stage
    out_dir/<stage>/losses.jsonl            one row per optimiser step: step, loss, lr, samples/s, tokens/s
    out_dir/<stage>/logs/                   CSV and TensorBoard logs
    out_dir/<stage>/model/                  VisionLanguageModel.save_pretrained (or the contrastive towers)
    out_dir/<stage>/stage_summary.json      final train loss, samples/s, tokens/s, trainable parameters, time
    out_dir/bad_records.jsonl               with ``skip_bad_records``: the records left out, one problem each
    out_dir/summary.json                    per stage, train_seconds, wall_seconds (evaluation adds its scores:
                                            :func:`pathkit.eval.recipe_run.train_and_evaluate`)

Stage N+1 starts from stage N's model (in memory, or from ``out_dir/<N>/model`` when stage N finished in an
earlier run). A stage whose ``model/`` exists is skipped on restart; a stage with ``last.ckpt`` resumes there.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from pathkit.config import Config
from pathkit.io import PathkitError, atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from pathkit.models.vlm import VisionLanguageModel
from pathkit.train.checkpointing import BestWeights, LastCheckpoint
from pathkit.train.contrastive_stage import run_contrastive_stage
from pathkit.train.data import (
    ConsumedBatches,
    ConversationDataset,
    VLMDataModule,
    image_loader_for,
    split_validation,
)
from pathkit.train.recipes import Recipe, Stage
from pathkit.train.records import (
    check_stage_sources,
    heldout_records,
    read_stage_files,
    stage_files,
    stage_records,
)
from pathkit.train.schedule import optimizer_steps
from pathkit.train.strategies import full_state_dict, is_fsdp, make_strategy
from pathkit.train.vlm_module import VLMModule, count_trainable


def stage_config(cfg: Config, recipe: Recipe, stage: Stage) -> Config:
    """The Config a stage runs with: the preset, then the recipe's overrides, then the stage's."""
    changes = {**recipe.config, **stage.config}
    return cfg.override(changes) if changes else cfg


def precision_for(cfg: Config) -> str:
    """bf16-mixed (or what the config says) on a GPU; 32-true on CPU where bf16 autocast is slow."""
    if cfg.train.accelerator == "cpu" or not torch.cuda.is_available():
        return "32-true"
    return cfg.train.precision


# ------------------------------------------------------------------------------------------------ callbacks


def _callbacks(stage_dir: Path, checkpoint_every: int, stop_after_steps: int | None):
    (stage_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return [ConsumedBatches(), LastCheckpoint(stage_dir / "checkpoints" / "last.ckpt", checkpoint_every,
                                              stop_after_steps)]


def _loggers(stage_dir: Path):
    loggers = [CSVLogger(str(stage_dir), name="logs", version="csv")]
    try:
        loggers.append(TensorBoardLogger(str(stage_dir), name="logs", version="tensorboard"))
    except ModuleNotFoundError:  # tensorboard is a dependency; tolerate a trimmed install
        pass
    return loggers


def make_trainer(cfg: Config, stage: Stage, stage_dir: Path, total_steps: int, checkpoint_every: int,
                 stop_after_steps: int | None, progress: bool, extra_callbacks: list | None = None):
    accelerator = cfg.train.accelerator
    validate = stage.val_fraction > 0
    return L.Trainer(
        max_epochs=stage.epochs, max_steps=total_steps, accumulate_grad_batches=stage.grad_accum,
        gradient_clip_val=stage.grad_clip or None, precision=precision_for(cfg), accelerator=accelerator,
        devices=cfg.train.devices, strategy=make_strategy(cfg.train.strategy, accelerator), logger=_loggers(stage_dir),
        callbacks=_callbacks(stage_dir, checkpoint_every, stop_after_steps) + list(extra_callbacks or []),
        enable_checkpointing=False, limit_val_batches=1.0 if validate else 0, check_val_every_n_epoch=1,
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(cfg.train.log_every_n_steps, total_steps)),
        use_distributed_sampler=False, default_root_dir=str(stage_dir))


# ------------------------------------------------------------------------------------------------ stages


def _save_dir_atomically(save, final: Path) -> None:
    """``save(tmp_dir)`` then rename onto ``final`` (a folder exists under its name only when complete)."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _stage_summary(module, stage: Stage, seconds: float, model) -> dict[str, Any]:
    rows = module.step_losses
    tail = rows[-max(1, len(rows) // 10):] if rows else []
    steady = rows[1:] if len(rows) > 1 else rows  # the first step includes warm-up work
    trainable, total = count_trainable(model)
    return {
        "stage": stage.name, "kind": stage.kind, "trainable": stage.trainable_parts, "steps": len(rows),
        "first_train_loss": rows[0]["loss"] if rows else None,
        "final_train_loss": sum(r["loss"] for r in tail) / len(tail) if tail else None,
        "samples_per_s": _median([r["samples_per_s"] for r in steady]),
        "tokens_per_s": _median([r["tokens_per_s"] for r in steady]),
        "trainable_params": trainable, "total_params": total, "seconds": round(seconds, 2),
    }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[len(values) // 2]


def run_vlm_stage(model, recipe: Recipe, stage: Stage, cfg: Config, records: list[dict[str, Any]], stage_dir: Path,
                  resume: bool, checkpoint_every: int, stop_after_steps: int | None, progress: bool,
                  unsharded=None):
    """Fit one VLM stage; returns ``(model, stage summary)`` (summary None when stopped early).

    ``unsharded``: builds a fresh model of the same structure; required under FSDP, where this rank's
    parameters are shards and the gathered weights are loaded into it for saving."""
    records, val_records = split_validation(records, stage.val_fraction, seed=cfg.seed)
    template = stage.data.template or cfg.llm.chat_template
    max_length = stage.max_length or cfg.llm.max_length
    load_image = image_loader_for(model, cfg)
    dataset, val_dataset = (ConversationDataset(rows, model.tokenizer, template, max_length, load_image=load_image,
                                                visual_token_count=model.visual_token_count) if rows else None
                            for rows in (records, val_records))
    truncated = dataset.count_truncated()
    if truncated:
        warnings.warn(f"stage {stage.name}: {truncated} of {len(records)} records are longer than "
                      f"model_max_length={max_length} tokens, their visual tokens counted, and are truncated",
                      stacklevel=2)
    datamodule = VLMDataModule(dataset, stage.batch_size, pad_token_id=model.tokenizer.pad_token_id,
                               seed=cfg.seed, num_workers=cfg.train.num_workers, val_dataset=val_dataset)
    best = BestWeights() if val_dataset is not None else None
    total_steps = optimizer_steps(datamodule.batches_per_epoch(_world_size(cfg)), stage.epochs, stage.grad_accum,
                                  stage.max_steps)
    module = VLMModule(model, stage, total_steps, loss_log=stage_dir / "losses.jsonl",
                       gradient_checkpointing=cfg.train.gradient_checkpointing)
    trainer = make_trainer(cfg, stage, stage_dir, total_steps, checkpoint_every, stop_after_steps, progress,
                           extra_callbacks=[best] if best else None)
    ckpt = stage_dir / "checkpoints" / "last.ckpt"
    if not (resume and ckpt.exists()):
        ckpt = None
        (stage_dir / "losses.jsonl").unlink(missing_ok=True)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    seconds = time.perf_counter() - t0
    if stop_after_steps is not None and trainer.global_step < total_steps:
        return model, None
    summary = _stage_summary(module, stage, seconds, model)
    summary.update(total_steps=total_steps, epochs=stage.epochs, records=len(records), truncated=truncated,
                   resumed_from=str(ckpt) if ckpt else None)
    if best is not None:
        summary.update(val_records=len(val_records), **best.summary())
    to_save = model
    if is_fsdp(trainer.strategy):  # this rank's parameters are shards: gather, load into an unsharded copy
        state = full_state_dict(trainer.strategy.model)
        if trainer.is_global_zero:
            to_save = unsharded()
            to_save.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
            to_save.trained_parts = set(model.trained_parts)  # what save_pretrained writes
    if trainer.is_global_zero:
        write_jsonl(stage_dir / "losses.jsonl", module.step_losses)  # the checkpoint's rows + this run's
        _save_dir_atomically(to_save.save_pretrained, stage_dir / "model")
        write_json(stage_dir / "stage_summary.json", summary)
    trainer.strategy.barrier("stage_saved")
    if is_fsdp(trainer.strategy):
        return None, summary  # sharded in place: the next stage (and the evaluation) reload the saved model
    return model, summary


def _world_size(cfg: Config) -> int:
    devices = cfg.train.devices
    if cfg.train.strategy in ("auto", "single_device") and devices in (1, "1", "auto"):
        return 1
    try:
        return int(devices)
    except (TypeError, ValueError):
        return 1


def build_vlm(cfg: Config, recipe: Recipe, stage: Stage, out_dir: Path, previous_dir: Path | None):
    """Stage N+1's model: stage N's saved model, else a fresh one (towers taken from earlier stages)."""
    if previous_dir is not None:
        return VisionLanguageModel.from_pretrained(previous_dir)
    overrides = {}
    for part, source in stage.init_from.items():
        tower = out_dir / source / "model"
        if part == "vision":
            overrides["encoder.name"] = str(tower / "image_encoder")
    model = VisionLanguageModel.from_config(cfg.override(overrides) if overrides else cfg, vision=recipe.vision)
    for part, source in stage.init_from.items():
        if part == "slide_encoder":
            _load_slide_encoder(model, out_dir / source / "model")
    return model


def _load_slide_encoder(model, tower_dir: Path) -> None:
    path = tower_dir / "slide_encoder.pt"
    target = getattr(model, "slide_encoder", None)
    if target is None or not path.exists():
        raise PathkitError(f"{path}: no slide encoder to initialise the VLM from (contrastive stage output)")
    target.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


# ------------------------------------------------------------------------------------------------ recipe


def run_recipe(recipe: Recipe, cfg: Config, out_dir: str | Path,
               train_data: str | Path | dict[str, str | Path] | None = None, *,
               image_folder: str | Path | None = None, skip_bad_records: bool = False, resume: bool = True,
               checkpoint_every: int = 20, stop_after_steps: int | None = None, progress: bool = False
               ) -> dict[str, Any]:
    """Train every stage of ``recipe`` in order on its training file, write ``summary.json``.

    Args:
        recipe: the stages (see :mod:`pathkit.train.recipes`).
        cfg: the preset Config; the recipe's and each stage's overrides are applied on top.
        out_dir: where stages, logs, checkpoints and the summary go.
        train_data: a LLaVA JSON/JSONL file for every stage, or ``{stage: file}``; stages not named use their
            ``DataSpec.path``.
        image_folder: where relative ``image`` paths resolve (LLaVA's ``--image_folder``; default each file's
            folder).
        skip_bad_records: train on a file's good records and list the bad ones in ``out_dir/bad_records.jsonl``
            (default: a bad record stops the run before training, naming each problem).
        resume: reuse finished stages and continue an interrupted stage from its ``last.ckpt``.
        checkpoint_every: optimiser steps between ``last.ckpt`` saves.
        stop_after_steps: stop the first unfinished stage after this many optimiser steps (simulates a kill;
            the summary then says ``interrupted``).
    Returns:
        the summary dict (also written to ``out_dir/summary.json``); ``summary["model_dir"]`` is the last VLM
        stage's saved model.
    """
    _cpu_threads(cfg)
    out_dir = Path(out_dir)
    files = stage_files(recipe, train_data)
    records_by_file = read_stage_files(files, image_folder, skip_bad_records, out_dir)
    check_stage_sources(recipe, files, records_by_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_run_dir(out_dir, recipe, cfg, resume)
    summary: dict[str, Any] = {"recipe": recipe.name, "preset": cfg.preset, "stages": {},
                               "train_data": {name: str(path) for name, path in files.items()}}
    t_start = time.perf_counter()
    model = None
    previous_dir: Path | None = None
    for stage in recipe.stages:
        scfg = stage_config(cfg, recipe, stage)
        L.seed_everything(scfg.seed, workers=True, verbose=False)
        stage_dir = out_dir / stage.name
        done = stage_dir / "stage_summary.json"
        records = stage_records(stage, records_by_file[files[stage.name]])
        if resume and done.exists() and (stage_dir / "model").exists():
            summary["stages"][stage.name] = {**read_json(done), "reused": True}
            if stage.kind == "vlm":
                model, previous_dir = None, stage_dir / "model"
            continue
        if stage.kind == "contrastive":
            heldout = heldout_records(stage, records_by_file[files[stage.name]])
            result = run_contrastive_stage(recipe, stage, scfg, records, stage_dir, resume=resume,
                                           progress=progress, checkpoint_every=checkpoint_every,
                                           stop_after_steps=stop_after_steps, heldout=heldout or None)
        else:
            if model is None:
                model = build_vlm(scfg, recipe, stage, out_dir, previous_dir)
            model, result = run_vlm_stage(
                model, recipe, stage, scfg, records, stage_dir, resume, checkpoint_every, stop_after_steps,
                progress, unsharded=lambda s=stage, c=scfg, p=previous_dir: build_vlm(c, recipe, s, out_dir, p))
            previous_dir = stage_dir / "model"
        if result is None:
            summary["interrupted"] = {"stage": stage.name, "after_steps": stop_after_steps}
            write_json(out_dir / "summary.json", summary)
            return summary
        summary["stages"][stage.name] = result
    # every stage's own training time (a reused stage keeps the seconds it took), and this call's wall time
    summary["train_seconds"] = round(sum(float(st.get("seconds") or 0.0) for st in summary["stages"].values()), 2)
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    summary["model_dir"] = str(previous_dir) if previous_dir is not None else None
    if _is_rank_zero():
        write_json(out_dir / "summary.json", summary)
    return summary


def final_vlm_config(cfg: Config, recipe: Recipe) -> Config:
    """The Config of the recipe's last VLM stage (what its model was built and is evaluated with)."""
    vlm = [s for s in recipe.stages if s.kind == "vlm"]
    return stage_config(cfg, recipe, vlm[-1]) if vlm else cfg


def _cpu_threads(cfg: Config) -> None:
    """One intra-op thread for the tiny preset on CPU (``PATHKIT_TORCH_THREADS`` overrides).

    Tiny models have 64-wide matrices: splitting them over threads gains nothing, and on a busy 2-core machine
    OpenMP threads that wait for descheduled peers made a tiny training step 4-5x slower (measured: 4 -> 20
    samples/s at load average 10)."""
    threads = os.environ.get("PATHKIT_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    elif cfg.preset == "tiny" and not torch.cuda.is_available():
        torch.set_num_threads(1)


def _claim_run_dir(out_dir: Path, recipe: Recipe, cfg: Config, resume: bool) -> None:
    """Record the recipe and config a run folder holds; refuse to resume a folder made with other settings.

    Finished stages are reused by name, so reusing them under a changed recipe or config would silently mix
    two experiments. ``resume=False`` retrains every stage and takes the folder over.
    """
    recipe_text, config_text = recipe.to_yaml(), cfg.to_yaml()
    recipe_path, config_path = out_dir / "recipe.yaml", out_dir / "config.yaml"
    if resume:
        for path, text in ((recipe_path, recipe_text), (config_path, config_text)):
            if path.exists() and path.read_text() != text:
                raise PathkitError(f"{path}: this run folder was made with a different {path.stem}; "
                                   "use a new --out, or resume=False to retrain it")
    atomic_write_text(recipe_path, recipe_text)
    atomic_write_text(config_path, config_text)


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def read_stage_losses(out_dir: str | Path, stage: str) -> list[dict[str, Any]]:
    """Rows of ``out_dir/<stage>/losses.jsonl`` (one per optimiser step)."""
    path = Path(out_dir) / stage / "losses.jsonl"
    return read_jsonl(path) if path.exists() else []
