"""A torch Dataset over the tiles of one slide, safe with DataLoader worker processes.

openslide handles must not cross a ``fork``: each process (the main one and every DataLoader worker) opens
its own handle on first use (the dataset remembers the pid that opened it). Items are
``(tile, coords)``: ``tile`` a uint8 (3, S, S) tensor, ``coords`` the level-0 (x, y) int64 tensor.

Tiles stay uint8 until they reach the model's device: normalising there (``normalize_batch``) moves 4x fewer
bytes through the loader than float tensors, which is what keeps a GPU fed (the fast path). The reference path
is the encoder's own ``preprocess`` on the same numpy tiles; tests check the two agree.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pathkit.wsi.slide import Slide
from pathkit.wsi.tiling import TilePlan, read_tile

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.


class SlideTileDataset(Dataset):
    """Tiles of ``slide_path`` at ``coords`` read with ``plan``, optionally resized/cropped for an encoder.

    Args:
        slide_path: the slide file.
        coords: (N, 2) level-0 top-left corners.
        plan: how to read a tile (``pathkit.wsi.tiling.plan_tiles``).
        resize: resize the tile's short side to this many pixels (the encoder's ``preprocess.resize``).
        crop: then centre-crop to this size (the encoder's ``preprocess.size``).
        slide_mpp: level-0 mpp override, as given on the command line.
    """

    def __init__(self, slide_path: str | Path, coords: np.ndarray, plan: TilePlan, resize: int | None = None,
                 crop: int | None = None, slide_mpp: float | None = None):
        self.slide_path = str(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.plan = plan
        self.resize = resize
        self.crop = crop
        self.slide_mpp = slide_mpp
        self._slide: Slide | None = None
        self._pid: int | None = None

    @property
    def slide(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():  # first use in this process
            self._slide = Slide(self.slide_path, slide_mpp=self.slide_mpp or self.plan.slide_mpp)
            self._pid = os.getpid()
        return self._slide

    def __len__(self) -> int:
        return len(self.coords)

    def read(self, index: int) -> np.ndarray:
        """The tile as (S, S, 3) uint8 numpy (after resize/crop)."""
        import cv2

        x, y = self.coords[index]
        tile = read_tile(self.slide, int(x), int(y), self.plan)
        if self.resize and self.resize != tile.shape[0]:
            interp = cv2.INTER_AREA if self.resize < tile.shape[0] else cv2.INTER_CUBIC
            tile = cv2.resize(tile, (self.resize, self.resize), interpolation=interp)
        if self.crop and self.crop < tile.shape[0]:
            o = (tile.shape[0] - self.crop) // 2
            tile = tile[o:o + self.crop, o:o + self.crop]
        return tile

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tile = np.ascontiguousarray(self.read(index).transpose(2, 0, 1))  # (3, S, S)
        return torch.from_numpy(tile), torch.from_numpy(self.coords[index].copy())

    def __getstate__(self):  # never pickle an open handle into a worker
        state = self.__dict__.copy()
        state["_slide"] = None
        state["_pid"] = None
        return state


def normalize_batch(tiles: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> normalised float (B, 3, S, S) on the tiles' device."""
    mean_t = torch.as_tensor(mean, dtype=dtype, device=tiles.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=dtype, device=tiles.device).view(1, 3, 1, 1)
    return (tiles.to(dtype) / 255.0 - mean_t) / std_t


def make_loader(dataset: Dataset, batch_size: int = 64, workers: int = 0, pin_memory: bool = False):
    """A DataLoader whose workers start from a clean ``forkserver`` process (never a fork of a threaded parent).

    Forking a parent that runs other threads (progress bars, thread pools, BLAS/OpenMP, glib inside openslide)
    can deadlock a child that then takes a lock one of those threads held; the forkserver is a fresh
    single-threaded process with pathkit's reader preloaded, so workers still start in milliseconds.
    """
    kwargs = {}
    if workers > 0:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["pathkit.wsi.dataset", "pathkit.wsi.slide", "pathkit.wsi.tiling"])
        # (torch already sets one intra-op thread per worker; calling cv2.setNumThreads or torch.set_num_threads
        # in a *forked* worker can hang on the parent's thread-pool locks, so pathkit does neither.)
        kwargs = dict(multiprocessing_context=ctx, prefetch_factor=4, persistent_workers=False)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory, **kwargs)
