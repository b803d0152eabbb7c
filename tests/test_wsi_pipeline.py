"""tile -> extract: HDF5 contract, bad slides in a batch, resume after a killed run, DataLoader workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pathkit.cli import app
from pathkit.synthetic.slides import write_slide
from pathkit.wsi.features import is_complete, read_features

PATHKIT = Path(sys.executable).with_name("pathkit")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Two good slides, a truncated one, a non-slide file and a slide without mpp."""
    root = tmp_path_factory.mktemp("wsi_batch")
    good = [write_slide(root / "good_a.tiff", 2048, 1536, mpp=0.5, seed=21).slide,
            write_slide(root / "good_b.svs", 2560, 2048, mpp=0.25, seed=22, fmt="svs").slide]
    shutil.copy(good[0], root / "truncated.tiff")
    os.truncate(root / "truncated.tiff", os.path.getsize(root / "truncated.tiff") // 2)
    (root / "notes.tiff").write_text("this is a text file, not a slide\n")
    nompp = write_slide(root / "nompp.tiff", 1024, 1024, seed=23, record_mpp=False).slide
    return root, good, [str(root / "truncated.tiff"), str(root / "notes.tiff"), nompp]


def test_tile_and_extract_cli_contract_and_failures(batch, tmp_path):
    root, good, bad = batch
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["tile", *good, *bad, "--out", str(out), "--mpp", "0.5", "--size", "256",
                                 "--min-tissue", "0.1"])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert "2 slide(s) done" in last and "3 failed" in last
    failures = {Path(r["item"]).name: r["reason"] for r in map(json.loads, (out / "failures.jsonl").open())}
    assert set(failures) == {"truncated.tiff", "notes.tiff", "nompp.tiff"}
    assert "truncated or corrupt" in failures["truncated.tiff"]
    assert "not a slide file" in failures["notes.tiff"]
    assert "no microns per pixel" in failures["nompp.tiff"] and "--slide-mpp" in failures["nompp.tiff"]
    assert all("\n" not in r for r in failures.values())
    for slide in good:
        stem = Path(slide).stem
        assert (out / f"{stem}.png").is_file()
        coords, features, attrs = read_features(out / f"{stem}.h5")
        assert features is None and coords.dtype == np.int64 and coords.ndim == 2 and coords.shape[1] == 2
        assert attrs["mpp"] == 0.5 and attrs["patch_size"] == 256 and attrs["slide"] == Path(slide).name
    assert read_features(out / "good_b.h5")[2]["patch_size_level0"] == 512  # 0.25 mpp slide
    assert read_features(out / "good_b.h5")[2]["level"] == 1

    result = runner.invoke(app, ["extract", str(out), "--encoder", "tiny", "--out", str(out), "--workers", "0",
                                 "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    for slide in good:
        coords, features, attrs = read_features(out / f"{Path(slide).stem}.h5")
        assert features.dtype == np.float32 and features.shape == (len(coords), 64)
        assert np.isfinite(features).all() and features.std() > 0
        assert attrs["encoder"] == "tiny"
        assert {"mpp", "patch_size", "patch_size_level0", "level", "slide", "encoder"} <= set(attrs)
    # The slide without mpp works once the mpp is stated.
    result = runner.invoke(app, ["tile", bad[2], "--out", str(out), "--slide-mpp", "0.5"])
    assert result.exit_code == 0, result.output
    assert read_features(out / "nompp.h5")[2]["slide_mpp"] == 0.5


def test_features_match_reference_preprocess_path(batch, tmp_path):
    """Fast path (uint8 tiles, normalised on device) vs the encoder's own preprocess on the same tiles."""
    from pathkit.models.encoders import load_encoder
    from pathkit.wsi.dataset import SlideTileDataset
    from pathkit.wsi.pipeline import extract_features as extract
    from pathkit.wsi.pipeline import plan_from_attrs, tile_slides

    _, good, _ = batch
    tile_slides(good[:1], tmp_path, progress=False, figure=False)
    summary = extract(tmp_path, "tiny", tmp_path / "f", load_encoder=load_encoder, workers=0, progress=False)
    assert summary.tiles > 0 and summary.tiles_per_second > 0
    coords, features, attrs = read_features(tmp_path / "f" / "good_a.h5")
    model, preprocess, _ = load_encoder("tiny")
    raw = SlideTileDataset(good[0], coords[:6], plan_from_attrs(attrs))  # 256 px tiles, no resize
    with torch.no_grad():
        reference = model(preprocess([raw.read(i) for i in range(6)])).numpy()
    cos = (reference * features[:6]).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(features[:6], axis=1)
    assert cos.min() > 0.99, cos


def test_dataloader_with_two_workers_returns_direct_reads(batch, tmp_path):
    from torch.utils.data import DataLoader

    from pathkit.wsi.dataset import SlideTileDataset, make_loader
    from pathkit.wsi.slide import Slide
    from pathkit.wsi.tiling import read_tile, tile_grid

    _, good, _ = batch
    with Slide(good[1]) as slide:
        grid = tile_grid(slide, mpp=0.5, size=256, min_tissue=0.1)
        direct = [read_tile(slide, int(x), int(y), grid.plan) for x, y in grid.coords]
    dataset = SlideTileDataset(good[1], grid.coords, grid.plan)
    _ = dataset.slide  # a handle opened in the parent must not leak into the workers
    loaders = {"pathkit (forkserver)": make_loader(dataset, batch_size=5, workers=2),
               "plain DataLoader (fork)": DataLoader(dataset, batch_size=5, num_workers=2)}
    for name, loader in loaders.items():
        tiles, coords = zip(*loader, strict=True)
        tiles, coords = torch.cat(tiles), torch.cat(coords)
        assert torch.equal(coords, torch.from_numpy(grid.coords)), name
        assert tiles.dtype == torch.uint8 and tiles.shape == (len(direct), 3, 256, 256), name
        assert np.array_equal(tiles.permute(0, 2, 3, 1).numpy(), np.stack(direct)), name


@pytest.mark.slow  # three CLI subprocesses (torch import each): ~40 s idle, minutes on a loaded 2-core box
def test_resume_after_killed_run(tmp_path):
    """Kill `pathkit extract` mid-batch; the rerun keeps finished files and completes the rest."""
    slides = [write_slide(tmp_path / f"s{i}.tiff", 2048, 2048, mpp=0.5, seed=30 + i).slide for i in range(4)]
    coords_dir, feats = tmp_path / "coords", tmp_path / "feats"
    env = dict(os.environ, PATHKIT_CACHE=os.environ["PATHKIT_CACHE"])
    subprocess.run([str(PATHKIT), "tile", *slides, "--out", str(coords_dir), "--no-figure"], check=True, env=env,
                   capture_output=True)
    proc = subprocess.Popen([str(PATHKIT), "extract", str(coords_dir), "--encoder", "tiny", "--out",
                             str(feats), "--workers", "0", "--batch-size", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if feats.is_dir() and any(p.suffix == ".h5" and not p.name.startswith(".") for p in feats.iterdir()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in feats.glob("*.h5"))
    if len(finished) == 4:
        pytest.skip("the run finished before it could be killed")
    assert len(finished) >= 1
    for name in finished:  # everything under a final name is complete
        assert is_complete(feats / name, need_features=True, encoder="tiny")
    before = {name: (feats / name).stat().st_mtime_ns for name in finished}
    result = subprocess.run([str(PATHKIT), "extract", str(coords_dir), "--encoder", "tiny", "--out",
                             str(feats), "--workers", "0", "--batch-size", "1"], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert f"{len(finished)} already complete" in result.stdout
    assert sorted(p.name for p in feats.glob("*.h5")) == [f"s{i}.h5" for i in range(4)]
    assert all((feats / n).stat().st_mtime_ns == t for n, t in before.items())  # not redone
    assert not [p for p in feats.iterdir() if p.name.startswith(".")]  # no temp leftovers after a clean run
