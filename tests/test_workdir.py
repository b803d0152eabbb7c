"""Shared data folders are safe: data seed apart from training seed, keyed folders, locked builds, files out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from pathkit.config import Config
from pathkit.io import read_json
from pathkit.synthetic.tiles import ensure_tile_dataset
from pathkit.train.recipes import get_recipe
from pathkit.workdir import tile_root, tutorial_data

SMALL = {"synthetic.tiles_per_class": 4}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATHKIT_TORCH_THREADS": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def test_data_seed_is_not_the_training_seed_and_each_set_has_its_own_folder(tmp_path):
    base = Config.from_name("tiny")
    assert tile_root(base, tmp_path) == tmp_path / "synthetic" / "tiles"  # shared with the notebooks
    assert tile_root(base.override({"seed": 5}), tmp_path) == tile_root(base, tmp_path)  # training seed only
    other = tile_root(base.override({"synthetic.seed": 5}), tmp_path)
    assert other != tile_root(base, tmp_path) and other.parent == tmp_path / "synthetic"
    assert tile_root(base.override({"synthetic.tile_size": 32}), tmp_path) not in (other, tile_root(base, tmp_path))


def _build(args):
    root, seed = args
    ds = ensure_tile_dataset(root, Config.from_name("tiny").override(SMALL).synthetic, seed=seed, progress=False)
    return sorted(p.name for p in (ds.root / "images").iterdir()), read_json(ds.paths["done"])["seed"]


def test_concurrent_builds_of_one_folder_build_it_once_and_never_half(tmp_path):
    root = tmp_path / "tiles"
    with ProcessPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(_build, [(root, 3)] * 3))
    assert all(r == results[0] for r in results) and results[0][1] == 3 and len(results[0][0]) == 24
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("tiles", ".tiles.lock")]
    assert leftovers == []  # no temporary build folders left behind


def test_tutorial_files_are_llava_files_the_trainer_reads(tmp_path):
    from pathkit.curate.llava_format import validate_llava_file

    cfg = Config.from_name("tiny").override(SMALL)
    pa = get_recipe("pa_llava", "tiny")
    files = tutorial_data(pa, cfg, tmp_path)
    train = files["train"]
    assert len({train["clip"], train["domain_alignment"], train["vqa_tuning"]}) == 3
    pairs = json.loads(train["clip"].read_text())
    assert [r["id"] for r in pairs if r.get("split") != "heldout"] == [
        r["id"] for r in json.loads(train["domain_alignment"].read_text())]  # the same training tiles
    assert len([r for r in pairs if r.get("split") == "heldout"]) == 6  # one held-out tile per class
    for path in set(train.values()):
        assert validate_llava_file(path) > 0
    records = json.loads(train["vqa_tuning"].read_text())
    closed = [r for r in records if r.get("kind") == "closed"]
    assert len(closed) == 4 * 6 * 3  # extra_closed=4 per training tile (6 classes x 3 training tiles)
    assert all((train["vqa_tuning"].parent / r["image"]).is_file() for r in records)
    questions = [json.loads(line) for line in files["questions"].read_text().splitlines()]
    assert questions and all((files["questions"].parent / q["image"]).is_file() for q in questions)


@pytest.mark.slow
def test_two_concurrent_train_runs_with_other_seeds_share_one_data_folder(tmp_path):
    """Issue 19 §4: two runs, other training and data seeds, one --data folder: both finish, each on its set."""
    data = tmp_path / "data"
    procs = []
    for seed in (1, 2):
        cmd = [sys.executable, "-m", "pathkit.cli", "train", "quilt_llava", "--preset", "tiny", "--data", str(data),
               "--out", str(tmp_path / f"run{seed}"), "--no-progress", "--data-seed", str(seed),
               "--set", f"seed={seed}", "--set", "synthetic.tiles_per_class=4", "--set", "*.max_steps=1",
               "--set", "*.batch_size=4"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    roots = []
    for seed in (1, 2):
        summary = read_json(tmp_path / f"run{seed}" / "summary.json")
        root = Path(summary["train_data"]["instruct"]).parent
        roots.append(root)
        assert read_json(root / "done.json")["seed"] == seed  # the set this run asked for, not the other's
        assert summary["n_closed"] > 0 and Path(summary["eval_questions"]).parent == root
        assert f"seed: {seed}" in (tmp_path / f"run{seed}" / "config.yaml").read_text()
    assert roots[0] != roots[1] and roots[0].parent == roots[1].parent == data / "synthetic"
    a = json.loads((roots[0] / "train_llava.json").read_text())
    b = json.loads((roots[1] / "train_llava.json").read_text())
    assert [r["conversations"] for r in a] != [r["conversations"] for r in b]  # other data seed, other data
