"""read_features on the feature files other tools write, and pathkit's files read the way TITAN and TRIDENT read.

Each fixture is written the way its tool writes it (datasets, dtypes, chunking and attributes as in CLAM's
``save_hdf5`` / ``process_contour``, TRIDENT's ``coords_to_h5`` / ``extract_patch_features``, TITAN's demo file,
WSI-Bench's ``torch.save``d tensors and DSMIL's ``DataFrame.to_csv`` that SlideChat's CSVs follow).
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pathkit.io import PathkitError
from pathkit.wsi.features import is_complete, read_features, write_features

RNG = np.random.default_rng(0)


def _clam_coords(path, coords, patch_size=256, patch_level=1, downsample=(4.0, 4.0), name="slide_a"):
    """CLAM's create_patches_fp: save_hdf5 with attr_dict={'coords': attr} (attrs on the dataset, not the root)."""
    with h5py.File(path, "w") as fh:
        dset = fh.create_dataset("coords", shape=coords.shape, maxshape=(None, 2), chunks=(32, 2), dtype=coords.dtype)
        dset[:] = coords
        attr = {"patch_size": patch_size, "patch_level": patch_level, "downsample": downsample,
                "downsampled_level_dim": np.array((4000, 3000)), "level_dim": (4000, 3000), "name": name,
                "save_path": str(path.parent)}
        for key, value in attr.items():
            dset.attrs[key] = value


def _clam_features(path, coords, features):
    """CLAM's extract_features_fp: features float32 + coords int32, appended in batches, no attributes."""
    with h5py.File(path, "w") as fh:
        for key, val in {"features": features, "coords": coords.astype(np.int32)}.items():
            dset = fh.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:],
                                     chunks=(32,) + val.shape[1:], dtype=val.dtype)
            dset[:] = val


def _trident_attrs(patch_size=512, src_mag=40, dst_mag=20, name="slide_t"):
    """TRIDENT's coords_to_h5 attribute set (patch_size_level0 with integer division, as TRIDENT computes it)."""
    return {"patch_size": patch_size, "patch_size_level0": patch_size * src_mag // dst_mag,
            "level0_magnification": src_mag, "target_magnification": dst_mag, "overlap": 0, "name": name,
            "savetodir": "/data/job/20x_512px_0px_overlap/patches", "level0_width": 40000, "level0_height": 30000}


def _trident_save(path, assets, attributes):
    """TRIDENT's save_h5: chunk (1, ...), unlimited first axis, None attributes saved as the string 'None'."""
    with h5py.File(path, "w") as fh:
        for key, val in assets.items():
            dset = fh.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:],
                                     chunks=(1,) + val.shape[1:], dtype=val.dtype)
            dset[:] = val
            for attr_key, attr_val in attributes.get(key, {}).items():
                if isinstance(attr_val, dict):
                    attr_val = json.dumps(attr_val)
                elif attr_val is None:
                    attr_val = "None"
                dset.attrs[attr_key] = attr_val


@pytest.fixture(scope="module")
def grid():
    coords = np.array([[0, 0], [1024, 0], [0, 1024], [2048, 3072]], dtype=np.int64)
    return coords, RNG.standard_normal((4, 16)).astype(np.float32)


def test_clam_coords_file_derives_patch_size_level0(tmp_path, grid):
    coords, _ = grid
    _clam_coords(tmp_path / "slide_a.h5", coords)
    got, feats, attrs = read_features(tmp_path / "slide_a.h5")
    assert feats is None and got.dtype == np.int64 and np.array_equal(got, coords)
    assert attrs["patch_size_level0"] == 1024  # 256 px at level 1, downsample 4
    assert attrs["format"] == "clam" and attrs["slide"] == "slide_a" and attrs["patch_level"] == 1


def test_clam_feature_file_without_attributes(tmp_path, grid):
    coords, features = grid
    (tmp_path / "feat" / "h5_files").mkdir(parents=True)
    path = tmp_path / "feat" / "h5_files" / "slide_a.h5"
    _clam_features(path, coords, features)
    with pytest.raises(PathkitError) as err:
        read_features(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "'patch_size_level0'" in msg and "patch_size_level0=N" in msg
    got, feats, attrs = read_features(path, patch_size_level0=512)  # supplied by the caller
    assert attrs["patch_size_level0"] == 512 and np.array_equal(got, coords) and np.allclose(feats, features)
    (tmp_path / "feat" / "patches").mkdir()  # CLAM's own coords file beside h5_files/ supplies it
    _clam_coords(tmp_path / "feat" / "patches" / "slide_a.h5", coords, patch_size=512, patch_level=0,
                 downsample=(1.0, 1.0))
    assert read_features(path)[2]["patch_size_level0"] == 512


def test_clam_pt_file_has_no_coords(tmp_path, grid):
    _, features = grid
    torch.save(torch.from_numpy(features), tmp_path / "slide_a.pt")  # extract_features_fp's pt_files/
    coords, feats, attrs = read_features(tmp_path / "slide_a.pt")
    assert coords is None and feats.dtype == np.float32 and np.allclose(feats, features)
    assert attrs["patch_size_level0"] is None and attrs["format"] == "pt"
    assert not is_complete(tmp_path / "slide_a.pt")  # not a pathkit file, and no crash on coords=None


def test_trident_patch_features(tmp_path, grid):
    coords, features = grid
    path = tmp_path / "slide_t.h5"
    _trident_save(path, {"features": features, "coords": coords},
                  {"features": {"name": "slide_t", "savetodir": str(tmp_path), "encoder": "conch_v15"},
                   "coords": _trident_attrs()})
    got, feats, attrs = read_features(path)
    assert np.array_equal(got, coords) and np.allclose(feats, features)
    assert attrs["patch_size_level0"] == 1024 and attrs["format"] == "trident"
    assert attrs["encoder"] == "conch_v15" and attrs["slide"] == "slide_t"


def test_trident_coords_without_patch_size_level0_and_none_strings(tmp_path, grid):
    coords, features = grid
    attrs = _trident_attrs(patch_size=224, src_mag=40, dst_mag=20)
    del attrs["patch_size_level0"]
    path = tmp_path / "t.h5"
    _trident_save(path, {"features": features, "coords": coords},
                  {"features": {"name": "t", "savetodir": "x", "encoder": None}, "coords": attrs})
    _, _, got = read_features(path)
    assert got["patch_size_level0"] == 448 and got["encoder"] is None


def test_titan_demo_layout_with_batch_axis(tmp_path, grid):
    coords, features = grid
    path = tmp_path / "TCGA-demo.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=features[None])  # (1, N, 768) in TITAN's demo files
        dset = fh.create_dataset("coords", data=coords[None])
        dset.attrs["patch_size_level0"] = 1024
    got, feats, attrs = read_features(path)
    assert got.shape == (4, 2) and feats.shape == (4, 16) and attrs["patch_size_level0"] == 1024


def test_trident_pt_is_a_pickled_numpy_array(tmp_path, grid):
    _, features = grid
    torch.save(features, tmp_path / "slide_t.pt")  # TRIDENT --saveas pt: torch.save of the numpy array
    coords, feats, _ = read_features(tmp_path / "slide_t.pt")
    assert coords is None and np.array_equal(feats, features)


def test_wsi_bench_pt_tensor(tmp_path):
    tokens = torch.zeros(576, 1024)
    tokens[:, :768] = torch.from_numpy(RNG.standard_normal((576, 768)).astype(np.float32))  # zero-padded to 1024
    path = tmp_path / "TCGA-XX" / "0a1b2c3d.pt"
    path.parent.mkdir()
    torch.save(tokens, path)
    coords, feats, attrs = read_features(path)
    assert coords is None and feats.shape == (576, 1024) and np.array_equal(feats, tokens.numpy())
    assert attrs["slide"] == "0a1b2c3d"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt_that_needs_arbitrary_code_is_refused(tmp_path):
    import pickle

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump(PathkitError("x"), fh)  # unpickling it would call a class nobody allowed
    with pytest.raises(PathkitError, match="evil.pt: not a readable tensor file"):
        read_features(tmp_path / "evil.pt")


def test_slidechat_csv(tmp_path):
    feats = RNG.standard_normal((7, 512)).astype(np.float32)
    path = tmp_path / "TCGA-A7-A0CJ-01Z-00-DX2.csv"
    pd.DataFrame(feats).to_csv(path, index=False, float_format="%.4f")  # DSMIL compute_feats, as SlideChat uses
    coords, got, attrs = read_features(path)
    assert coords is None and got.shape == (7, 512) and np.allclose(got, feats, atol=1e-4)
    assert attrs["format"] == "slidechat-csv" and attrs["slide"] == "TCGA-A7-A0CJ-01Z-00-DX2"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(PathkitError, match="bad.csv: no feature columns"):
        read_features(tmp_path / "bad.csv")


@pytest.fixture(scope="module")
def pathkit_coords(tmp_path_factory):
    """A real ``pathkit tile`` output: 256 px tiles at 0.5 mpp from a 0.25 mpp slide (footprint 512)."""
    from pathkit.synthetic.slides import write_slide
    from pathkit.wsi.pipeline import tile_slide

    root = tmp_path_factory.mktemp("pk")
    slide = write_slide(root / "pk.tiff", 1536, 1024, mpp=0.25, seed=5).slide
    out, n = tile_slide(slide, root / "coords", mpp=0.5, size=256, min_tissue=0.0, figure=False)
    assert n > 0
    return out


def test_pathkit_file_reads_as_titan_reads_it(pathkit_coords, tmp_path):
    coords, _, attrs = read_features(pathkit_coords)
    features = RNG.standard_normal((len(coords), 8)).astype(np.float32)
    path = write_features(tmp_path / "pk.h5", coords, dict(attrs, encoder="tiny"), features=features)
    with h5py.File(path, "r") as fh:  # TITAN's README / inference_demo
        feats = torch.from_numpy(fh["features"][:])
        xy = torch.from_numpy(fh["coords"][:])
        patch_size_lv0 = fh["coords"].attrs["patch_size_level0"]
    assert patch_size_lv0 == 512 and feats.shape == (len(coords), 8) and xy.shape == (len(coords), 2)
    assert read_features(path)[2]["format"] == "pathkit" and is_complete(path, need_features=True, encoder="tiny")


def test_pathkit_file_reads_as_trident_reads_it(pathkit_coords):
    with h5py.File(pathkit_coords, "r") as fh:  # TRIDENT read_coords + WSI.extract_patch_features
        coords_attrs = dict(fh["coords"].attrs)
        coords = fh["coords"][:]
    patch_size = coords_attrs.get("patch_size")
    src_mag = coords_attrs.get("level0_magnification")
    dst_mag = coords_attrs.get("target_magnification")
    assert None not in (patch_size, src_mag, dst_mag)  # else TRIDENT falls back to its CLAM reader
    patch_size_src = round(patch_size * (10 / dst_mag) / (10 / src_mag))  # WSIPatcher, pixel size = 10 / mag
    assert patch_size_src == coords_attrs["patch_size_level0"] == 512
    assert coords.dtype == np.int64 and coords.shape[1] == 2
    assert int(coords_attrs["overlap"]) == 0


def test_old_pathkit_file_with_root_attrs_only(tmp_path, grid):
    coords, features = grid
    attrs = {"mpp": 0.5, "patch_size": 256, "patch_size_level0": 512, "level": 0, "slide": "s.tiff", "encoder": "e"}
    with h5py.File(tmp_path / "old.h5", "w") as fh:  # written before attributes went on 'coords' too
        fh.create_dataset("coords", data=coords)
        fh.create_dataset("features", data=features)
        fh.attrs.update(attrs)
    got, feats, read = read_features(tmp_path / "old.h5")
    assert read["format"] == "pathkit" and read["patch_size_level0"] == 512
    assert is_complete(tmp_path / "old.h5", need_features=True, encoder="e")


# ------------------------------------------------------------------------------ pathkit extract on their coords


@pytest.fixture(scope="module")
def extract_setup(tmp_path_factory):
    """One 0.25 mpp (40x) slide; pathkit's own tiles at 0.25 and 0.5 mpp; CLAM and TRIDENT coords files for the
    same tiles, written in their layouts without any slide path."""
    from pathkit.synthetic.slides import write_slide
    from pathkit.wsi.pipeline import tile_slide

    root = tmp_path_factory.mktemp("foreign")
    slides = root / "slides"
    write_slide(slides / "case7.svs", 2048, 1536, mpp=0.25, seed=7, fmt="svs")
    (slides / "case7.truth.json").unlink(missing_ok=True)
    own_l0, _ = tile_slide(slides / "case7.svs", root / "own_l0", mpp=0.25, size=256, min_tissue=0.05, figure=False)
    own_20x, _ = tile_slide(slides / "case7.svs", root / "own_20x", mpp=0.5, size=256, min_tissue=0.05,
                            figure=False)
    clam = root / "clam" / "patches"
    clam.mkdir(parents=True)
    _clam_coords(clam / "case7.h5", read_features(own_l0)[0][:6], patch_size=256, patch_level=0,
                 downsample=(1.0, 1.0), name="case7")
    trident = root / "trident" / "20x_256px_0px_overlap" / "patches"
    trident.mkdir(parents=True)
    _trident_save(trident / "case7_patches.h5", {"coords": read_features(own_20x)[0][:6]},
                  {"coords": _trident_attrs(patch_size=256, src_mag=40, dst_mag=20, name="case7")})
    return root, slides, own_l0, own_20x, clam, trident


@pytest.mark.parametrize("tool", ["clam", "trident"])
def test_extract_reads_their_coords_files_with_slides_dir(extract_setup, tmp_path, tool, monkeypatch):
    from typer.testing import CliRunner

    from pathkit.cli import app

    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path / "cache"))
    root, slides, own_l0, own_20x, clam, trident = extract_setup
    source, own = (clam, own_l0) if tool == "clam" else (trident, own_20x)
    runner = CliRunner()
    result = runner.invoke(app, ["extract", str(source), "--encoder", "tiny", "--out", str(tmp_path / "f"),
                                 "--workers", "0", "--slides", str(slides)])
    assert result.exit_code == 0, result.output
    out = next((tmp_path / "f").glob("*.h5"))
    coords, feats, attrs = read_features(out)
    n = min(6, len(read_features(own)[0]))
    assert attrs["format"] == "pathkit" and attrs["slide"] == "case7.svs" and len(coords) == n > 2
    # the same tiles through pathkit's own coords file give the same features
    ref = runner.invoke(app, ["extract", str(own), "--encoder", "tiny", "--out", str(tmp_path / "ref"),
                              "--workers", "0"])
    assert ref.exit_code == 0, ref.output
    ref_coords, ref_feats, ref_attrs = read_features(tmp_path / "ref" / own.name)
    assert np.array_equal(ref_coords[:n], coords)
    assert np.allclose(ref_feats[:n], feats, atol=1e-5)
    for key in ("patch_size_level0", "level", "read_size", "mpp"):
        assert attrs[key] == pytest.approx(ref_attrs[key]), key
    assert is_complete(out, need_features=True, encoder="tiny")


def test_extract_of_their_coords_without_slides_dir_says_how(extract_setup, tmp_path):
    from pathkit.models.encoders import load_encoder
    from pathkit.wsi.pipeline import extract_features

    root, slides, _, _, clam, _ = extract_setup
    summary = extract_features(clam, "tiny", tmp_path / "f", load_encoder=load_encoder,
                               workers=0, progress=False)
    assert len(summary.failed) == 1
    reason = summary.failed[0]["reason"]
    assert "case7.h5" in reason and "--slides" in reason and "\n" not in reason
    summary = extract_features(clam, "tiny", tmp_path / "g", load_encoder=load_encoder,
                               workers=0, progress=False, slides_dir=root)
    assert "no slide named 'case7'" in summary.failed[0]["reason"]


def test_slidechat_csv_with_patch_names_or_without_header(tmp_path):
    feats = RNG.standard_normal((4, 512)).astype(np.float32)
    frame = pd.DataFrame(feats)
    frame["patch_name"] = [f"p{i}.jpg" for i in range(4)]  # BCNB rows end with the patch's file name
    frame.to_csv(tmp_path / "bcnb.csv", index=False, float_format="%.4f")
    assert np.allclose(read_features(tmp_path / "bcnb.csv")[1], feats, atol=1e-4)
    pd.DataFrame(feats).to_csv(tmp_path / "nohead.csv", index=False, header=False, float_format="%.4f")
    got = read_features(tmp_path / "nohead.csv")[1]
    assert got.shape == (4, 512) and np.allclose(got, feats, atol=1e-4)


def test_trident_slide_embedding_is_named_as_such(tmp_path, grid):
    coords, _ = grid
    _trident_save(tmp_path / "slide.h5", {"features": np.zeros(768, np.float32), "coords": coords},
                  {"coords": _trident_attrs()})
    with pytest.raises(PathkitError, match="slide.h5: dataset 'features' is one vector of 768 .a slide embedding"):
        read_features(tmp_path / "slide.h5")


def test_extract_trident_coords_on_a_slide_without_mpp_uses_its_magnification(tmp_path, monkeypatch):
    from pathkit.models.encoders import load_encoder
    from pathkit.synthetic.slides import write_slide
    from pathkit.wsi.pipeline import extract_features

    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path / "cache"))
    write_slide(tmp_path / "slides" / "nompp.tiff", 1024, 1024, seed=3, record_mpp=False)
    (tmp_path / "coords").mkdir()
    coords = np.array([[0, 0], [512, 0], [0, 512]], dtype=np.int64)
    _trident_save(tmp_path / "coords" / "nompp_patches.h5", {"coords": coords},
                  {"coords": _trident_attrs(patch_size=256, src_mag=40, dst_mag=20, name="nompp")})
    summary = extract_features(tmp_path / "coords", "tiny", tmp_path / "f", load_encoder=load_encoder,
                               workers=0, progress=False,
                               slides_dir=tmp_path / "slides")
    assert not summary.failed, summary.failed
    _, feats, attrs = read_features(tmp_path / "f" / "nompp_patches.h5")
    assert attrs["slide_mpp"] == 0.25 and attrs["mpp"] == 0.5 and feats.shape[0] == 3  # 10 / 40x, 10 / 20x


def test_eval_reads_pt_and_csv_slides_without_coords(tmp_path):
    from pathkit.eval.answers import load_visual
    from pathkit.train.data import coords_or_grid

    torch.save(torch.ones(576, 1024), tmp_path / "s.pt")
    pd.DataFrame(np.ones((3, 512), np.float32)).to_csv(tmp_path / "s.csv", index=False)
    for name, shape in (("s.pt", (576, 1024)), ("s.csv", (3, 512))):
        kind, (feats, coords) = load_visual(tmp_path / name)
        assert kind == "slide" and tuple(feats.shape) == shape
        # no coords in the file: the slide encoder gets the row-major grid training uses (train.data.coords_or_grid)
        assert coords.tolist() == coords_or_grid(None, shape[0]).tolist()
