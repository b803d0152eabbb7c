"""Slide feature files (HDF5, DESIGN.md contract; CLAM-compatible ``coords``/``features`` layout).

One file per slide:
    coords    (N, 2) int64   level-0 top-left x, y of each tile
    features  (N, D) float32 one row per tile (absent in a coords-only file written by ``pathkit tile``)
    attrs     mpp (of the tiles), patch_size (px at mpp), patch_size_level0, level, slide (file name),
              encoder (when features exist); pathkit also stores slide_path, slide_mpp, read_size, stride_level0.

Files are written under a temporary name and renamed, so a file under its final name is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pathkit.io import PathkitError, atomic_path

REQUIRED_ATTRS = ("mpp", "patch_size", "patch_size_level0", "level", "slide")


def write_features(path: str | Path, coords: np.ndarray, attrs: dict[str, Any],
                   features: np.ndarray | None = None) -> Path:
    """Write a coords(-and-features) file atomically."""
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
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("coords", data=coords)
            if features is not None:
                fh.create_dataset("features", data=features, chunks=(max(1, min(len(features), 256)),
                                                                     max(1, features.shape[1])))
            for key, value in attrs.items():
                if value is not None:
                    fh.attrs[key] = value
    return path


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(coords int64 (N, 2), features float32 (N, D) or None for a coords-only file, attrs dict)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PathkitError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as fh:
            if "coords" not in fh:
                raise PathkitError(f"{path}: no 'coords' dataset")
            coords = np.asarray(fh["coords"][:], dtype=np.int64)
            features = np.asarray(fh["features"][:], dtype=np.float32) if "features" in fh else None
            attrs = {k: _plain(v) for k, v in fh.attrs.items()}
    except OSError as err:
        raise PathkitError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]})") from err
    return coords, features, attrs


def is_complete(path: str | Path, need_features: bool = False, encoder: str | None = None) -> bool:
    """True when ``path`` is a readable feature file (with features from ``encoder`` when asked)."""
    try:
        coords, features, attrs = read_features(path)
    except PathkitError:
        return False
    if any(k not in attrs for k in REQUIRED_ATTRS):
        return False
    if need_features:
        if features is None or len(features) != len(coords):
            return False
        if encoder is not None and attrs.get("encoder") != encoder:
            return False
    return True


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
