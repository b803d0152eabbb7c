"""Training data for the VLM stages: LLaVA records -> tokenized, label-masked, padded, length-grouped batches.

Pieces, in the order data flows:

* a stage's records come from its training file (:mod:`pathkit.train.records`: validated, in the stage's view);
* :class:`ConversationDataset` tokenizes a record with the chat template's label mask
  (``pathkit.models.conversation.tokenize_conversation``) and loads its visual input: an image through the
  encoder's preprocessing, or a slide feature file (HDF5 contract) as ``(N, D)`` features and ``(N, 2)`` coords;
* :func:`pad_collate` pads to the longest sequence in the batch (dynamic padding; labels padded with -100);
* :class:`LengthGroupedBatchSampler` shuffles, groups similar lengths into batches (HF's megabatch rule), shards
  batches over DDP ranks, and remembers how far into the epoch it is, so a resumed run continues at the very
  next batch (:class:`ResumableDataLoader` exposes that state to Lightning's checkpoint);
* :class:`VLMDataModule` ties them together for Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from pathkit.curate.llava_format import is_feature_file
from pathkit.io import PathkitError
from pathkit.models.connectors import tile_image
from pathkit.models.conversation import image_token_id, tokenize_conversation
from pathkit.models.encoders import load_encoder
from pathkit.wsi.features import read_features

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------ dataset


def split_validation(records: Sequence[dict[str, Any]], fraction: float, seed: int = 0
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) records: ``fraction`` of the distinct images held out, every record of an image on one
    side (a question about a validation image never trains). Deterministic for ``seed``; order kept."""
    if fraction <= 0:
        return list(records), []

    def key(rec: dict[str, Any]) -> str:
        image = rec.get("image")
        return str(image) if image is not None else f"text:{rec.get('id')}"

    keys = sorted({key(r) for r in records})
    n_val = max(1, int(round(len(keys) * fraction)))
    if n_val >= len(keys):
        raise PathkitError(f"validation split {fraction}: {len(keys)} images leave nothing to train on")
    order = np.random.default_rng(seed).permutation(len(keys))
    held = {keys[i] for i in order[:n_val]}
    train = [r for r in records if key(r) not in held]
    val = [r for r in records if key(r) in held]
    return train, val


class ImageLoader:
    """Path -> (3, S, S) tensor through an encoder's ``preprocess`` (PIL, RGB)."""

    def __init__(self, preprocess: Callable[[list[Any]], torch.Tensor]):
        self.preprocess = preprocess

    def __call__(self, path: str) -> torch.Tensor:
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as err:
            raise PathkitError(f"{path}: cannot read image ({err})") from err
        return self.preprocess([image])[0]


def coords_or_grid(coords: Any, n: int, attrs: dict[str, Any] | None = None) -> np.ndarray:
    """Tile coordinates, or for a feature file without them (a bare WSI-Bench ``.pt`` tensor) a row-major square
    grid: tile i at column ``i % side``, row ``i // side`` (``side = ceil(sqrt(N))``), spaced by the file's
    ``patch_size_level0`` (256 when unknown). The slide encoder needs positions; the true layout is lost in such
    a file, and a compact grid keeps neighbours in the file's order near each other. (N, 2) int64."""
    if coords is not None:
        return np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    step = int((attrs or {}).get("patch_size_level0") or 256)
    side = max(1, math.ceil(math.sqrt(n)))
    i = np.arange(n)
    return np.stack([i % side, i // side], axis=1).astype(np.int64) * step


def image_loader_for(model, cfg) -> Callable[[str], torch.Tensor]:
    """Path -> model input for one image: (3, S, S), or (1 + tiles, 3, S, S) views for a tiling connector."""
    preprocess = getattr(model, "preprocess", None)
    if preprocess is None:
        _, preprocess, _ = load_encoder(cfg.encoder.name)
    if cfg.connector.type != "scale_invariant":
        return ImageLoader(preprocess)

    def load_views(path: str):
        with Image.open(path) as im:
            views, _ = tile_image(im.convert("RGB"), cfg.connector.tile_size, max_tiles=cfg.connector.max_tiles)
        return preprocess(views)  # (1 + tiles, 3, S, S)

    return load_views


class FeatureLoader:
    """Slide feature file -> ``{"features": (N, D) float32, "coords": (N, 2) int64}``: any format
    :func:`pathkit.wsi.features.read_features` reads; coords from :func:`coords_or_grid` when the file has none."""

    def __call__(self, path: str) -> dict[str, torch.Tensor]:
        coords, features, attrs = read_features(path)
        if features is None:
            raise PathkitError(f"{path}: no 'features' dataset (a coords-only file); run pathkit extract first")
        features = np.asarray(features)
        return {"features": torch.as_tensor(features, dtype=torch.float32),
                "coords": torch.as_tensor(coords_or_grid(coords, len(features), attrs), dtype=torch.long)}


class ConversationDataset(Dataset):
    """LLaVA records -> ``{"input_ids", "labels", "image" | "slide_features"/"slide_coords"}`` per item.

    Args:
        records: LLaVA records (``image`` is an image path or a slide feature ``.h5`` path).
        tokenizer: the LLM's tokenizer (with the ``<image>`` token).
        template: chat template name (plain, vicuna_v1, llama3, huatuo).
        max_length: token limit per sequence.
        load_image: path -> (3, S, S) tensor (or any tensor the model takes as an image).
        load_features: path -> {"features", "coords"} for slide feature files.
    """

    def __init__(self, records: list[dict[str, Any]], tokenizer, template: str, max_length: int,
                 load_image: Callable[[str], torch.Tensor] | None = None,
                 load_features: Callable[[str], dict[str, torch.Tensor]] | None = None,
                 visual_token_count: Callable[[int | None], int] | None = None):
        self.records = records
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.load_image = load_image
        self.load_features = load_features or FeatureLoader()
        self.visual_token_count = visual_token_count
        self._cache: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modalities(self) -> list[bool]:
        """True for a record with an image or slide (what LLaVA's modality grouping keeps apart)."""
        return [r.get("image") not in (None, [], "") for r in self.records]

    def _features(self, path: str) -> dict[str, torch.Tensor]:
        if path not in self._cache:  # feature bags are small at tiny scale; load once per worker
            self._cache[path] = self.load_features(path)
        return self._cache[path]

    def _tokens(self, index: int) -> tuple[dict[str, list[int]], int]:
        """The record's whole tokenized conversation, and how many positions its visual tokens add beyond the
        ``<image>`` id they replace (0 without ``visual_token_count``)."""
        rec = self.records[index]
        try:
            tokens = tokenize_conversation(rec["conversations"], self.tokenizer, self.template, None)
        except PathkitError as err:
            raise PathkitError(f"record {rec.get('id', index)}: {err}") from err
        visual = _first_visual(rec)
        if visual is None or self.visual_token_count is None:
            return tokens, 0
        tiles = len(self._features(visual)["features"]) if is_feature_file(visual) else None
        return tokens, self.visual_token_count(tiles) - 1

    def sequence_length(self, index: int) -> int:
        """The record's length in the LLM once its visual tokens are spliced in (what ``max_length`` limits)."""
        tokens, extra = self._tokens(index)
        return len(tokens["input_ids"]) + extra

    def count_truncated(self) -> int:
        """Records longer than ``max_length`` with their visual tokens counted (LLaVA truncates the sequence after
        the image tokens are spliced in); training cuts them there."""
        return sum(self.sequence_length(i) > self.max_length for i in range(len(self.records)))

    @property
    def lengths(self) -> list[int]:
        """Approximate lengths for grouping (LLaVA's ``lengths``: words of all turns)."""
        return [sum(len(t["value"].split()) for t in r["conversations"]) for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        tokens, extra = self._tokens(index)
        # text + visual tokens fit max_length: the text is cut where the spliced sequence would be (never before
        # the <image> id itself, so the image still matches its token)
        ids = tokens["input_ids"]
        image_id = image_token_id(self.tokenizer) if extra else None
        image_at = max((i for i, t in enumerate(ids) if t == image_id), default=-1)
        keep = max(self.max_length - extra, image_at + 1)
        item: dict[str, Any] = {"input_ids": torch.tensor(ids[:keep], dtype=torch.long),
                                "labels": torch.tensor(tokens["labels"][:keep], dtype=torch.long)}
        visual = _first_visual(rec)
        if visual is not None:
            if is_feature_file(visual):
                feats = self._features(visual)
                item["slide_features"], item["slide_coords"] = feats["features"], feats["coords"]
            else:
                if self.load_image is None:
                    raise PathkitError(f"record {rec.get('id', index)}: has an image but no image loader")
                item["image"] = self.load_image(visual)
        return item


def _first_visual(rec: dict[str, Any]) -> str | None:
    """The record's image or slide feature file; of several images the first (PubMedVision rows)."""
    visual = rec.get("image")
    if isinstance(visual, list):
        visual = visual[0] if visual else None
    return visual


def pad_collate(pad_token_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Collate to the longest sequence of the batch (right padding; labels -100, attention mask 0 on pads)."""

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(it["input_ids"]) for it in items)
        n = len(items)
        input_ids = torch.full((n, longest), pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        for i, it in enumerate(items):
            length = len(it["input_ids"])
            input_ids[i, :length] = it["input_ids"]
            labels[i, :length] = it["labels"]
            attention_mask[i, :length] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if all("image" in it for it in items):
            images = [it["image"] for it in items]
            same = all(im.shape == images[0].shape for im in images)
            batch["images"] = torch.stack(images) if same else images  # (B, 3, H, W) or a list (native sizes)
        if all("slide_features" in it for it in items):
            batch["slide_features"] = [it["slide_features"] for it in items]  # list of (N_i, D)
            batch["slide_coords"] = [it["slide_coords"] for it in items]  # list of (N_i, 2)
        return batch

    return collate


# ------------------------------------------------------------------------------------------ sampling


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar length, sharded over DDP ranks, resumable mid-epoch.

    Each epoch: a permutation from ``seed + epoch``; megabatches of ``batch_size * world_size * group`` indices
    are sorted by length (longest first) and cut into batches (HF's LengthGroupedSampler idea); the batch order is
    shuffled; batch ``k * world_size + rank`` goes to ``rank``. With several ranks every rank gets the same number
    of full batches (the tail is dropped); alone, the last partial batch is kept.

    ``state_dict()`` is ``{"epoch", "consumed"}`` where ``consumed`` counts batches the trainer finished; after
    ``load_state_dict`` the next iteration skips those batches of that epoch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, group: int = 8, modalities: Sequence[bool] | None = None):
        self.lengths = np.asarray(lengths)
        # LLaVA's group_by_modality_length: image and text-only samples never share a batch
        self.modalities = None if modalities is None or len(set(modalities)) < 2 else np.asarray(modalities)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank, self.world_size = int(rank), int(world_size)
        self.group = max(1, int(group))
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch finished by the trainer (updated by the runner)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._skip = 0

    def _global_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        g = np.random.default_rng(self.seed + self.epoch)
        order = g.permutation(n) if self.shuffle else np.arange(n)
        if self.modalities is None:
            batches = self._length_grouped(order)
        else:  # each modality grouped by length on its own, in the epoch's order
            batches = self._length_grouped(order[self.modalities[order]])
            batches += self._length_grouped(order[~self.modalities[order]])
        if self.world_size > 1:
            batches = [b for b in batches if len(b) == self.batch_size]
            batches = batches[: len(batches) // self.world_size * self.world_size]
        if self.shuffle:
            perm = g.permutation(len(batches))
            batches = [batches[i] for i in perm]
        return batches

    def _length_grouped(self, order: np.ndarray) -> list[list[int]]:
        """Megabatches of ``batch_size * world_size * group`` indices, sorted by length, cut into batches."""
        mega = self.batch_size * self.world_size * self.group
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = order[start:start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()[self.rank::self.world_size]
        start, self._skip = self._skip, 0
        self.consumed = start
        yield from batches[start:]

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.world_size == 1 and self.modalities is None:
            return math.ceil(n / self.batch_size)
        if self.world_size == 1:
            return len(self._global_batches())
        return len(self._global_batches()) // self.world_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.consumed = self._skip = int(state["consumed"])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints (it is ``_Stateful``)."""

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


class ConsumedBatches(L.Callback):
    """Counts finished training batches on the sampler (what a resumed run must skip)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loader = trainer.train_dataloader
        sampler = getattr(loader, "batch_sampler", None)
        if isinstance(sampler, LengthGroupedBatchSampler):
            sampler.consumed += 1


class VLMDataModule(L.LightningDataModule):
    """Lightning data module over a :class:`ConversationDataset`, with an optional validation dataset (the stage's
    held-out training images, for checkpoint selection; the evaluation questions are separate)."""

    def __init__(self, dataset: ConversationDataset, batch_size: int, pad_token_id: int, seed: int = 0,
                 num_workers: int = 0, shuffle: bool = True, val_dataset: ConversationDataset | None = None):
        super().__init__()
        self.dataset = dataset
        self.val_dataset = val_dataset
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.num_workers = num_workers
        self.shuffle = shuffle

    def batches_per_epoch(self, world_size: int = 1) -> int:
        return len(LengthGroupedBatchSampler(self.dataset.lengths, self.batch_size, world_size=world_size,
                                             modalities=self._modalities()))

    def _modalities(self) -> list[bool] | None:
        return self.dataset.modalities if hasattr(self.dataset, "modalities") else None

    def train_dataloader(self) -> DataLoader:
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = LengthGroupedBatchSampler(self.dataset.lengths, self.batch_size, seed=self.seed,
                                            shuffle=self.shuffle, rank=rank, world_size=world,
                                            modalities=self._modalities())
        generator = torch.Generator().manual_seed(self.seed)  # keeps the global RNG untouched (resume)
        return ResumableDataLoader(self.dataset, batch_sampler=sampler, collate_fn=pad_collate(self.pad_token_id),
                                   num_workers=self.num_workers, generator=generator,
                                   persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            return []
        sampler = LengthGroupedBatchSampler(self.val_dataset.lengths, self.batch_size, shuffle=False)
        return DataLoader(self.val_dataset, batch_sampler=sampler, collate_fn=pad_collate(self.pad_token_id),
                          num_workers=0)
