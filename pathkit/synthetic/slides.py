"""Synthetic whole-slide images with ground truth: pyramidal TIFF / Aperio SVS that openslide opens.

A slide is a handful of tissue regions ("blobs": ellipses with a wavy rim) of the classes in
``pathkit.synthetic.tissue.CLASSES`` on white glass. Regions are analytic shapes, so the label of any point is
known exactly at any resolution: the level-0 pixels are painted from the same function that draws the
ground-truth label map (``<stem>.labels.png``, 0 = background, ``i + 1`` = ``CLASSES[i]``).

Slide-level diagnosis (4-way, for WSI-LLaVA): the class group with the largest tissue area decides.

    adenocarcinoma    tumour + glands dominate
    lymphoma          lymphocytes dominate
    fibrosis          stroma dominates
    necrotic tumour   necrosis dominates (with viable tumour around it)

How the file is written (why it opens in openslide, see shared/reference/ecosystem.md A.9): every level is a
tiled top-level page (no SubIFDs, no OME), reduced levels carry ``subfiletype=1``, pixels are 8-bit RGB, mpp
is in the first page's resolution tags in centimetres (generic-tiff) or in an Aperio ``ImageDescription``
(``fmt="svs"``: vendor ``aperio``, ``AppMag``, ``MPP``). Level 0 is painted one row of tiles at a time and
handed to tifffile as an iterator of already-encoded JPEG tiles; each band is downsampled on the fly into the
next level's buffer (a disk-backed memmap when large), so a 100,000 x 100,000 slide never sits whole in memory.

``fast=True`` (benchmarks, giant slides) paints tissue by cropping a small bank of pre-rendered textures per
region instead of rendering every tile, and reuses one encoded background tile for empty glass.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pathkit.io import PathkitError, atomic_path, read_json, read_jsonl, write_json, write_jsonl
from pathkit.synthetic.text import report_for_slide
from pathkit.synthetic.tissue import CLASSES, render_tissue, sample_attributes, sample_stain
from pathkit.wsi.slide import Slide
from pathkit.wsi.tissue import tissue_mask

# Lazy imports: cv2 (OpenCV, ~0.3 s); imagecodecs (imagecodecs' native codecs); tifffile (tifffile, ~0.1 s).
# They load inside the functions that need them, not when this module is imported.

DIAGNOSES: dict[str, tuple[str, ...]] = {
    "adenocarcinoma": ("tumor", "gland"),
    "lymphoma": ("lymphocytes",),
    "fibrosis": ("stroma",),
    "necrotic tumour": ("necrosis",),
}
BACKGROUND_RGB = (242, 240, 243)  # clean glass, slightly off-white like a real scan
_MINOR_CLASSES = ("tumor", "stroma", "lymphocytes", "necrosis", "gland", "adipose")


@dataclass
class SlideTruth:
    """Ground truth of one synthetic slide (also written as ``<stem>.truth.json``)."""

    slide: str  # file path
    width: int
    height: int
    mpp: float
    fmt: str
    diagnosis: str
    report: str
    regions: list[dict[str, Any]]  # {"label", "cx", "cy", "rx", "ry", "angle", "wobble", "attributes", "stain"}
    class_fractions: dict[str, float]  # fraction of the tissue area per class
    tissue_fraction: float  # tissue area / slide area
    labels: str  # path of the label map PNG
    labels_downsample: int  # level-0 pixels per label-map pixel
    level_dimensions: list[list[int]] = field(default_factory=list)
    seed: int = 0

    @property
    def truth_path(self) -> Path:
        return truth_path_for(self.slide)

    def label_map(self) -> np.ndarray:
        """The ground-truth label map (H / labels_downsample, W / labels_downsample) uint8."""
        return np.asarray(Image.open(self.labels))

    @classmethod
    def load(cls, slide_or_truth: str | Path) -> SlideTruth:
        """Read the truth of a slide (pass the slide path or its ``.truth.json``)."""
        path = Path(slide_or_truth)
        if not path.name.endswith(".truth.json"):
            path = truth_path_for(path)
        data = read_json(path)
        try:
            return cls(**data)
        except TypeError as err:
            raise PathkitError(f"{path}: not a slide truth file ({err})") from err


def truth_path_for(slide: str | Path) -> Path:
    slide = Path(slide)
    return slide.with_name(f"{slide.stem}.truth.json")


def labels_path_for(slide: str | Path) -> Path:
    slide = Path(slide)
    return slide.with_name(f"{slide.stem}.labels.png")


# ----------------------------------------------------------------------------------------------- regions


def _blob(rng: np.random.Generator, label: str, cx: float, cy: float, r: float) -> dict[str, Any]:
    aspect = rng.uniform(0.65, 1.0)
    return {
        "label": label, "cx": float(cx), "cy": float(cy), "rx": float(r), "ry": float(r * aspect),
        "angle": float(rng.uniform(0, np.pi)),
        # rim: r(theta) = 1 + sum a_k sin(k theta + phi_k), k = 2..5
        "wobble": [[int(k), float(rng.uniform(0.02, 0.08)), float(rng.uniform(0, 2 * np.pi))] for k in range(2, 6)],
        "attributes": sample_attributes(label, rng),
        "stain": sample_stain(rng, strength=0.5),
    }


def _layout(rng: np.random.Generator, width: int, height: int, diagnosis: str) -> list[dict[str, Any]]:
    """Regions in paint order (later ones cover earlier ones): the dominant group first, minor regions on top."""
    side = min(width, height)
    dominant = DIAGNOSES[diagnosis]
    regions = []
    n_big = int(rng.integers(2, 4))
    for i in range(n_big):
        label = dominant[0] if (i == 0 or len(dominant) == 1) else dominant[i % len(dominant)]
        if diagnosis == "necrotic tumour" and i == n_big - 1:
            label = "tumor"  # viable rim around the necrosis, drawn first below
        r = side * rng.uniform(0.16, 0.24)
        cx = rng.uniform(0.3, 0.7) * width
        cy = rng.uniform(0.3, 0.7) * height
        regions.append(_blob(rng, label, cx, cy, r))
    if diagnosis == "necrotic tumour":
        regions.sort(key=lambda b: b["label"] != "tumor")  # tumour under the necrosis
    others = [c for c in _MINOR_CLASSES if c not in dominant]
    for _ in range(int(rng.integers(3, 6))):
        label = str(rng.choice(others))
        r = side * rng.uniform(0.05, 0.10)
        if rng.random() < 0.5 and regions:  # on the edge of a big region
            host = regions[int(rng.integers(0, n_big))]
            t = rng.uniform(0, 2 * np.pi)
            cx, cy = host["cx"] + host["rx"] * np.cos(t), host["cy"] + host["ry"] * np.sin(t)
        else:  # a separate fragment
            cx, cy = rng.uniform(0.12, 0.88) * width, rng.uniform(0.12, 0.88) * height
        regions.append(_blob(rng, label, cx, cy, r))
    if diagnosis == "adenocarcinoma":  # glands inside the tumour
        host = regions[0]
        for _ in range(2):
            t, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.5)
            regions.append(_blob(rng, "gland", host["cx"] + d * host["rx"] * np.cos(t),
                                 host["cy"] + d * host["ry"] * np.sin(t), side * rng.uniform(0.06, 0.09)))
    return regions


def label_field(regions: list[dict[str, Any]], x0: float, y0: float, w: int, h: int, step: float = 1.0
                ) -> np.ndarray:
    """Labels (h, w) uint8 at the pixel centres of a grid: x = x0 + (i + 0.5) * step (level-0 coordinates)."""
    out = np.zeros((h, w), np.uint8)
    x1, y1 = x0 + w * step, y0 + h * step
    xs = (x0 + (np.arange(w, dtype=np.float32) + 0.5) * step)[None, :]
    ys = (y0 + (np.arange(h, dtype=np.float32) + 0.5) * step)[:, None]
    for reg in regions:
        reach = max(reg["rx"], reg["ry"]) * 1.35
        if reg["cx"] + reach < x0 or reg["cx"] - reach > x1 or reg["cy"] + reach < y0 or reg["cy"] - reach > y1:
            continue
        dx, dy = xs - np.float32(reg["cx"]), ys - np.float32(reg["cy"])
        c, s = np.float32(math.cos(reg["angle"])), np.float32(math.sin(reg["angle"]))
        u = (dx * c + dy * s) / np.float32(reg["rx"])
        v = (-dx * s + dy * c) / np.float32(reg["ry"])
        rho2 = u * u + v * v  # (h, w)
        theta = np.arctan2(v, u)
        rim = np.ones_like(theta)
        for k, amp, phase in reg["wobble"]:
            rim += np.float32(amp) * np.sin(np.float32(k) * theta + np.float32(phase))
        out[rho2 < rim * rim] = CLASSES.index(reg["label"]) + 1
    return out


# ----------------------------------------------------------------------------------------------- painting


class _Painter:
    """Paints level-0 tiles from the regions: ``render_tissue`` per tile, or crops of a texture bank (fast)."""

    def __init__(self, regions, mpp: float, seed: int, fast: bool, tile: int):
        self.regions, self.seed, self.fast, self.tile = regions, seed, fast, tile
        self.scale = 1.0 / mpp  # nuclei ~8-10 microns across at any mpp
        self.render = render_tissue
        self.bank: dict[int, list[np.ndarray]] = {}
        if fast:
            for i, reg in enumerate(regions):
                rng = np.random.default_rng([seed, 7, i])
                self.bank[i] = [self._render(reg, 4 * tile, 4 * tile, rng) for _ in range(2)]

    def _render(self, reg, h, w, rng):
        return self.render(reg["label"], h, w, rng, stain=reg["stain"], scale=self.scale, **reg["attributes"])

    def paint(self, x0: int, y0: int, h: int, w: int) -> np.ndarray:
        """The level-0 pixels of the box (x0, y0, w, h): (h, w, 3) uint8."""
        if self.fast:  # labels on a 4 px lattice, repeated: 16x fewer trig evaluations, 4 px staircase rims
            coarse = label_field(self.regions, x0, y0, -(-w // 4), -(-h // 4), 4)
            labels = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:h, :w]
        else:
            labels = label_field(self.regions, x0, y0, w, h)
        img = np.empty((h, w, 3), np.uint8)
        img[:] = BACKGROUND_RGB
        if not labels.any():
            return img
        region_of_label: dict[int, int] = {}
        for i, reg in enumerate(self.regions):  # the last region of a class carries its texture
            region_of_label[CLASSES.index(reg["label"]) + 1] = i
        for value in np.unique(labels[labels > 0]):
            i = region_of_label[int(value)]
            reg = self.regions[i]
            if self.fast:
                rng = np.random.default_rng([self.seed, x0, y0, i])
                src = self.bank[i][int(rng.integers(0, len(self.bank[i])))]
                oy, ox = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
                texture = src[oy:oy + h, ox:ox + w]
            else:
                texture = self._render(reg, h, w, np.random.default_rng([self.seed, x0, y0, i]))
            mask = labels == value
            if mask.all():
                img[:] = texture
            else:
                img[mask] = texture[mask]
        return img


# ----------------------------------------------------------------------------------------------- writing


def _level_dims(width: int, height: int, tile: int, factor: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while max(dims[-1]) > tile and min(dims[-1]) // factor >= 1:
        w, h = dims[-1]
        dims.append((w // factor, h // factor))
    return dims


def _downsample_band(band: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``factor`` x ``factor`` blocks (rows/cols beyond a multiple of factor dropped)."""
    import cv2

    h, w = band.shape[0] // factor, band.shape[1] // factor
    if h == 0 or w == 0:
        return np.zeros((h, w, 3), np.uint8)
    return cv2.resize(np.ascontiguousarray(band[:h * factor, :w * factor]), (w, h), interpolation=cv2.INTER_AREA)


class _Encoder:
    """Encodes tiles to the bytes tifffile stores; constant background tiles are encoded once."""

    def __init__(self, compression: str, quality: int, tile: int):
        import imagecodecs

        self.codecs, self.compression, self.quality, self.tile = imagecodecs, compression, quality, tile
        self._background: bytes | None = None

    def __call__(self, tile_px: np.ndarray) -> bytes:
        t = self.tile
        if tile_px.shape[:2] != (t, t):  # edge tile: pad to the full tile (tifffile expects full tiles)
            padded = np.empty((t, t, 3), np.uint8)
            padded[:] = BACKGROUND_RGB
            padded[:tile_px.shape[0], :tile_px.shape[1]] = tile_px
            tile_px = padded
        is_background = tile_px[0, 0, 0] == BACKGROUND_RGB[0] and (tile_px == BACKGROUND_RGB).all()
        if is_background and self._background is not None:
            return self._background
        data = self._encode(np.ascontiguousarray(tile_px))
        if is_background:
            self._background = data
        return data

    def _encode(self, px: np.ndarray) -> bytes:
        if self.compression == "jpeg":
            return self.codecs.jpeg_encode(px, level=self.quality, colorspace="RGB", outcolorspace="YCBCR",
                                           subsampling=(2, 2))
        if self.compression in ("zlib", "deflate"):
            return self.codecs.zlib_encode(px, level=6)
        return px.tobytes()


def _tiff_compression(compression: str) -> Any:
    return {"jpeg": "jpeg", "zlib": "zlib", "deflate": "zlib", "none": None}[compression]


def write_slide(path: str | Path, width: int, height: int, mpp: float = 0.5, seed: int = 0, fmt: str = "tiff",
                compression: str = "jpeg", diagnosis: str | None = None, tile: int = 256, *,
                level_factor: int = 2, quality: int = 80, fast: bool = False, labels_max: int = 2048,
                workers: int = 2, record_mpp: bool = True) -> SlideTruth:
    """Write a pyramidal synthetic slide and its ground truth; returns the :class:`SlideTruth`.

    Args:
        path: output file (``.tiff``/``.tif`` for generic-tiff, ``.svs`` for Aperio); written atomically.
        width, height: level-0 size in pixels (any size; edge tiles are padded with glass).
        mpp: microns per level-0 pixel (resolution tags / Aperio ``MPP``; AppMag = 10 / mpp).
        fmt: ``"tiff"`` (generic-tiff) or ``"svs"`` (Aperio description, JPEG only).
        compression: ``"jpeg"`` (default), ``"zlib"`` or ``"none"``.
        diagnosis: one of ``DIAGNOSES`` (default: drawn from the seed).
        tile: TIFF tile edge (multiple of 16). level_factor: downsample between levels (2; real scanners use 4).
        quality: JPEG quality. fast: texture-bank painting for giant slides (benchmarks).
        labels_max: longest side of the label map; its downsample is the smallest power of 2 that fits.
        workers: threads painting/encoding tiles.
        record_mpp: False writes no physical resolution (a slide without mpp, to test that error path).
    """
    import tifffile

    path = Path(path)
    if fmt not in ("tiff", "svs"):
        raise PathkitError(f"{path}: fmt={fmt!r}: must be tiff or svs")
    if compression not in ("jpeg", "zlib", "deflate", "none"):
        raise PathkitError(f"{path}: compression={compression!r}: must be jpeg, zlib or none")
    if fmt == "svs" and not record_mpp:
        raise PathkitError(f"{path}: an Aperio slide always records its MPP (use fmt='tiff')")
    if fmt == "svs" and compression != "jpeg":
        raise PathkitError(f"{path}: the Aperio format needs compression='jpeg'")
    if tile % 16 or tile < 16:
        raise PathkitError(f"{path}: tile={tile}: must be a multiple of 16")
    if width < 64 or height < 64:
        raise PathkitError(f"{path}: size {width}x{height}: must be at least 64x64")
    rng = np.random.default_rng([seed, 1])
    if diagnosis is None:
        diagnosis = str(rng.choice(list(DIAGNOSES)))
    if diagnosis not in DIAGNOSES:
        raise PathkitError(f"{path}: diagnosis={diagnosis!r}: must be one of {list(DIAGNOSES)}")

    # Regions: redraw until the diagnosis's class group really dominates the tissue area.
    ds = 1
    while max(width, height) / ds > labels_max:
        ds *= 2
    lw, lh = math.ceil(width / ds), math.ceil(height / ds)
    for _attempt in range(50):
        regions = _layout(rng, width, height, diagnosis)
        labels = label_field(regions, 0, 0, lw, lh, ds)
        counts = np.bincount(labels.ravel(), minlength=len(CLASSES) + 1)[1:]
        tissue = counts.sum()
        fractions = {c: float(n / tissue) for c, n in zip(CLASSES, counts, strict=True)} if tissue else {}
        group = {d: sum(fractions.get(c, 0.0) for c in cs) for d, cs in DIAGNOSES.items()}
        if tissue and max(group, key=group.get) == diagnosis and group[diagnosis] >= 0.45:
            break
    else:
        raise PathkitError(f"{path}: could not lay out a slide whose tissue is dominated by {diagnosis!r}")

    dims = _level_dims(width, height, tile, level_factor)
    painter = _Painter(regions, mpp, seed, fast, tile)
    encoder = _Encoder(compression, quality, tile)
    pool = ThreadPoolExecutor(max(1, workers))
    tmpdir = tempfile.TemporaryDirectory(prefix=".pathkit-slide-", dir=path.parent if path.parent.exists() else None)

    def buffer(w: int, h: int) -> np.ndarray:  # the next level: in memory when small, else a disk memmap
        if w * h * 3 <= 256 * 2**20:
            return np.empty((h, w, 3), np.uint8)
        return np.lib.format.open_memmap(Path(tmpdir.name) / f"level_{w}x{h}.npy", "w+", np.uint8, (h, w, 3))

    levels: list[np.ndarray | None] = [None] + [buffer(w, h) for w, h in dims[1:2]]

    def level0_tiles() -> Iterator[bytes]:
        band_rows = tile
        for y0 in range(0, height, band_rows):
            bh = min(band_rows, height - y0)
            boxes = [(x0, y0, bh, min(tile, width - x0)) for x0 in range(0, width, tile)]
            tiles = list(pool.map(lambda b: painter.paint(*b), boxes))
            if len(dims) > 1:
                band = np.concatenate(tiles, axis=1)  # (bh, width, 3)
                small = _downsample_band(band, level_factor)
                r0 = y0 // level_factor
                levels[1][r0:r0 + small.shape[0]] = small[:, :dims[1][0]][: dims[1][1] - r0]
            yield from pool.map(encoder, tiles)

    def level_tiles(k: int) -> Iterator[bytes]:
        src = levels[k]
        w, h = dims[k]
        if k + 1 < len(dims):  # fill the next level from this one, band by band
            levels.append(buffer(*dims[k + 1]))
            step = tile * level_factor
            for y0 in range(0, h, step):
                small = _downsample_band(np.asarray(src[y0:y0 + step]), level_factor)
                r0 = y0 // level_factor
                levels[k + 1][r0:r0 + small.shape[0]] = small[:, :dims[k + 1][0]][: dims[k + 1][1] - r0]
        for y0 in range(0, h, tile):
            band = np.asarray(src[y0:y0 + tile])
            yield from pool.map(encoder, [band[:, x0:x0 + tile] for x0 in range(0, w, tile)])

    common = dict(photometric="rgb", compression=_tiff_compression(compression), tile=(tile, tile),
                  dtype=np.uint8, metadata=None)
    if compression == "jpeg":
        common["subsampling"] = (2, 2)
    res = (1e4 / mpp, 1e4 / mpp)
    unit = "CENTIMETER" if record_mpp else "NONE"
    if not record_mpp:
        res = (1.0, 1.0)
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            description = None
            if fmt == "svs":
                description = (f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
                               f"({tile}x{tile}) JPEG/RGB Q={quality}|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"
                               f"|Filename = {path.stem}|pathkit = synthetic seed {seed}")
            tw.write(level0_tiles(), shape=(height, width, 3), resolution=res, resolutionunit=unit,
                     description=description, **common)
            for k in range(1, len(dims)):
                w, h = dims[k]
                f = width / w
                tw.write(level_tiles(k), shape=(h, w, 3), subfiletype=1, resolution=(res[0] / f, res[1] / f),
                         resolutionunit=unit, **common)
                levels[k] = None  # free the buffer
    finally:
        pool.shutdown()
        levels.clear()
        tmpdir.cleanup()

    # Ground truth sidecars.

    labels_png = labels_path_for(path)
    with atomic_path(labels_png) as tmp:
        Image.fromarray(labels).save(tmp, format="PNG")
    attributes = {r["label"]: r["attributes"] for r in regions}
    report = report_for_slide(diagnosis, fractions, np.random.default_rng([seed, 2]), attributes)
    truth = SlideTruth(
        slide=str(path), width=width, height=height, mpp=float(mpp), fmt=fmt, diagnosis=diagnosis, report=report,
        regions=regions, class_fractions={c: round(f, 4) for c, f in fractions.items()},
        tissue_fraction=round(float(tissue / labels.size), 4), labels=str(labels_png), labels_downsample=ds,
        level_dimensions=[list(d) for d in dims], seed=seed,
    )
    write_json(truth_path_for(path), asdict(truth))
    return truth


# ----------------------------------------------------------------------------------------------- slide sets


def ensure_slide_set(root: str | Path, cfg, seed: int = 0) -> list[SlideTruth]:
    """The synthetic slide set of a :class:`~pathkit.config.SyntheticConfig` under ``root`` (reused if complete).

    ``cfg.slide_count`` slides of ``cfg.slide_size`` px at ``cfg.slide_mpp``, diagnoses balanced over
    ``DIAGNOSES`` (shuffled by seed), alternating generic-tiff and Aperio ``.svs``. ``root/slides.jsonl`` lists
    them and is written last, so a set with that manifest (and matching settings) is complete.
    """
    root = Path(root)
    manifest = root / "slides.jsonl"
    settings = {"count": cfg.slide_count, "size": cfg.slide_size, "mpp": cfg.slide_mpp, "seed": seed}
    if manifest.is_file():
        rows = read_jsonl(manifest)
        if rows and rows[0].get("settings") == settings and all(
                Path(r["slide"]).is_file() and truth_path_for(r["slide"]).is_file() for r in rows):
            return [SlideTruth.load(r["slide"]) for r in rows]
    root.mkdir(parents=True, exist_ok=True)
    names = list(DIAGNOSES)
    order = np.random.default_rng([seed, 3]).permutation(cfg.slide_count)
    truths = []
    for i in range(cfg.slide_count):
        diagnosis = names[int(order[i]) % len(names)]
        fmt = "tiff" if i % 2 == 0 else "svs"
        path = root / f"slide_{i:03d}.{fmt}"
        truths.append(write_slide(path, cfg.slide_size, cfg.slide_size, mpp=cfg.slide_mpp, seed=seed * 1000 + i,
                                  fmt=fmt, diagnosis=diagnosis))
    write_jsonl(manifest, [{"slide": t.slide, "diagnosis": t.diagnosis, "settings": settings} for t in truths])
    return truths


# ----------------------------------------------------------------------------------------------- checks


def tile_labels(truth: SlideTruth, coords: np.ndarray, footprint: int) -> np.ndarray:
    """Ground-truth majority class index (0 = background, i + 1 = CLASSES[i]) of each level-0 tile box."""
    labels, ds = truth.label_map(), truth.labels_downsample
    out = np.zeros(len(coords), np.int64)
    for i, (x, y) in enumerate(np.asarray(coords)):
        box = labels[int(y) // ds:int(math.ceil((y + footprint) / ds)), int(x) // ds:int(math.ceil((x + footprint) / ds))]
        counts = np.bincount(box.ravel(), minlength=7)
        counts[0] = 0 if counts[1:].any() else counts[0]
        out[i] = int(counts.argmax())
    return out


def tissue_mask_iou(truth: SlideTruth, thumbnail_size: int = 1024) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """IoU of pathkit's tissue mask against the ground truth: (iou, mask, truth mask, thumbnail)."""
    with Slide(truth.slide, slide_mpp=truth.mpp) as slide:
        thumb, scale = slide.thumbnail(thumbnail_size)
    mask = tissue_mask(thumb, scale).mask
    gt = label_field(truth.regions, 0, 0, mask.shape[1], mask.shape[0], scale) > 0
    union = (mask | gt).sum()
    return (float((mask & gt).sum() / union) if union else 1.0), mask, gt, thumb
