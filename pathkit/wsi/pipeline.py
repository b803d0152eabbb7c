"""Slides -> tile coordinates -> tile features, as resumable batch jobs.

``tile_slides``: per slide, tissue mask + grid at a true mpp -> ``<out>/<stem>.h5`` (coords) and
``<out>/<stem>.png`` (thumbnail, mask outline, kept tiles).
``extract_features``: per coords file, read the tiles (DataLoader workers, each with its own openslide
handle), encode them in batches (bf16 autocast and channels_last on GPU) -> ``<out>/<stem>.h5`` with
``coords`` + ``features``.

Both skip slides whose output is already complete (outputs are written under a temporary name and renamed,
so a killed run never leaves a partial file under its final name), continue past a bad slide, list failures
(file, one-line reason) in ``<out>/failures.jsonl`` and return a summary with throughput.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pathkit.io import FailureLog, PathkitError
from pathkit.wsi.dataset import SlideTileDataset, make_loader, normalize_batch
from pathkit.wsi.features import is_complete, read_features, write_features
from pathkit.wsi.slide import Slide
from pathkit.wsi.tile_figure import tile_grid_figure
from pathkit.wsi.tiling import TilePlan, plan_for_footprint, plan_tiles, read_tile, tile_grid

# Lazy imports: torch (the model stack, seconds to import). They load inside the functions that need them, not
# when this module is imported.

# (name, device) -> (model, preprocess, feature width): pathkit.models.encoders.load_encoder
EncoderLoader = Callable[..., tuple[Any, Any, int]]


@dataclass
class BatchSummary:
    """What a batch job did: counts, failures and throughput."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    tiles: int = 0
    seconds: float = 0.0
    load_wait_seconds: float = 0.0  # time the model waited for the loader (extraction)
    compute_seconds: float = 0.0  # time in the model (extraction)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0

    def line(self, what: str = "slide") -> str:
        text = (f"{len(self.done)} {what}(s) done, {len(self.skipped)} already complete, "
                f"{len(self.failed)} failed; {self.tiles} tiles in {self.seconds:.1f} s "
                f"({self.tiles_per_second:.1f} tiles/s)")
        if self.failed:
            item, reason = self.failed[0]["item"], self.failed[0]["reason"]
            text += f"; first failure: {reason if Path(item).name in reason else f'{item}: {reason}'}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed, "tiles": self.tiles,
                "seconds": round(self.seconds, 3), "tiles_per_second": round(self.tiles_per_second, 2),
                "load_wait_seconds": round(self.load_wait_seconds, 3),
                "compute_seconds": round(self.compute_seconds, 3)}


def finish_batch(summary: BatchSummary, failures: FailureLog, start: float) -> BatchSummary:
    """Close a batch: its wall time, ``failures.jsonl`` written, the failed items listed."""
    summary.seconds = time.perf_counter() - start
    failures.write()
    summary.failed = list(failures.items)
    return summary


def record_item(summary: BatchSummary, failures: FailureLog, item: str, tiles: int, error: str | None) -> None:
    """One slide (or coords file) finished: a failure, or done with its tile count."""
    if error:
        failures.add(item, error)
    else:
        summary.done.append(item)
        summary.tiles += tiles


def extraction_todo(source: str | Path | list, out_dir: str | Path, encoder_name: str
                    ) -> tuple[Path, FailureLog, BatchSummary, list[Path]]:
    """(out_dir, failure log, summary with the skipped files, coords files still to encode with the encoder)."""
    files = _coords_files(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures, summary = FailureLog(out_dir / "failures.jsonl"), BatchSummary()
    todo = [f for f in files if not is_complete(out_dir / f.name, need_features=True, encoder=encoder_name)]
    summary.skipped = [str(f) for f in files if f not in todo]
    return out_dir, failures, summary, todo


def _progress(iterable, total: int, desc: str, show: bool):
    if not show:
        return iterable

    return tqdm(iterable, total=total, desc=desc, unit="slide")


# ------------------------------------------------------------------------------------------------ tiling


def tile_slide(slide_path: str | Path, out_dir: str | Path, mpp: float = 0.5, size: int = 256,
               min_tissue: float = 0.1, overlap: int = 0, slide_mpp: float | None = None,
               thumbnail_size: int = 1024, figure: bool = True) -> tuple[Path, int]:
    """Tile one slide: write ``<out>/<stem>.h5`` (coords) and ``<out>/<stem>.png``; returns (path, n tiles)."""
    slide_path = Path(slide_path)
    out_dir = Path(out_dir)
    with Slide(slide_path, slide_mpp=slide_mpp) as slide:
        grid = tile_grid(slide, mpp=mpp, size=size, min_tissue=min_tissue, overlap=overlap,
                         thumbnail_size=thumbnail_size)
        plan = grid.plan
        _check_readable(slide, plan_tiles(slide, mpp, size, overlap), grid.coords)
        attrs = plan_attrs(plan, slide_path) | {
            "overlap": int(overlap), "min_tissue": float(min_tissue), "width": slide.dimensions[0],
            "height": slide.dimensions[1], "vendor": slide.vendor,
        }
    out = out_dir / f"{slide_path.stem}.h5"
    _remove_stale_temps(out_dir, slide_path.stem)
    write_features(out, grid.coords, attrs)
    if figure:
        tile_grid_figure(grid.thumbnail, grid.mask.scale, grid.coords, plan.patch_size_level0,
                         mask=grid.mask.mask, out_path=out_dir / f"{slide_path.stem}.png",
                         title=f"{slide_path.name}: {len(grid.coords)} tiles of {size} px at {mpp} mpp")
    return out, len(grid.coords)


def _remove_stale_temps(out_dir: Path, stem: str) -> None:
    """Temporary files a killed earlier run left for this slide (``atomic_path`` names them ``.<stem>.*.tmp*``)."""
    for stale in out_dir.glob(f".{stem}.*.tmp*"):
        stale.unlink(missing_ok=True)


def _check_readable(slide, plan: TilePlan, coords: np.ndarray) -> None:
    """Read a few tiles spread over the slide so a truncated file fails here, not halfway through extraction."""
    if len(coords) == 0:
        return
    picks = np.unique(np.linspace(0, len(coords) - 1, num=min(len(coords), 8)).astype(int))
    for i in picks:
        read_tile(slide, int(coords[i, 0]), int(coords[i, 1]), plan)
    last = slide.dimensions  # the far corner lives in the last tiles written to level 0
    slide.read_region(max(0, last[0] - 16), max(0, last[1] - 16), 0, 16, 16)


def plan_attrs(plan: TilePlan, slide_path: str | Path) -> dict[str, Any]:
    """HDF5 attributes of a tile plan (the contract's names plus what is needed to read the tiles again)."""
    return {
        "mpp": plan.mpp, "patch_size": plan.size, "patch_size_level0": plan.patch_size_level0,
        "level": plan.level, "slide": Path(slide_path).name, "slide_path": str(Path(slide_path).resolve()),
        "slide_mpp": plan.slide_mpp, "downsample": plan.downsample, "read_size": plan.read_size,
        "stride_level0": plan.stride_level0,
    }


def plan_from_attrs(attrs: dict[str, Any]) -> TilePlan:
    return TilePlan(mpp=float(attrs["mpp"]), size=int(attrs["patch_size"]), slide_mpp=float(attrs["slide_mpp"]),
                    level=int(attrs["level"]), downsample=float(attrs["downsample"]),
                    read_size=int(attrs["read_size"]), patch_size_level0=int(attrs["patch_size_level0"]),
                    stride_level0=int(attrs["stride_level0"]))


def tile_slides(slides: list[str | Path], out_dir: str | Path, mpp: float = 0.5, size: int = 256,
                min_tissue: float = 0.1, overlap: int = 0, slide_mpp: float | None = None,
                thumbnail_size: int = 1024, figure: bool = True, progress: bool = True) -> BatchSummary:
    """Tile many slides (resumable); failures go to ``<out>/failures.jsonl``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = FailureLog(out_dir / "failures.jsonl")
    summary = BatchSummary()
    start = time.perf_counter()
    for slide_path in _progress(slides, len(slides), "tile", progress):
        slide_path = Path(slide_path)
        out = out_dir / f"{slide_path.stem}.h5"
        if is_complete(out) and (not figure or out.with_suffix(".png").is_file()):
            summary.skipped.append(str(slide_path))
            continue
        try:
            _, n = tile_slide(slide_path, out_dir, mpp=mpp, size=size, min_tissue=min_tissue, overlap=overlap,
                              slide_mpp=slide_mpp, thumbnail_size=thumbnail_size, figure=figure)
        except Exception as err:  # one bad slide must not stop the batch
            failures.add(str(slide_path), err)
            continue
        summary.done.append(str(slide_path))
        summary.tiles += n
    return finish_batch(summary, failures, start)


# ------------------------------------------------------------------------------------------------ features


def _device_of(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def encode_slide(coords_file: str | Path, model, preprocess, device: str = "cpu", batch_size: int = 64,
                 workers: int = 0, slide_mpp: float | None = None, summary: BatchSummary | None = None,
                 slides_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Features (N, D) float32 of the tiles listed in a coords file; returns (coords, features, attrs).

    The coords file is pathkit's, or CLAM's / TRIDENT's (their slide is found by name in ``slides_dir``).
    """
    import torch

    coords, _, attrs = read_features(coords_file)
    slide_path, plan, attrs = tile_source(coords_file, attrs, slides_dir, slide_mpp)
    dataset = SlideTileDataset(slide_path, coords, plan, resize=preprocess.resize, crop=preprocess.size,
                               slide_mpp=slide_mpp)
    if len(dataset):
        _ = dataset.slide  # open in the main process first: a bad slide fails here with its one-line error
    cuda = device.startswith("cuda")
    loader = make_loader(dataset, batch_size=batch_size, workers=workers, pin_memory=cuda)
    mean = torch.as_tensor(preprocess.mean.ravel())
    std = torch.as_tensor(preprocess.std.ravel())
    dim = int(getattr(model, "dim", 0)) or None
    chunks: list[np.ndarray] = []
    wait = compute = 0.0
    t_wait = time.perf_counter()
    with torch.inference_mode():
        for tiles, _xy in loader:
            t0 = time.perf_counter()
            wait += t0 - t_wait
            x = normalize_batch(tiles.to(device, non_blocking=True), mean, std)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(x)
            else:
                out = model(x)
            chunks.append(out.float().cpu().numpy())
            t_wait = time.perf_counter()
            compute += t_wait - t0
    features = np.concatenate(chunks) if chunks else np.zeros((0, dim or 0), np.float32)
    if summary is not None:
        summary.load_wait_seconds += wait
        summary.compute_seconds += compute
    return coords, features.astype(np.float32), attrs


PLAN_KEYS = ("slide_path", "read_size", "slide_mpp", "downsample", "stride_level0")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")


def tile_source(coords_file: str | Path, attrs: dict[str, Any], slides_dir: str | Path | None = None,
                slide_mpp: float | None = None) -> tuple[Path, TilePlan, dict[str, Any]]:
    """(slide path, tile plan, attrs completed with pathkit's names) for a pathkit, CLAM or TRIDENT coords file."""
    name = str(attrs.get("name") or Path(coords_file).stem)  # CLAM and TRIDENT name the slide without its suffix
    if all(k in attrs for k in PLAN_KEYS):
        slide_path = Path(attrs["slide_path"])
        if slides_dir is not None:
            slide_path = find_slide(slides_dir, str(attrs["slide"]), coords_file)
        elif not slide_path.is_file():  # moved together with the coords file
            slide_path = Path(coords_file).parent / attrs["slide"]
        return slide_path, plan_from_attrs(attrs), attrs
    if slides_dir is None:
        raise PathkitError(f"{coords_file}: a {attrs.get('format', 'foreign')} coords file names no slide file; "
                           f"pass --slides DIR holding {name}.<svs|tiff|...>")
    slide_path = find_slide(slides_dir, name, coords_file)
    size = int(attrs.get("patch_size") or attrs["patch_size_level0"])
    overlap = int(attrs.get("overlap") or 0)
    with Slide(slide_path, slide_mpp=slide_mpp, require_mpp=False) as slide:
        if slide.mpp is None and attrs.get("level0_magnification"):  # TRIDENT's convention: 10 / magnification
            slide.mpp = 10.0 / float(attrs["level0_magnification"])
        footprint = int(attrs["patch_size_level0"])
        stride = footprint - int(round(overlap * footprint / size))
        plan = plan_for_footprint(slide, footprint, size, stride_level0=stride)
    return slide_path, plan, dict(attrs) | plan_attrs(plan, slide_path)


def find_slide(slides_dir: str | Path, name: str, coords_file: str | Path) -> Path:
    """The slide file called ``name`` (any slide suffix, or the exact file name) in ``slides_dir``."""
    slides_dir = Path(slides_dir)
    exact = slides_dir / name
    if exact.is_file():
        return exact
    found = sorted(p for p in slides_dir.glob(f"{glob.escape(name)}.*") if p.suffix.lower() in SLIDE_SUFFIXES)
    if not found:
        raise PathkitError(f"{coords_file}: no slide named {name!r} in {slides_dir} (looked for "
                           f"{name}.<{'|'.join(s.lstrip('.') for s in SLIDE_SUFFIXES[:4])}|...>)")
    return found[0]


def _coords_files(source: str | Path | list) -> list[Path]:
    if isinstance(source, (list, tuple)):
        return [Path(p) for p in source]
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise PathkitError(f"{source}: no such file or directory of coords files")
    return sorted(p for p in source.glob("*.h5") if not p.name.startswith("."))


def extract_features(source: str | Path | list, encoder: str | Path, out_dir: str | Path, *,
                     load_encoder: EncoderLoader, batch_size: int = 64, workers: int = 0,
                     device: str | None = None, slide_mpp: float | None = None, progress: bool = True,
                     slides_dir: str | Path | None = None) -> BatchSummary:
    """Encode the tiles of every coords file in ``source`` with ``encoder`` -> ``<out>/<stem>.h5`` (resumable).

    ``load_encoder(encoder, device)`` builds the model, once and only when a file needs it
    (:func:`pathkit.models.encoders.load_encoder`: slides are a lower layer than models, so the caller passes it).
    ``source`` may be the output folder itself (coords-only files are then replaced by coords + features).
    Coords files from CLAM (``patches/<slide>.h5``) or TRIDENT need ``slides_dir``, where each slide is found
    by its name.
    """
    import torch

    device = _device_of(device)
    encoder_name = str(encoder)
    out_dir, failures, summary, todo = extraction_todo(source, out_dir, encoder_name)
    if not todo:
        failures.write()
        return summary
    model, preprocess, dim = load_encoder(encoder_name, device=device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    model.dim = dim
    start = time.perf_counter()
    for coords_file in _progress(todo, len(todo), "extract", progress):
        try:
            coords, features, attrs = encode_slide(coords_file, model, preprocess, device=device,
                                                   batch_size=batch_size, workers=workers,
                                                   slide_mpp=slide_mpp, summary=summary, slides_dir=slides_dir)
            attrs = dict(attrs, encoder=encoder_name, feature_dim=int(features.shape[1]))
            _remove_stale_temps(out_dir, coords_file.stem)
            write_features(out_dir / coords_file.name, coords, attrs, features=features)
        except Exception as err:
            failures.add(str(coords_file), err)
            continue
        summary.done.append(str(coords_file))
        summary.tiles += len(coords)
    return finish_batch(summary, failures, start)
