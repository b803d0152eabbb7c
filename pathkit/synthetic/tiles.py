"""A folder of synthetic tissue tiles with captions, LLaVA conversations and evaluation questions.

Layout written by :func:`ensure_tile_dataset` (into a temporary folder renamed into place under a lock, with
``done.json`` last, so a folder under its name is complete and never rebuilt while another run reads it)::

    root/images/<label>_<i>.png
    root/metadata.jsonl          {"id", "image", "label", "attributes", "caption", "split"}
    root/train_llava.json        LLaVA conversations of the train split (kind "caption" and kind "qa")
    root/train_captions.json     one ``<image>`` -> caption record per training tile (captions/describe/pairs)
    root/heldout_llava.json      the same for the held-out split
    root/train_questions.jsonl   evaluation questions {"question_id", "image", "text", "answer",
    root/heldout_questions.jsonl  "answer_type", "category", "label"}
    root/done.json               the parameters the folder was built with

Image paths inside the files are relative to ``root`` (LLaVA's ``--image_folder`` is ``root``).
Every tile is a pure function of ``(seed, class, index)``: rebuilding gives identical bytes.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pathkit.config import SyntheticConfig
from pathkit.io import (
    PathkitError,
    folder_lock,
    read_json,
    read_jsonl,
    replace_folder,
    write_json,
    write_jsonl,
)
from pathkit.synthetic.text import caption_for, questions_for
from pathkit.synthetic.tissue import CLASSES, render_tissue, sample_attributes

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.

CAPTION_PROMPTS = (
    "Describe this histopathology image.",
    "What do you see in this H&E image?",
    "Give a short description of the tissue shown.",
    "Provide a brief caption for this image.",
)
_FILES = {"images": "images", "metadata": "metadata.jsonl", "train_llava": "train_llava.json",
          "train_captions": "train_captions.json",
          "heldout_llava": "heldout_llava.json", "train_questions": "train_questions.jsonl",
          "heldout_questions": "heldout_questions.jsonl", "done": "done.json"}


@dataclass
class TileDataset:
    """A complete tile folder: ``root`` and the ``paths`` of its parts (keys as in the module docstring)."""

    root: Path
    paths: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def at(cls, root: str | Path) -> TileDataset:
        root = Path(root)
        return cls(root=root, paths={k: root / v for k, v in _FILES.items()})

    def metadata(self, split: str | None = None) -> list[dict[str, Any]]:
        """Rows of ``metadata.jsonl``, optionally only one split (``train`` or ``heldout``)."""
        rows = read_jsonl(self.paths["metadata"])
        return [r for r in rows if split is None or r["split"] == split]

    def questions(self, split: str = "heldout") -> list[dict[str, Any]]:
        return read_jsonl(self.paths[f"{split}_questions"])

    def llava(self, split: str = "train") -> list[dict[str, Any]]:
        return read_json(self.paths[f"{split}_llava"])

    def image_path(self, row: dict[str, Any]) -> Path:
        return self.root / row["image"]

    def load_image(self, row: dict[str, Any]) -> np.ndarray:
        """The tile of a metadata/question row as uint8 RGB (H, W, 3)."""
        path = self.image_path(row)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (FileNotFoundError, OSError) as err:
            raise PathkitError(f"{path}: cannot read image ({err.__class__.__name__})") from err


def tile_scale(tile_size: int) -> float:
    """Magnification of the painted tissue: 1 up to 96 px tiles, growing to 3x at >= 288 px."""
    return float(np.clip(tile_size / 96.0, 1.0, 3.0))


def split_sizes(tiles_per_class: int, heldout_fraction: float) -> tuple[int, int]:
    """(train, heldout) counts per class; at least one held-out tile and one training tile when possible."""
    heldout = max(1, int(round(tiles_per_class * heldout_fraction)))
    if tiles_per_class > 1:
        heldout = min(heldout, tiles_per_class - 1)
    return tiles_per_class - heldout, heldout


def half_with_mitoses(n: int, rng: np.random.Generator) -> np.ndarray:
    """Which of ``n`` tumour tiles get mitoses: exactly ``n // 2``, split evenly between even positions (tissue
    question answered yes) and odd ones (answered no), so one answer never hints at the other. (n,) bool."""
    out = np.zeros(n, bool)
    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)
    k_even = len(even) // 2
    out[rng.permutation(even)[:k_even]] = True
    out[rng.permutation(odd)[:n // 2 - k_even]] = True
    return out


def _build_params(cfg: SyntheticConfig, seed: int) -> dict[str, Any]:
    return {"seed": int(seed), "tile_size": cfg.tile_size, "tiles_per_class": cfg.tiles_per_class,
            "heldout_fraction": cfg.heldout_fraction, "classes": list(CLASSES), "version": 6}


def _is_complete(ds: TileDataset, params: dict[str, Any]) -> bool:
    done = ds.paths["done"]
    if not done.exists():
        return False
    try:
        built = read_json(done)
    except PathkitError:
        return False
    return isinstance(built, dict) and all(built.get(k) == v for k, v in params.items())


def make_tile_record(label: str, index: int, split_index: int, seed: int, tile_size: int,
                     mitoses: bool | None = None) -> tuple[np.ndarray, dict[str, Any], list[dict[str, Any]]]:
    """Render one tile and write its text: (image, metadata row without split/image, questions).

    ``split_index`` (position of the tile inside its class and split) alternates the yes/no answers of the
    tissue question; ``mitoses`` (tumour only) overrides the sampled attribute, so a builder can give exactly
    half of the tumour tiles mitoses. Both keep closed questions balanced: chance is 0.5.
    """
    class_index = CLASSES.index(label)
    rng = np.random.default_rng([seed, class_index, index])
    text_rng = np.random.default_rng([seed, class_index, index, 1])
    attrs = sample_attributes(label, rng)
    if label == "tumor" and mitoses is not None:
        attrs["mitoses"] = bool(mitoses)
    attrs["scale"] = tile_scale(tile_size)
    image = render_tissue(label, tile_size, tile_size, rng, **attrs)
    caption = caption_for(label, attrs, text_rng)
    questions = questions_for(label, attrs, text_rng, yes=split_index % 2 == 0)
    row = {"id": f"{label}_{index:05d}", "label": label, "attributes": attrs, "caption": caption}
    return image, row, questions


def _llava_records(row: dict[str, Any], questions: list[dict[str, Any]], rng: np.random.Generator
                   ) -> list[dict[str, Any]]:
    prompt = CAPTION_PROMPTS[int(rng.integers(0, len(CAPTION_PROMPTS)))]
    caption = {"id": f"{row['id']}_caption", "image": row["image"], "label": row["label"], "kind": "caption",
               "conversations": [{"from": "human", "value": f"<image>\n{prompt}"},
                                 {"from": "gpt", "value": row["caption"]}]}
    turns = []
    for i, q in enumerate(questions):
        turns.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + q["text"]})
        turns.append({"from": "gpt", "value": q["answer"]})
    qa = {"id": f"{row['id']}_qa", "image": row["image"], "label": row["label"], "kind": "qa",
          "conversations": turns}
    return [caption, qa]


def _write_tile(job: tuple[str, int, str, int, bool, int, int, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Render one tile, write its PNG, return (metadata row, questions). Runs in worker processes too."""
    import cv2

    label, i, split, split_index, mitoses, seed, tile_size, root = job
    image, row, qs = make_tile_record(label, i, split_index, seed, tile_size, mitoses=mitoses)
    rel = f"images/{row['id']}.png"
    if not cv2.imwrite(str(Path(root) / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise PathkitError(f"{Path(root) / rel}: could not write PNG")
    return {"id": row["id"], "image": rel, "label": label, "attributes": row["attributes"],
            "caption": row["caption"], "split": split}, qs


def ensure_tile_dataset(root: str | Path, cfg: SyntheticConfig, seed: int = 0, progress: bool = True,
                        workers: int | None = None) -> TileDataset:
    """Build the tile folder under ``root``, or reuse it when ``done.json`` says it is complete.

    The build holds a lock beside ``root`` and writes a temporary folder that is renamed onto ``root`` when
    complete: runs that share ``root`` build it once, and a reader never sees a half-built folder. A folder
    built with other parameters is replaced (callers that vary the seed or sizes give each set its own
    ``root``, as :func:`pathkit.workdir.tile_root` does). ``cfg.tiles_per_class`` tiles of each class in
    ``CLASSES`` at ``cfg.tile_size`` px. ``workers``: processes that paint tiles (default: 1 below 2,000 tiles,
    else every CPU); the files are identical whatever the number.
    """
    ds = TileDataset.at(root)
    params = _build_params(cfg, seed)
    if _is_complete(ds, params):
        return ds
    with folder_lock(ds.root):
        if _is_complete(ds, params):  # another run built it while this one waited
            return ds
        tmp = ds.root.parent / f".{ds.root.name}.build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _build_tiles(TileDataset.at(tmp), cfg, params, seed, progress, workers)
        replace_folder(tmp, ds.root)
    return ds


def _build_tiles(ds: TileDataset, cfg: SyntheticConfig, params: dict[str, Any], seed: int, progress: bool,
                 workers: int | None) -> None:
    ds.paths["images"].mkdir(parents=True, exist_ok=True)
    n_train, n_heldout = split_sizes(cfg.tiles_per_class, cfg.heldout_fraction)
    with_mitoses = {split: half_with_mitoses(n, np.random.default_rng([seed, 99, k]))
                    for k, (split, n) in enumerate((("train", n_train), ("heldout", n_heldout)))}
    jobs = []
    for label in CLASSES:
        for i in range(cfg.tiles_per_class):
            split = "train" if i < n_train else "heldout"
            split_index = i if split == "train" else i - n_train
            jobs.append((label, i, split, split_index, bool(with_mitoses[split][split_index]), int(seed),
                         cfg.tile_size, str(ds.root)))
    if workers is None:
        workers = 1 if len(jobs) < 2000 else (os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="synthetic tiles", disable=not progress, leave=False)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = []
            for result in pool.map(_write_tile, jobs, chunksize=16):
                results.append(result)
                bar.update()
    else:
        results = []
        for job in jobs:
            results.append(_write_tile(job))
            bar.update()
    bar.close()

    metadata: list[dict[str, Any]] = []
    llava: dict[str, list] = {"train": [], "heldout": []}
    questions: dict[str, list] = {"train": [], "heldout": []}
    for (label, i, split, *_), (row, qs) in zip(jobs, results):
        metadata.append(row)
        llava[split].extend(_llava_records(row, qs, np.random.default_rng([seed, CLASSES.index(label), i, 2])))
        for q in qs:
            questions[split].append({"question_id": f"{row['id']}_{q['category']}", "image": row["image"],
                                     "text": q["text"], "answer": q["answer"], "answer_type": q["answer_type"],
                                     "category": q["category"], "label": label})
    write_jsonl(ds.paths["metadata"], metadata)
    for split in ("train", "heldout"):
        write_json(ds.paths[f"{split}_llava"], llava[split], indent=1)
        write_jsonl(ds.paths[f"{split}_questions"], questions[split])
    captions = [{"id": r["id"], "image": r["image"], "label": r["label"],
                 "conversations": [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": r["caption"]}]}
                for r in metadata if r["split"] == "train"]
    write_json(ds.paths["train_captions"], captions, indent=1)
    write_json(ds.paths["done"], {**params, "tiles": len(metadata), "train_per_class": n_train,
                                  "heldout_per_class": n_heldout})
