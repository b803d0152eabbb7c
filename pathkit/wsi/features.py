"""Slide feature files: pathkit's HDF5 contract, and the files CLAM, TRIDENT, TITAN, WSI-Bench and SlideChat write.

pathkit's file, one per slide:
    coords    (N, 2) int64   level-0 top-left x, y of each tile
    features  (N, D) float32 one row per tile (absent in a coords-only file written by ``pathkit tile``)
    attrs     mpp (of the tiles), patch_size (px at mpp), patch_size_level0, level, slide (file name),
              encoder (when features exist); pathkit also stores slide_path, slide_mpp, read_size, stride_level0.
The attributes sit on the file root and again on the ``coords`` dataset, where CLAM, TRIDENT and TITAN keep and
read them (TITAN: ``h5["coords"].attrs["patch_size_level0"]``), together with TRIDENT's ``level0_magnification``
and ``target_magnification`` (its convention: magnification = 10 / mpp).

:func:`read_features` also reads:
    CLAM coords   ``patches/<slide>.h5``: ``coords`` with attrs patch_size, patch_level, downsample, level_dim,
                  downsampled_level_dim, name, save_path; patch_size_level0 = patch_size * downsample.
    CLAM features ``h5_files/<slide>.h5``: ``features`` (N, D) + ``coords`` (N, 2) int32, no attributes: the patch
                  size comes from the sibling ``../patches/<slide>.h5`` when it is there. ``pt_files/<slide>.pt``:
                  a (N, D) tensor, no coords.
    TRIDENT/TITAN ``features`` (N, D) (TITAN's demo files: (1, N, D)) + ``coords`` with attrs patch_size,
                  patch_size_level0, level0_magnification, target_magnification, overlap, name, level0_width/height.
    WSI-Bench     ``<slide>.pt``: a (576, 1024) tensor (Prov-GigaPath tokens, zero-padded), no coords.
    SlideChat     ``<slide>.csv`` (DSMIL's layout): a header row ``0,1,...,D-1`` and one row of D numbers per patch.

Files are written under a temporary name and renamed, so a file under its final name is complete.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

from pathkit.io import PathkitError, atomic_path

# Lazy imports: h5py (h5py, ~0.3 s); torch (the model stack, seconds to import); pandas (pandas, ~0.6 s). They
# load inside the functions that need them, not when this module is imported.

REQUIRED_ATTRS = ("mpp", "patch_size", "patch_size_level0", "level", "slide")
# Suffixes of the slide feature files read_features takes (a LLaVA record's ``image`` with one of them is a slide).
FEATURE_SUFFIXES = (".h5", ".hdf5", ".pt", ".pth", ".csv")
# TRIDENT's WSIPatcher turns a magnification into a pixel size as 10 / magnification (20x = 0.5 um/px).
MICRONS_AT_1X = 10.0


def write_features(path: str | Path, coords: np.ndarray, attrs: dict[str, Any],
                   features: np.ndarray | None = None) -> Path:
    """Write a coords(-and-features) file atomically; attributes go on the root and on ``coords``."""
    import h5py

    path = Path(path)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise PathkitError(f"{path}: missing attribute(s) {missing}")
    if features is not None:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != coords.shape[0]:
            raise PathkitError(f"{path}: features shape {features.shape} does not match {len(coords)} coords")
        if "encoder" not in attrs:
            raise PathkitError(f"{path}: features need the 'encoder' attribute")
    attrs = {k: v for k, v in attrs.items() if v is not None and k != "format"}  # format: what read_features saw
    attrs.update(_trident_attrs(attrs))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            dset = fh.create_dataset("coords", data=coords)
            if features is not None:
                fh.create_dataset("features", data=features, chunks=(max(1, min(len(features), 256)),
                                                                     max(1, features.shape[1])))
            for key, value in attrs.items():
                fh.attrs[key] = value
                dset.attrs[key] = value
    return path


def _trident_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """TRIDENT's names for pathkit's tile geometry, so TRIDENT's reader takes its own (not its legacy) path."""
    out = {}
    if "mpp" in attrs and "slide_mpp" in attrs:
        out.setdefault("level0_magnification", MICRONS_AT_1X / float(attrs["slide_mpp"]))
        out.setdefault("target_magnification", MICRONS_AT_1X / float(attrs["mpp"]))
    if "overlap" not in attrs and "stride_level0" in attrs and "patch_size_level0" in attrs and "mpp" in attrs \
            and "slide_mpp" in attrs:
        scale = float(attrs["mpp"]) / float(attrs["slide_mpp"])  # level-0 px per tile px
        out["overlap"] = int(round((int(attrs["patch_size_level0"]) - int(attrs["stride_level0"])) / scale))
    return {k: v for k, v in out.items() if k not in attrs}


def read_features(path: str | Path, *, patch_size_level0: int | None = None
                  ) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """(coords int64 (N, 2) or None, features float32 (N, D) or None, attrs) of any supported feature file.

    ``attrs["patch_size_level0"]`` is always set: read, derived (patch_size x level downsample, or patch_size x
    level-0 / target magnification), or taken from ``patch_size_level0`` when the file states none; it is None
    only for files without coordinates (``.pt`` tensors, SlideChat CSV). ``attrs["format"]`` names the layout
    read (pathkit, clam, trident, pt, slidechat-csv).
    """
    path = Path(path)
    if not path.is_file():
        raise PathkitError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        coords, features, attrs = _read_pt(path)
    elif suffix == ".csv":
        coords, features, attrs = _read_csv(path)
    else:
        coords, features, attrs = _read_h5(path)
    if coords is not None and features is not None and len(coords) != len(features):
        raise PathkitError(f"{path}: {len(features)} feature rows but {len(coords)} coords")
    if coords is None:
        attrs.setdefault("patch_size_level0", patch_size_level0)
        return None, features, attrs
    found = _patch_size_level0(attrs)
    if found is None and attrs["format"] == "clam":
        found = _clam_patches_sibling(path)
    if found is None:
        found = patch_size_level0
    if found is None:
        raise PathkitError(
            f"{path}: missing field 'patch_size_level0' (also not derivable: no 'patch_size' with 'downsample' or "
            f"with 'level0_magnification'/'target_magnification'); write it as an attribute of 'coords' (for CLAM "
            f"feature files, keep CLAM's patches/{path.stem}.h5 beside h5_files/) or pass "
            f"read_features(..., patch_size_level0=N)")
    attrs["patch_size_level0"] = int(found)
    return coords, features, attrs


def _read_h5(path: Path) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            if "coords" not in fh:
                raise PathkitError(f"{path}: no 'coords' dataset")
            coords = _squeeze_batch(np.asarray(fh["coords"][:]), 2, path, "coords").astype(np.int64)
            features = None
            attrs: dict[str, Any] = {}
            if "features" in fh:
                features = _squeeze_batch(np.asarray(fh["features"][:], dtype=np.float32), 2, path, "features")
                attrs.update(_plain_attrs(fh["features"].attrs))
            coord_attrs = _plain_attrs(fh["coords"].attrs)
            root_attrs = _plain_attrs(fh.attrs)
    except OSError as err:
        raise PathkitError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]})") from err
    attrs.update(coord_attrs)
    attrs.update(root_attrs)  # pathkit's own root attributes win over anything else
    if "mpp" in root_attrs:
        attrs["format"] = "pathkit"
    elif "level0_magnification" in coord_attrs or "patch_size_level0" in coord_attrs:
        attrs["format"] = "trident"
    else:
        attrs["format"] = "clam"
    if "slide" not in attrs and attrs.get("name"):
        attrs["slide"] = str(attrs["name"])
    return coords, features, attrs


def _read_pt(path: Path) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """A ``torch.save``d tensor (WSI-Bench, CLAM pt_files), numpy array (TRIDENT ``--saveas pt``) or dict."""
    import torch

    allowed = [np.ndarray, np.dtype, np.dtypes.Float32DType, np.dtypes.Float64DType, np.dtypes.Float16DType,
               np.dtypes.Int64DType, np.dtypes.Int32DType, _reconstruct]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zip files, disallowed globals
        raise PathkitError(f"{path}: not a readable tensor file ({str(err).splitlines()[0]})") from err
    coords = None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise PathkitError(f"{path}: a dict without a 'features' entry (keys: {sorted(map(str, obj))})")
        coords = obj.get("coords")
        obj = obj["features"]
    features = _squeeze_batch(_as_numpy(obj, path, "features").astype(np.float32), 2, path, "features")
    if coords is not None:
        coords = _squeeze_batch(_as_numpy(coords, path, "coords"), 2, path, "coords").astype(np.int64)
    return coords, features, {"format": "pt", "slide": path.stem}


def _read_csv(path: Path) -> tuple[np.ndarray | None, np.ndarray, dict[str, Any]]:
    """SlideChat / DSMIL: ``pandas.DataFrame(feats).to_csv(index=False)``, columns named 0..D-1.

    SlideChat's readers take the first 512 columns, because some of its files (BCNB) end each row with the
    patch's file name; columns not named by a number are not features. A file without a header row is read too.
    """
    import pandas as pd

    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = [t.strip() for t in fh.readline().split(",")]
        headerless = all(_is_number(t) for t in first) and not all(re.fullmatch(r"\d+", t) for t in first)
        frame = pd.read_csv(path, header=None if headerless else "infer")  # headerless: row 1 holds numbers
        frame.columns = [str(c) for c in frame.columns]
    except Exception as err:
        raise PathkitError(f"{path}: cannot read CSV ({str(err).splitlines()[0]})") from err
    numbered = [c for c in frame.columns if re.fullmatch(r"\d+", str(c).strip())]
    if not numbered:
        raise PathkitError(f"{path}: no feature columns (SlideChat/DSMIL CSV headers are 0, 1, ..., D-1)")
    try:
        features = frame[numbered].to_numpy(dtype=np.float32)
    except ValueError as err:
        raise PathkitError(f"{path}: feature columns hold non-numbers ({err})") from err
    lower = {str(c).strip().lower(): c for c in frame.columns}
    coords = None
    if "x" in lower and "y" in lower:  # some exports add the patch position; DSMIL's own files have none
        coords = frame[[lower["x"], lower["y"]]].to_numpy(dtype=np.int64)
    return coords, features, {"format": "slidechat-csv", "slide": path.stem}


def _is_number(text: Any) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _patch_size_level0(attrs: dict[str, Any]) -> int | None:
    """Level-0 tile footprint from whichever attributes a tool wrote (None when they do not say)."""
    if attrs.get("patch_size_level0") is not None:
        return int(attrs["patch_size_level0"])
    size = attrs.get("patch_size")
    if size is None:
        return None
    src, dst = attrs.get("level0_magnification"), attrs.get("target_magnification")
    if src is not None and dst is not None:  # TRIDENT: patch_size at target magnification
        return int(round(float(size) * float(src) / float(dst)))
    downsample = attrs.get("downsample")
    if downsample is None and int(attrs.get("patch_level", attrs.get("level", -1))) == 0:
        downsample = 1.0
    if downsample is not None:  # CLAM: patch_size at patch_level, whose downsample it stores as (dx, dy)
        ds = float(np.ravel(downsample)[0]) * float(attrs.get("custom_downsample", 1))
        return int(round(float(size) * ds))
    return None


def _clam_patches_sibling(path: Path) -> int | None:
    """CLAM's ``extract_features_fp.py`` writes no attributes; its coords file ``patches/<slide>.h5`` has them."""
    import h5py

    sibling = path.parent.parent / "patches" / path.name
    if not sibling.is_file() or sibling.resolve() == path.resolve():
        return None
    try:
        with h5py.File(sibling, "r") as fh:
            attrs = _plain_attrs(fh["coords"].attrs) if "coords" in fh else {}
    except OSError:
        return None
    return _patch_size_level0(attrs)


def _squeeze_batch(array: np.ndarray, ndim: int, path: Path, name: str) -> np.ndarray:
    """(1, N, D) -> (N, D): TITAN's demo files and some ``.pt`` exports keep a batch axis of one."""
    while array.ndim > ndim and array.shape[0] == 1:
        array = array[0]
    if name == "features" and array.ndim == 1:
        raise PathkitError(f"{path}: dataset 'features' is one vector of {array.shape[0]} (a slide embedding, "
                           "as TRIDENT's slide encoders write), not one row per tile")
    if array.ndim != ndim:
        raise PathkitError(f"{path}: dataset '{name}' has shape {array.shape}; expected {ndim} dimensions")
    if name == "coords" and array.shape[1] != 2:
        raise PathkitError(f"{path}: dataset 'coords' has shape {array.shape}; expected (N, 2)")
    return array


def _as_numpy(obj: Any, path: Path, name: str) -> np.ndarray:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().float().numpy() if obj.is_floating_point() else obj.numpy()
    if isinstance(obj, np.ndarray):
        return obj
    raise PathkitError(f"{path}: '{name}' is a {type(obj).__name__}, not a tensor or array")


def is_complete(path: str | Path, need_features: bool = False, encoder: str | None = None) -> bool:
    """True when ``path`` is a complete pathkit feature file (with features from ``encoder`` when asked)."""
    try:
        coords, features, attrs = read_features(path)
    except PathkitError:
        return False
    if coords is None or any(k not in attrs for k in REQUIRED_ATTRS):
        return False
    if need_features:
        if features is None or len(features) != len(coords):
            return False
        if encoder is not None and attrs.get("encoder") != encoder:
            return False
    return True


def _plain_attrs(attrs) -> dict[str, Any]:
    return {k: _plain(v) for k, v in attrs.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value == "None":  # TRIDENT saves None as the string 'None'
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
