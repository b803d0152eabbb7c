"""What a sweep runs: a notebook, a grid of parameters, seeds, and how to execute the runs.

A sweep is written on the command line (``--grid KEY=V1,V2 --seeds 0,1``) or as YAML::

    notebook: notebooks/07_staged_patch_vlm.ipynb
    grid:
      llm.lora_r: [4, 8]
      vqa_tuning.lr: [1.0e-4, 3.0e-4]
    seeds: [0, 1]
    set: {preset: tiny}          # fixed for every run
    workers: 2
    engine: local                # or ray
    resources: {num_cpus: 1, num_gpus: 0}

Each grid point and seed is one :class:`RunPlan`. Its id is readable and a hash of its parameters, so the same
parameters always land in the same run folder: re-running a sweep finds what is already done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pathkit.io import PathkitError

ENGINES = ("local", "ray")
# Parameters the runner fills in for every run; they locate a run, they are not what a run *is*.
RUN_PATHS = ("workdir", "figures_dir", "run_dir")


def parse_value(text: str) -> Any:
    """A command-line value: int, float (``1e-4`` too), true/false/none, else the string itself."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


def parse_grid(items: list[str] | None) -> dict[str, list[Any]]:
    """``["llm.lora_r=4,8", "*.lr=1e-4,3e-4"]`` -> ``{"llm.lora_r": [4, 8], "*.lr": [0.0001, 0.0003]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise PathkitError(f"--grid {item!r}: expected KEY=V1,V2,...")
        grid[key.strip()] = [parse_value(v) for v in raw.split(",") if v.strip()]
    return grid


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["preset=tiny"]`` -> ``{"preset": "tiny"}``: parameters fixed for every run."""
    fixed: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PathkitError(f"--set {item!r}: expected KEY=VALUE")
        fixed[key.strip()] = parse_value(raw)
    return fixed


def parse_seeds(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError as err:
        raise PathkitError(f"--seeds {text!r}: expected integers such as 0,1,2") from err


def run_id(params: dict[str, Any]) -> str:
    """Readable and unique: ``lr=0.001_seed=1-3f2a9c1b`` (the hash covers every parameter, exactly)."""
    canonical = json.dumps(params, sort_keys=True, default=str)
    digest = hashlib.sha1(canonical.encode()).hexdigest()[:8]
    words = "_".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(params.items()))
    slug = re.sub(r"[^A-Za-z0-9=._+-]+", "-", words)[:60].strip("-_.")
    return f"{slug}-{digest}" if slug else digest


@dataclass
class RunPlan:
    """One run: its id and its parameters (notebook parameters and config overrides, flat)."""

    run_id: str
    params: dict[str, Any]


@dataclass
class SweepSpec:
    notebook: Path
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    engine: str = "local"
    ray_address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    data_dir: Path | None = None  # shared prepared data (default OUT/data)
    timeout: float | None = None  # seconds per cell (papermill's execution_timeout)

    def __post_init__(self) -> None:
        self.notebook = Path(self.notebook)
        if not self.notebook.is_file():
            raise PathkitError(f"{self.notebook}: notebook not found")
        if self.engine not in ENGINES:
            raise PathkitError(f"--engine {self.engine!r}: must be one of {', '.join(ENGINES)}")
        if self.workers < 1:
            raise PathkitError(f"--workers {self.workers}: must be >= 1")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise PathkitError(f"grid[{key!r}]: expected a non-empty list of values, got {values!r}")
        if self.seeds and ("seed" in self.grid or "seed" in self.fixed):
            raise PathkitError("seeds: given both as --seeds and as a grid/set key 'seed'; use one")
        taken = [k for k in (*self.grid, *self.fixed) if k in RUN_PATHS]
        if taken:
            raise PathkitError(f"grid/set key {taken[0]!r}: the sweep sets it for every run (each run has its "
                               "own folder)")

    def runs(self) -> list[RunPlan]:
        """Every grid point x seed, in a stable order."""
        keys = list(self.grid)
        plans, seen = [], set()
        for values in itertools.product(*(self.grid[k] for k in keys)):
            for seed in self.seeds or [None]:
                params = {**self.fixed, **dict(zip(keys, values))}
                if seed is not None:
                    params["seed"] = seed
                rid = run_id(params)
                if rid not in seen:  # a value listed twice is one run
                    seen.add(rid)
                    plans.append(RunPlan(rid, params))
        return plans

    @classmethod
    def from_yaml(cls, path: str | Path, **cli: Any) -> SweepSpec:
        """Read a sweep YAML; command-line values that are given (not None/empty) win over the file's."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise PathkitError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
        if not isinstance(data, dict):
            raise PathkitError(f"{path}: a sweep YAML must be a mapping")
        known = {"notebook", "grid", "seeds", "set", "workers", "engine", "ray_address", "resources",
                 "data_dir", "timeout"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PathkitError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        if "notebook" not in data:
            raise PathkitError(f"{path}: missing key 'notebook'")
        resources = data.get("resources") or {}
        notebook = Path(data["notebook"])
        if not notebook.is_absolute() and not notebook.exists():
            notebook = path.parent / notebook  # relative to the YAML file
        grid = {str(k): (v if isinstance(v, list) else [v]) for k, v in (data.get("grid") or {}).items()}
        seeds = data.get("seeds") or []
        if isinstance(seeds, str | int):
            seeds = parse_seeds(str(seeds))
        kwargs = dict(notebook=notebook, grid=grid, seeds=[int(s) for s in seeds], fixed=dict(data.get("set") or {}),
                      workers=int(data.get("workers", 1)), engine=data.get("engine", "local"),
                      ray_address=data.get("ray_address"), num_cpus=float(resources.get("num_cpus", 1)),
                      num_gpus=float(resources.get("num_gpus", 0)),
                      data_dir=Path(data["data_dir"]) if data.get("data_dir") else None,
                      timeout=data.get("timeout"))
        for key, value in cli.items():
            if key == "grid" and value:
                kwargs["grid"] = {**kwargs["grid"], **value}
            elif key == "fixed" and value:
                kwargs["fixed"] = {**kwargs["fixed"], **value}
            elif value not in (None, [], {}):
                kwargs[key] = value
        return cls(**kwargs)
