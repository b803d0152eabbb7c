"""Ray as the engine: sweep runs as Ray tasks, slide tiling as tasks, feature extraction on encoder actors.

One real local Ray with 2 CPUs serves the whole module (started once, shut down at the end). Each result is
compared with the local engine's, which is the reference.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sweep_helpers import PROBE_BODY, PROBE_PARAMETERS, write_notebook

from pathkit.io import read_json, read_jsonl
from pathkit.models.encoders import load_encoder
from pathkit.sweep.runner import run_sweep
from pathkit.sweep.spec import SweepSpec
from pathkit.synthetic.slides import write_slide
from pathkit.wsi.features import read_features
from pathkit.wsi.pipeline import extract_features, tile_slides
from pathkit.wsi.ray_batch import extract_features_ray, tile_slides_ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception:  # Ray gives its raylet 30 s to register; a busy shared machine can miss that once
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_sweep_on_ray(local_ray, tmp_path):
    probe = write_notebook(tmp_path / "probe.ipynb", PROBE_PARAMETERS, PROBE_BODY)
    flag = tmp_path / "broken"
    flag.write_text("")
    spec = SweepSpec(probe, grid={"x": [1, 2], "fail_if": ["", str(flag)]}, seeds=[3], engine="ray")
    summary = run_sweep(spec, tmp_path / "sweep", progress=False)
    assert ray.is_initialized()  # a Ray the caller started is left running
    assert summary["done"] == 2 and summary["failed"] == 2
    table = pd.read_csv(tmp_path / "sweep" / "results.csv", keep_default_na=False)
    done = table[table["status"] == "done"]
    assert sorted(done["score"].astype(float)) == [13, 23]
    hosts = {read_json(tmp_path / "sweep" / "runs" / r / "status.json")["host"] for r in table["run_id"]}
    assert hosts == {os.uname().nodename}
    failures = read_jsonl(tmp_path / "sweep" / "failures.jsonl")
    assert sorted(f["params"]["x"] for f in failures) == [1, 2]
    assert all(f["reason"].endswith("AssertionError: asked to fail") for f in failures)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three small slides and a truncated copy of one."""
    root = tmp_path_factory.mktemp("ray_slides")
    good = [write_slide(root / f"s{i}.tiff", 1024, 768, mpp=0.5, seed=40 + i).slide for i in range(3)]
    shutil.copy(good[0], root / "truncated.tiff")
    os.truncate(root / "truncated.tiff", os.path.getsize(root / "truncated.tiff") // 2)
    return good, str(root / "truncated.tiff")


@pytest.mark.slow
def test_tile_and_extract_on_ray_match_the_local_pipeline(local_ray, slides, tmp_path):
    good, truncated = slides
    local = tile_slides([*good, truncated], tmp_path / "local", progress=False)
    remote = tile_slides_ray([*good, truncated], tmp_path / "ray", progress=False)
    assert sorted(remote.done) == sorted(local.done) == sorted(good) and remote.tiles == local.tiles > 0
    (failure,) = read_jsonl(tmp_path / "ray" / "failures.jsonl")
    assert failure["item"] == truncated
    assert failure["reason"] == read_jsonl(tmp_path / "local" / "failures.jsonl")[0]["reason"]
    for slide in good:
        stem = Path(slide).stem
        a, _, attrs_a = read_features(tmp_path / "local" / f"{stem}.h5")
        b, _, attrs_b = read_features(tmp_path / "ray" / f"{stem}.h5")
        assert np.array_equal(a, b) and attrs_a["patch_size_level0"] == attrs_b["patch_size_level0"]
    again = tile_slides_ray([*good, truncated], tmp_path / "ray", progress=False)
    assert sorted(again.skipped) == sorted(good) and not again.done and len(again.failed) == 1

    ref = extract_features(tmp_path / "local", "tiny", tmp_path / "feat_local", load_encoder=load_encoder,
                           batch_size=16, progress=False)
    got = extract_features_ray(tmp_path / "ray", "tiny", tmp_path / "feat_ray", load_encoder=load_encoder,
                               batch_size=16, actors=2, progress=False)
    assert len(got.done) == len(ref.done) == 3 and got.tiles == ref.tiles
    for slide in good:
        stem = Path(slide).stem
        coords_a, feats_a, attrs = read_features(tmp_path / "feat_local" / f"{stem}.h5")
        coords_b, feats_b, attrs_b = read_features(tmp_path / "feat_ray" / f"{stem}.h5")
        assert np.array_equal(coords_a, coords_b) and attrs_b["encoder"] == "tiny"
        np.testing.assert_allclose(feats_b, feats_a, rtol=1e-5, atol=1e-5)
    resumed = extract_features_ray(tmp_path / "ray", "tiny", tmp_path / "feat_ray", load_encoder=load_encoder,
                                   actors=2, progress=False)
    assert len(resumed.skipped) == 3 and not resumed.done
