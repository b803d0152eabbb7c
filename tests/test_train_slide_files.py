"""wsi_llava trains on slide feature files other tools wrote: CLAM, TRIDENT and WSI-Bench-style ``.pt`` tensors.

The fixtures follow each tool's published layout: CLAM's ``h5_files/<slide>.h5`` (``features`` + int32 ``coords``,
no attributes) beside ``patches/<slide>.h5`` (``coords`` with ``patch_size``, ``patch_level``, ``downsample``,
...); TRIDENT's ``features_<encoder>/<slide>.h5`` (attributes on ``coords``: ``patch_size``,
``patch_size_level0``, ``level0_magnification``, ``target_magnification``); a bare ``(N, D)`` tensor saved with
``torch.save`` (WSI-Bench, CLAM's ``pt_files``), which has no coordinates: the slide encoder then places its tiles
on a row-major grid (:func:`pathkit.train.data.coords_or_grid`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pathkit.train.data import FeatureLoader, coords_or_grid

DIM = 64  # the tiny wsi_llava recipe's LongNet input width (longnet.in_dim)
DIAGNOSES = ("lymphoma", "fibrosis")


def _clam(root: Path, name: str, feats: np.ndarray, coords: np.ndarray) -> Path:
    import h5py

    (root / "patches").mkdir(parents=True, exist_ok=True)
    (root / "h5_files").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "patches" / f"{name}.h5", "w") as fh:
        dset = fh.create_dataset("coords", data=coords.astype(np.int64))
        for key, value in {"patch_size": 256, "patch_level": 0, "downsample": [1.0, 1.0],
                           "downsampled_level_dim": [4096, 4096], "level_dim": [4096, 4096], "name": name,
                           "save_path": str(root / "patches")}.items():
            dset.attrs[key] = value
    with h5py.File(root / "h5_files" / f"{name}.h5", "w") as fh:
        fh.create_dataset("features", data=feats.astype(np.float32))
        fh.create_dataset("coords", data=coords.astype(np.int32))
    return root / "h5_files" / f"{name}.h5"


def _trident(root: Path, name: str, feats: np.ndarray, coords: np.ndarray) -> Path:
    import h5py

    folder = root / "20x_256px_0px_overlap" / "features_conch_v15"
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{name}.h5", "w") as fh:
        fh.create_dataset("features", data=feats.astype(np.float32))
        dset = fh.create_dataset("coords", data=coords.astype(np.int64))
        for key, value in {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                           "target_magnification": 20, "overlap": 0, "name": name}.items():
            dset.attrs[key] = value
    return folder / f"{name}.h5"


def _pt(root: Path, name: str, feats: np.ndarray, coords: np.ndarray) -> Path:
    import torch

    (root / "pt_files").mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(feats.astype(np.float32)), root / "pt_files" / f"{name}.pt")
    return root / "pt_files" / f"{name}.pt"


def _slides(root: Path, per_format: int = 4, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(DIAGNOSES), DIM)) * 2
    train, questions = [], []
    for fmt, write in (("clam", _clam), ("trident", _trident), ("pt", _pt)):
        for i in range(per_format):
            dx = DIAGNOSES[i % 2]
            n = int(rng.integers(6, 14))
            feats = centres[DIAGNOSES.index(dx)] + rng.normal(size=(n, DIM))
            coords = rng.integers(0, 16, (n, 2)) * 256
            path = write(root / fmt, f"{fmt}_{i}", feats, coords)
            rel = str(path.relative_to(root))
            report = f"Diagnosis: {dx}. The sections show {dx} throughout."
            train.append({"id": f"{fmt}_{i}_report", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\nWrite the pathology report."}, {"from": "gpt", "value": report}]})
            answer = "yes" if dx == "lymphoma" else "no"
            train.append({"id": f"{fmt}_{i}_qa", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\nIs this lymphoma?"}, {"from": "gpt", "value": answer}]})
            questions.append({"question_id": f"{fmt}_{i}", "image": rel, "text": "Is this lymphoma?",
                              "answer": answer, "answer_type": "CLOSED"})
    (root / "train.json").write_text(json.dumps(train, indent=1))
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return root / "train.json", root / "questions.jsonl"


def test_feature_files_without_coords_get_a_row_major_grid():
    grid = coords_or_grid(None, 5, {"patch_size_level0": 512})
    assert grid.tolist() == [[0, 0], [512, 0], [1024, 0], [0, 512], [512, 512]]  # side ceil(sqrt(5)) = 3
    assert coords_or_grid(None, 4, {}).tolist() == [[0, 0], [256, 0], [0, 256], [256, 256]]
    given = np.array([[7, 9]], np.int32)
    assert coords_or_grid(given, 1).dtype == np.int64 and coords_or_grid(given, 1).tolist() == [[7, 9]]


def test_feature_loader_reads_each_tool_layout(tmp_path):
    train, _ = _slides(tmp_path, per_format=1)
    load = FeatureLoader()
    for rec in json.loads(train.read_text())[::2]:
        item = load(str(tmp_path / rec["image"]))
        assert item["features"].shape[1] == DIM and item["coords"].shape == (item["features"].shape[0], 2)


@pytest.mark.slow
def test_wsi_llava_trains_on_clam_trident_and_pt_features(tmp_path):
    train, questions = _slides(tmp_path)
    out = tmp_path / "wsi"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATHKIT_TORCH_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "pathkit.cli", "train", "wsi_llava", "--preset", "tiny",
                           "--train-data", str(train), "--eval-questions", str(questions), "--out", str(out),
                           "--no-progress", "--set", "*.max_steps=2", "--set", "*.batch_size=4"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [summary["stages"][s]["steps"] for s in ("wsi_text", "feature_alignment", "instruction_tuning")] == [2] * 3
    last = summary["stages"]["instruction_tuning"]  # its validation split holds out whole slides
    assert last["records"] + last.get("val_records", 0) == 24 and summary["n_closed"] == 12
    assert (out / "wsi_text" / "model" / "slide_encoder.pt").is_file()
