"""``pathkit tile|extract --engine ray``: slide batches spread over Ray (a local Ray or a cluster).

Tiling runs one Ray task per slide (1 CPU each). Extraction starts a few long-lived actors, each holding one
encoder (one GPU per actor when the cluster has GPUs, so the model is loaded once per device, not once per
slide), and hands them slides as they free up. Both keep the local pipeline's rules: a slide whose output is
complete is skipped, outputs are written atomically by the worker that made them, and a bad slide is listed
in ``<out>/failures.jsonl`` while the others go on. On a cluster, slides and ``--out`` must be on storage
every node sees.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pathkit.io import FailureLog, one_line
from pathkit.ray_runtime import start_ray
from pathkit.wsi.features import is_complete, write_features
from pathkit.wsi.pipeline import (
    BatchSummary,
    EncoderLoader,
    _device_of,
    _progress,
    _remove_stale_temps,
    encode_slide,
    extraction_todo,
    finish_batch,
    record_item,
    tile_slide,
)

# Lazy imports: ray (Ray, an optional extra that starts a runtime); torch (the model stack, seconds to
# import). They load inside the functions that need them, not when this module is imported.


def _tile_one(slide_path: str, out_dir: str, kwargs: dict[str, Any]) -> tuple[str, int, str | None]:
    try:
        _, n = tile_slide(slide_path, out_dir, **kwargs)
    except Exception as err:  # reported per slide; the batch goes on
        return slide_path, 0, one_line(err)
    return slide_path, n, None


def tile_slides_ray(slides: list[str | Path], out_dir: str | Path, address: str | None = None,
                    progress: bool = True, **kwargs: Any) -> BatchSummary:
    """:func:`pathkit.wsi.pipeline.tile_slides` with one Ray task per slide."""
    import ray

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    failures, summary = FailureLog(out_dir / "failures.jsonl"), BatchSummary()
    figure = kwargs.get("figure", True)
    todo = []
    for slide in map(Path, slides):
        out = out_dir / f"{slide.stem}.h5"
        if is_complete(out) and (not figure or out.with_suffix(".png").is_file()):
            summary.skipped.append(str(slide))
        else:
            todo.append(slide)
    start = time.perf_counter()
    started = start_ray(address) if todo else False
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_tile_one)
        named = {str(s.resolve()): str(s) for s in todo}  # workers get absolute paths; reports name them as given
        refs = [task.remote(s, str(out_dir), kwargs) for s in named]
        for absolute, n, error in _progress(_as_completed(refs), len(refs), "tile (ray)", progress):
            record_item(summary, failures, named[absolute], n, error)
    finally:
        if started:
            ray.shutdown()
    return finish_batch(summary, failures, start)


def _as_completed(refs):
    import ray

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


class SlideEncoder:
    """A Ray actor holding one encoder; ``encode`` writes one slide's features file."""

    def __init__(self, encoder: str, load_encoder: EncoderLoader, out_dir: str, batch_size: int, workers: int,
                 device: str | None, slide_mpp: float | None, slides_dir: str | None = None):
        import torch

        self.device = _device_of(device)
        self.model, self.preprocess, dim = load_encoder(encoder, device=self.device)
        if self.device.startswith("cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.dim = dim
        self.encoder, self.out_dir = encoder, Path(out_dir)
        self.batch_size, self.workers, self.slide_mpp, self.slides_dir = batch_size, workers, slide_mpp, slides_dir

    def encode(self, coords_file: str) -> tuple[str, int, str | None, float, float]:
        """(file, tiles, error, load-wait seconds, compute seconds) for one coords file."""
        part = BatchSummary()
        try:
            coords, features, attrs = encode_slide(coords_file, self.model, self.preprocess, device=self.device,
                                                   batch_size=self.batch_size, workers=self.workers,
                                                   slide_mpp=self.slide_mpp, summary=part,
                                                   slides_dir=self.slides_dir)
            attrs = dict(attrs, encoder=self.encoder, feature_dim=int(features.shape[1]))
            _remove_stale_temps(self.out_dir, Path(coords_file).stem)
            write_features(self.out_dir / Path(coords_file).name, coords, attrs, features=features)
        except Exception as err:
            return coords_file, 0, one_line(err), part.load_wait_seconds, part.compute_seconds
        return coords_file, len(coords), None, part.load_wait_seconds, part.compute_seconds


def extract_features_ray(source: str | Path | list, encoder: str | Path, out_dir: str | Path, *,
                         load_encoder: EncoderLoader, batch_size: int = 64, workers: int = 0, device: str | None = None,
                         slide_mpp: float | None = None, slides_dir: str | Path | None = None,
                         actors: int | None = None, address: str | None = None, progress: bool = True
                         ) -> BatchSummary:
    """:func:`pathkit.wsi.pipeline.extract_features` over Ray actors, one encoder each.

    ``actors``: how many (default: one per GPU in the cluster, else 2); each reserves one GPU when the
    cluster has GPUs and ``device`` is not ``cpu``.
    """
    import ray
    from ray.util import ActorPool

    name = str(encoder)
    out_dir, failures, summary, todo = extraction_todo(source, Path(out_dir).resolve(), name)
    if not todo:
        failures.write()
        return summary
    start = time.perf_counter()
    started = start_ray(address)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0)) if device != "cpu" else 0
        n = max(1, min(actors or gpus or 2, len(todo)))
        actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(SlideEncoder)
        pool = ActorPool([actor_cls.remote(name, load_encoder, str(out_dir), batch_size, workers, device, slide_mpp,
                                           str(Path(slides_dir).resolve()) if slides_dir else None)
                          for _ in range(n)])
        named = {str(f.resolve()): str(f) for f in todo}
        results = pool.map_unordered(lambda a, f: a.encode.remote(f), list(named))
        for absolute, tiles, error, wait, compute in _progress(results, len(todo), "extract (ray)", progress):
            summary.load_wait_seconds += wait
            summary.compute_seconds += compute
            record_item(summary, failures, named[absolute], tiles, error)
    finally:
        if started:
            ray.shutdown()
    return finish_batch(summary, failures, start)
