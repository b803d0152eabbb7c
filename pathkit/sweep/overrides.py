"""``apply_overrides``: a notebook's ``overrides`` dict applied to its Config and the recipes it trains.

Keys are Config fields (``llm.lora_r``, ``clip.init_temperature``) or recipe stage fields (``vqa_tuning.lr``,
``*.lr`` for every stage). A key that matches neither the Config nor a stage of the given recipes is an error,
never silently ignored: a sweep over a key that changes nothing would report noise as a result.
"""

from __future__ import annotations

from typing import Any

from pathkit.config import Config
from pathkit.io import PathkitError
from pathkit.train.recipes import split_overrides, with_overrides


def apply_overrides(cfg: Config, overrides: dict[str, Any] | None, *recipes) -> tuple:
    """Return ``(cfg, *recipes)`` with ``overrides`` applied.

    Config keys change ``cfg`` and are folded into every recipe's own overrides (so they win over the recipe's
    settings, as ``pathkit train --set`` does); stage keys change the recipes that have that stage.
    """
    overrides = dict(overrides or {})
    if not isinstance(overrides, dict):
        raise PathkitError(f"overrides: expected a dict of key -> value, got {type(overrides).__name__}")
    stage_names = {s.name for r in recipes for s in r.stages}
    cfg_changes, stage_changes = split_overrides(overrides, recipes, where="overrides")
    if stage_changes and not recipes:
        raise PathkitError(f"overrides[{next(iter(stage_changes))!r}]: names a training stage, but this notebook "
                           f"trains no recipe; use a Config key ({', '.join(sorted(cfg.to_dict()))})")
    for key in cfg_changes:
        if key.split(".", 1)[0] not in cfg.to_dict():
            raise PathkitError(f"overrides[{key!r}]: not a Config section ({', '.join(sorted(cfg.to_dict()))}) "
                               f"nor a stage ({', '.join(sorted(stage_names)) or 'no recipe here'}, or '*')")
    if cfg_changes:
        cfg = cfg.override(cfg_changes)
    out = []
    for recipe in recipes:
        names = {s.name for s in recipe.stages}
        mine = {f"stage.{k}": v for k, v in stage_changes.items() if k.split(".", 1)[0] in names | {"*"}}
        _, recipe = with_overrides(cfg, recipe, {**{f"config.{k}": v for k, v in cfg_changes.items()}, **mine})
        out.append(recipe)
    return (cfg, *out)
