"""Procedural H&E-like tissue with ground truth: six classes whose morphology a model has to look at.

An H&E image is two dyes seen through a microscope: hematoxylin stains nuclei blue-purple, eosin stains
cytoplasm and collagen pink, and empty space (lumina, fat, glass) stays white. Following Beer-Lambert, each
pixel's optical density is a sum of dye concentrations times the dyes' optical-density vectors,
``OD = c_H * od_H + c_E * od_E`` and ``RGB = 255 * exp(-OD)``. We therefore paint two concentration maps
(hematoxylin and eosin), blur them like optics do, and convert; stain variation between "labs" is a small
perturbation of the two OD vectors and their strengths.

Classes and what tells them apart (``CLASSES``):
    tumor        crowded, large, pleomorphic, hyperchromatic nuclei; mitotic figures when ``mitoses``;
                 pleomorphism and size grow with ``grade`` 1-3.
    stroma       pink wavy collagen fibres with sparse spindle (elongated) nuclei aligned to them.
    lymphocytes  dense small round very dark nuclei with scant cytoplasm.
    necrosis     pink granular debris, nuclear dust (karyorrhexis) and a few shrunken pyknotic nuclei.
    gland        white lumina ringed by columnar epithelium whose nuclei sit radially around the lumen.
    adipose      large empty polygonal cells with thin pink membranes.

Everything is vectorised numpy + OpenCV (polygon vertices computed for all nuclei at once and filled by OpenCV,
Voronoi fat cells from ``cv2.distanceTransformWithLabels``), so one call paints tens of megapixels per second
and slides of any size can be painted tile by tile. A tile is a pure function of ``(label, size, rng state,
attrs)``. To make neighbouring tiles of one region look alike, pass the same ``attrs`` (from
``sample_attributes``) and the same ``stain`` (from ``sample_stain``) to every tile of that region.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("tumor", "stroma", "lymphocytes", "necrosis", "gland", "adipose")

# Ruifrok & Johnston optical-density vectors (rows: hematoxylin, eosin), unit length.
_OD_H = np.array([0.650, 0.704, 0.286], dtype=np.float32)
_OD_E = np.array([0.072, 0.990, 0.105], dtype=np.float32)


# --------------------------------------------------------------------------------------------------- attributes


def sample_stain(rng: np.random.Generator, strength: float = 1.0) -> dict[str, Any]:
    """A lab's stain: perturbed H and E optical-density vectors and dye strengths (JSON-serialisable).

    ``strength`` scales the perturbation (0 gives the textbook Ruifrok vectors).
    """
    def perturb(v: np.ndarray) -> list[float]:
        p = np.clip(v + rng.normal(0.0, 0.05 * strength, 3), 0.02, None)
        return (p / np.linalg.norm(p)).round(4).tolist()

    return {
        "od_h": perturb(_OD_H),
        "od_e": perturb(_OD_E),
        "h_strength": float(np.round(1.0 + rng.normal(0.0, 0.08 * strength), 3)),
        "e_strength": float(np.round(1.0 + rng.normal(0.0, 0.10 * strength), 3)),
        "background_od": float(np.round(0.03 + abs(rng.normal(0.0, 0.01 * strength)), 4)),
    }


def sample_attributes(label: str, rng: np.random.Generator) -> dict[str, Any]:
    """Ground-truth attributes of one tile of class ``label`` (plain JSON types).

    Every class has ``nuclear_density`` (target fraction of the area covered by nuclei, 0-1), ``grade``
    (1-3 for tumour, None elsewhere) and ``mitoses`` (mitotic figures present; only tumour can have them).
    Class-specific keys: tumour ``pleomorphism``; stroma ``fibre_angle`` (degrees); necrosis
    ``karyorrhexis`` (nuclear dust amount, 0-1); gland ``lumen_radius`` (px); adipose ``cell_size`` (px).
    """
    _check_label(label)
    u = rng.uniform
    attrs: dict[str, Any] = {"grade": None, "mitoses": False}
    if label == "tumor":
        grade = int(rng.integers(1, 4))
        attrs.update(grade=grade, mitoses=bool(rng.random() < 0.5),
                     nuclear_density=round(u(0.38, 0.46) + 0.05 * (grade - 1), 3),
                     pleomorphism=round(u(0.15, 0.25) + 0.12 * (grade - 1), 3))
    elif label == "stroma":
        attrs.update(nuclear_density=round(u(0.03, 0.08), 3), fibre_angle=round(u(0.0, 180.0), 1))
    elif label == "lymphocytes":
        attrs.update(nuclear_density=round(u(0.45, 0.60), 3))
    elif label == "necrosis":
        attrs.update(nuclear_density=round(u(0.02, 0.05), 3), karyorrhexis=round(u(0.4, 1.0), 3))
    elif label == "gland":
        attrs.update(nuclear_density=round(u(0.10, 0.18), 3), lumen_radius=round(u(7.0, 13.0), 2))
    elif label == "adipose":
        attrs.update(nuclear_density=round(u(0.002, 0.01), 4), cell_size=round(u(22.0, 34.0), 2))
    return attrs


def _check_label(label: str) -> None:
    if label not in CLASSES:
        raise ValueError(f"label={label!r}: must be one of {CLASSES}")


# --------------------------------------------------------------------------------------------------- primitives


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Low-frequency noise, roughly N(0, 1), features about ``cell`` pixels across: (h, w) float32."""
    gh, gw = int(np.ceil(h / cell)) + 3, int(np.ceil(w / cell)) + 3
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    big = cv2.resize(grid, (int((gw - 1) * cell), int((gh - 1) * cell)), interpolation=cv2.INTER_CUBIC)
    oy, ox = int(rng.integers(0, max(1, int(cell)))), int(rng.integers(0, max(1, int(cell))))
    return big[oy:oy + h, ox:ox + w]


def _fine_noise(rng: np.random.Generator, h: int, w: int, sigma: float = 0.0) -> np.ndarray:
    """Per-pixel noise, optionally blurred to grains of about ``sigma`` px, rescaled to unit std."""
    n = rng.standard_normal((h, w), dtype=np.float32)
    if sigma > 0:
        n = cv2.GaussianBlur(n, (0, 0), sigma)
        n *= 1.0 / max(float(n.std()), 1e-6)
    return n


def _positions(rng: np.random.Generator, n: int, h: int, w: int, margin: float) -> np.ndarray:
    """``n`` uniform (x, y) centres over the tile extended by ``margin`` (shapes are cut by the border)."""
    xy = rng.random((n, 2), dtype=np.float32)
    xy[:, 0] = xy[:, 0] * (w + 2 * margin) - margin
    xy[:, 1] = xy[:, 1] * (h + 2 * margin) - margin
    return xy


def _count(density: float, h: int, w: int, mean_area: float, margin: float, rng: np.random.Generator) -> int:
    """Number of shapes so that they cover about ``density`` of the (margin-extended) area."""
    expected = density * (h + 2 * margin) * (w + 2 * margin) / max(mean_area, 1e-3)
    return int(rng.poisson(expected))


def _polygons(rng: np.random.Generator, centers: np.ndarray, a: np.ndarray, b: np.ndarray, angle: np.ndarray,
              irregularity: float, vertices: int = 10) -> np.ndarray:
    """Irregular ellipse-like polygons, (N, K, 2) int32 in 1/4-pixel units (``cv2.fillPoly`` shift=2)."""
    n = len(centers)
    t = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False, dtype=np.float32)[None, :]  # (1, K)
    wobble = 1.0 + irregularity * rng.uniform(-1.0, 1.0, (n, vertices)).astype(np.float32)  # (N, K)
    ex = a[:, None] * np.cos(t) * wobble
    ey = b[:, None] * np.sin(t) * wobble
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    px = centers[:, 0:1] + ex * ca - ey * sa
    py = centers[:, 1:2] + ex * sa + ey * ca
    return np.round(np.stack([px, py], axis=-1) * 4.0).astype(np.int32)


def _fill(canvas: np.ndarray, polys: np.ndarray, values: np.ndarray) -> None:
    """Fill each polygon with its value (later ones on top), then keep the max with what ``canvas`` holds.

    One ``cv2.fillPoly`` call per polygon: a single call with many contours would XOR their overlaps into
    holes. The loop costs about as much as that single call (~6 us per polygon).
    """
    if len(polys) == 0:
        return
    layer = np.zeros_like(canvas)
    for poly, value in zip(polys, values.tolist()):
        cv2.fillPoly(layer, [poly], value, cv2.LINE_8, 2)
    np.maximum(canvas, layer, out=canvas)


def _nuclei(canvas: np.ndarray, rng: np.random.Generator, centers: np.ndarray, radius: float,
            radius_sd: float, aspect: float, intensity: float, intensity_sd: float, irregularity: float,
            angle: np.ndarray | None = None, scale: float = 1.0) -> None:
    """Paint nuclei (hematoxylin concentration) at ``centers``; ``aspect`` < 1 makes them elongated."""
    n = len(centers)
    if n == 0:
        return
    r = np.clip(rng.normal(radius, radius_sd, n), 0.4 * radius, None).astype(np.float32) * scale
    asp = np.clip(rng.normal(aspect, 0.08, n), 0.15, 1.0).astype(np.float32)
    a, b = r / np.sqrt(asp), r * np.sqrt(asp)
    ang = rng.uniform(0, np.pi, n).astype(np.float32) if angle is None else angle.astype(np.float32)
    polys = _polygons(rng, centers, a, b, ang, irregularity)
    vals = np.clip(rng.normal(intensity, intensity_sd, n), 0.3, 2.5).astype(np.float32)
    _fill(canvas, polys, vals)


def _mitotic_figures(ch: np.ndarray, ce: np.ndarray, rng: np.random.Generator, count: int, scale: float) -> None:
    """Mitotic figures: a metaphase plate (dense ragged bar of chromosomes) in a cleared halo of cytoplasm."""
    h, w = ch.shape
    for _ in range(count):
        cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
        theta = rng.uniform(0, 180)
        length = rng.uniform(5.0, 7.0) * scale  # half length of the plate
        centre = (int(round(cx)), int(round(cy)))
        halo = (int(round(length * 1.5)), int(round(length * 1.2)))
        cv2.ellipse(ch, centre, halo, theta, 0, 360, 0.05, -1)
        cv2.ellipse(ce, centre, halo, theta, 0, 360, 0.15, -1)
        plate = (int(round(length)), max(1, int(round(1.8 * scale))))
        cv2.ellipse(ch, centre, plate, theta, 0, 360, 2.8, -1)
        s = rng.uniform(-1.0, 1.0, 8) * length
        t = np.deg2rad(theta)
        xs = cx + s * np.cos(t) + rng.normal(0, 1.5 * scale, 8)
        ys = cy + s * np.sin(t) + rng.normal(0, 1.5 * scale, 8)
        for x, y in zip(xs, ys):  # chromosome arms sticking out of the plate
            cv2.circle(ch, (int(round(x)), int(round(y))), max(1, int(round(1.3 * scale))), 2.8, -1)


# --------------------------------------------------------------------------------------------------- classes
# Each painter returns (hematoxylin, eosin) concentration maps, float32 (H, W).


def _paint_tumor(h, w, rng, attrs, scale):
    grade = int(attrs.get("grade") or 2)
    pleo = float(attrs.get("pleomorphism", 0.3))
    ce = 0.38 + 0.06 * _smooth_noise(rng, h, w, 24 * scale)  # cytoplasm, slightly basophilic
    ch = np.full((h, w), 0.10, np.float32) + 0.03 * _smooth_noise(rng, h, w, 12 * scale)
    radius = (5.0 + 0.8 * (grade - 1)) * scale
    n = _count(float(attrs.get("nuclear_density", 0.4)), h, w, np.pi * (radius ** 2) * 1.1, 2 * radius, rng)
    centers = _positions(rng, n, h, w, 2 * radius)
    nuc = np.zeros((h, w), np.float32)
    _nuclei(nuc, rng, centers, radius / scale, (0.9 + 2.5 * pleo), 0.75, 1.35 + 0.1 * grade, 0.25,
            irregularity=0.10 + 0.35 * pleo, scale=scale)
    chromatin = 1.0 + 0.22 * _fine_noise(rng, h, w, 0.8 * scale)  # coarse clumped chromatin
    ch = np.maximum(ch, nuc * chromatin)
    ce = np.where(nuc > 0, ce * 0.6, ce)
    if attrs.get("mitoses"):
        count = max(1, int(round(h * w / (96 * 96 * scale * scale) * 0.5)))
        _mitotic_figures(ch, ce, rng, int(rng.integers(1, count + 1)), scale)
    return ch, ce


def _wavy_fibres(h, w, rng, angle_deg, scale):
    """Collagen: a stripe pattern bent by smooth noise (waves), sharpened; values ~0-1, (H, W)."""
    theta = np.deg2rad(angle_deg)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = xx * np.float32(np.sin(theta)) - yy * np.float32(np.cos(theta))  # across the fibres
    period = rng.uniform(5.0, 7.5) * scale
    phase = u * np.float32(2 * np.pi / period) + 4.5 * _smooth_noise(rng, h, w, 22 * scale)
    stripes = 0.5 + 0.5 * np.cos(phase)
    return stripes * (0.55 + 0.45 * np.clip(0.5 + 0.5 * _smooth_noise(rng, h, w, 9 * scale), 0, 1))


def _paint_stroma(h, w, rng, attrs, scale):
    angle = float(attrs.get("fibre_angle", 0.0))
    fibres = _wavy_fibres(h, w, rng, angle, scale)
    gaps = np.clip(0.8 + 0.5 * _smooth_noise(rng, h, w, 14 * scale), 0.0, 1.0)  # loose, paler areas
    ce = (0.30 + 0.45 * fibres) * gaps + 0.05
    ch = np.zeros((h, w), np.float32)
    radius = 2.6
    n = _count(float(attrs.get("nuclear_density", 0.05)), h, w, np.pi * radius * radius * scale * scale,
               10 * scale, rng)
    centers = _positions(rng, n, h, w, 10 * scale)
    angles = np.deg2rad(angle) + rng.normal(0, 0.15, n)  # along the fibres
    _nuclei(ch, rng, centers, radius, 0.3, 0.12, 1.25, 0.15, irregularity=0.05, angle=angles, scale=scale)
    return ch, ce


def _paint_lymphocytes(h, w, rng, attrs, scale):
    ce = 0.20 + 0.05 * _smooth_noise(rng, h, w, 20 * scale)
    ch = np.full((h, w), 0.06, np.float32)
    radius = 2.6
    n = _count(float(attrs.get("nuclear_density", 0.5)), h, w, np.pi * radius * radius * scale * scale,
               5 * scale, rng)
    centers = _positions(rng, n, h, w, 5 * scale)
    nuc = np.zeros((h, w), np.float32)
    _nuclei(nuc, rng, centers, radius, 0.25, 0.92, 1.75, 0.15, irregularity=0.04, scale=scale)
    ch = np.maximum(ch, nuc)
    return ch, ce


def _paint_necrosis(h, w, rng, attrs, scale):
    granular = _fine_noise(rng, h, w, 0.9 * scale)
    blotches = _smooth_noise(rng, h, w, 16 * scale)
    ce = 0.62 + 0.14 * granular + 0.12 * blotches  # eosinophilic, granular, smudgy
    ch = 0.20 + 0.07 * granular + 0.05 * blotches  # diffuse basophilic haze of nuclear debris
    dust = np.zeros((h, w), np.float32)
    kary = float(attrs.get("karyorrhexis", 0.7))
    n = _count(0.02 + 0.05 * kary, h, w, np.pi * 1.0 * scale * scale, 2 * scale, rng)
    _nuclei(dust, rng, _positions(rng, n, h, w, 2 * scale), 1.0, 0.35, 0.85, 1.2, 0.3, irregularity=0.3,
            scale=scale)
    pyk = _count(float(attrs.get("nuclear_density", 0.03)), h, w, np.pi * 4.0 * scale * scale, 3 * scale, rng)
    _nuclei(dust, rng, _positions(rng, pyk, h, w, 3 * scale), 2.0, 0.3, 0.9, 2.0, 0.2, irregularity=0.1,
            scale=scale)
    ch = np.maximum(ch, dust)
    ce = np.clip(ce, 0.3, None)
    return ch, ce


def _paint_gland(h, w, rng, attrs, scale):
    r_lumen = float(attrs.get("lumen_radius", 10.0)) * scale
    epi = 5.5 * scale  # epithelial thickness
    fibres = _wavy_fibres(h, w, rng, rng.uniform(0, 180), scale)
    ce = 0.22 + 0.25 * fibres  # loose stroma between glands
    ch = np.zeros((h, w), np.float32)
    spacing = 2 * (r_lumen + epi) + 6 * scale
    gy, gx = np.mgrid[-1:int(h / spacing) + 2, -1:int(w / spacing) + 2]
    centers = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32) * spacing
    centers += rng.uniform(0, spacing, 2).astype(np.float32)  # random grid offset
    centers += rng.normal(0, 0.15 * spacing, centers.shape).astype(np.float32)
    lumen = np.zeros((h, w), np.uint8)
    epithelium = np.zeros((h, w), np.uint8)
    nuc_centers, nuc_angles = [], []
    for cx, cy in centers:
        a = r_lumen * rng.uniform(0.8, 1.25)
        b = r_lumen * rng.uniform(0.6, 1.0)
        rot = rng.uniform(0, 180)
        cv2.ellipse(epithelium, (int(cx), int(cy)), (int(a + epi), int(b + epi)), rot, 0, 360, 1, -1)
        cv2.ellipse(lumen, (int(cx), int(cy)), (int(a), int(b)), rot, 0, 360, 1, -1)
        ring_a, ring_b = a + 0.6 * epi, b + 0.6 * epi  # nuclei basal in the epithelium
        perimeter = np.pi * (ring_a + ring_b)
        k = max(6, int(perimeter / (4.6 * scale)))
        t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 1)
        ex, ey = ring_a * np.cos(t), ring_b * np.sin(t)
        cr, sr = np.cos(np.deg2rad(rot)), np.sin(np.deg2rad(rot))
        nuc_centers.append(np.stack([cx + ex * cr - ey * sr, cy + ex * sr + ey * cr], 1))
        nuc_angles.append(np.arctan2(ex * sr + ey * cr, ex * cr - ey * sr))  # radial: columnar cells
    epithelium = epithelium.astype(bool)
    lumen = lumen.astype(bool)
    ce = np.where(epithelium, 0.42 + 0.05 * _smooth_noise(rng, h, w, 10 * scale), ce)
    ch = np.where(epithelium, 0.08, ch).astype(np.float32)
    nc = np.concatenate(nuc_centers).astype(np.float32)
    na = np.concatenate(nuc_angles).astype(np.float32)
    nc += rng.normal(0, 0.4 * scale, nc.shape).astype(np.float32)
    nuc = np.zeros((h, w), np.float32)
    _nuclei(nuc, rng, nc, 2.1, 0.2, 0.4, 1.2, 0.15, irregularity=0.06, angle=na, scale=scale)
    ch = np.maximum(ch, nuc)
    ce = np.where(lumen, 0.02, ce)
    ch = np.where(lumen & (nuc == 0), 0.0, ch)
    return ch.astype(np.float32), ce.astype(np.float32)


def _paint_adipose(h, w, rng, attrs, scale):
    size = float(attrs.get("cell_size", 28.0)) * scale
    pad = int(size)
    H, W = h + 2 * pad, w + 2 * pad
    gy, gx = np.mgrid[0:int(H / size) + 1, 0:int(W / size) + 1]
    seeds = (np.stack([gx.ravel(), gy.ravel()], 1) + 0.5 + rng.uniform(-0.35, 0.35, (gx.size, 2))) * size
    seeds = np.clip(seeds, 0, [W - 1, H - 1]).astype(np.int64)
    img = np.full((H, W), 255, np.uint8)
    img[seeds[:, 1], seeds[:, 0]] = 0
    _, labels = cv2.distanceTransformWithLabels(img, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    labels = labels[pad:pad + h, pad:pad + w]
    edge = np.zeros((h, w), np.uint8)
    edge[:, 1:] |= (labels[:, 1:] != labels[:, :-1]).astype(np.uint8)
    edge[1:, :] |= (labels[1:, :] != labels[:-1, :]).astype(np.uint8)
    membrane = cv2.GaussianBlur(edge.astype(np.float32), (0, 0), 0.6 * scale) * 2.2
    ce = 0.02 + np.clip(membrane, 0, 1) * (0.55 + 0.1 * _smooth_noise(rng, h, w, 16 * scale))
    ch = np.zeros((h, w), np.float32)
    ys, xs = np.nonzero(edge)  # flattened nuclei squeezed on membranes
    n = _count(float(attrs.get("nuclear_density", 0.005)), h, w, np.pi * 6.0 * scale * scale, 0, rng)
    if len(xs) and n:
        pick = rng.integers(0, len(xs), n)
        centers = np.stack([xs[pick], ys[pick]], 1).astype(np.float32)
        _nuclei(ch, rng, centers, 2.4, 0.2, 0.2, 1.2, 0.1, irregularity=0.05, scale=scale)
    return ch, ce.astype(np.float32)


_PAINTERS = {"tumor": _paint_tumor, "stroma": _paint_stroma, "lymphocytes": _paint_lymphocytes,
             "necrosis": _paint_necrosis, "gland": _paint_gland, "adipose": _paint_adipose}


# --------------------------------------------------------------------------------------------------- render


def stain_to_rgb(ch: np.ndarray, ce: np.ndarray, stain: dict[str, Any] | None = None,
                 noise: np.ndarray | None = None) -> np.ndarray:
    """Beer-Lambert: hematoxylin and eosin concentration maps (H, W) -> uint8 RGB (H, W, 3).

    ``noise`` (H, W) float32 grey levels is added to every channel (sensor noise). Per channel c:
    ``I_c = 255 * exp(-(c_H * od_H[c] + c_E * od_E[c] + background))``, computed with OpenCV's SIMD kernels.
    """
    stain = stain or {}
    od_h = np.asarray(stain.get("od_h", _OD_H), np.float64) * float(stain.get("h_strength", 1.0))
    od_e = np.asarray(stain.get("od_e", _OD_E), np.float64) * float(stain.get("e_strength", 1.0))
    bg = float(stain.get("background_od", 0.03))
    channels = []
    for c in range(3):
        neg_od = cv2.addWeighted(ch, -od_h[c], ce, -od_e[c], -bg)  # (H, W) float32
        intensity = cv2.exp(neg_od)
        if noise is not None:
            intensity = cv2.scaleAdd(intensity, 255.0, noise)
            np.maximum(intensity, 0.0, out=intensity)
            channels.append(cv2.convertScaleAbs(intensity))  # |x| then saturating cast to uint8
        else:
            channels.append(cv2.convertScaleAbs(intensity, alpha=255.0))
    return cv2.merge(channels)


def render_tissue(label: str, height: int, width: int, rng: np.random.Generator, *,
                  stain: dict[str, Any] | None = None, scale: float = 1.0, blur: float = 0.7,
                  noise: float = 3.0, **attrs: Any) -> np.ndarray:
    """Paint an H&E-like tile of class ``label``: uint8 (height, width, 3).

    Args:
        label: one of ``CLASSES``.
        rng: the only source of randomness; the same generator state gives the same pixels.
        stain: from ``sample_stain``; default: a mild random stain drawn from ``rng``.
        scale: pixels per nominal pixel (nuclei are ~5 px in radius for tumour at scale 1; use 2-3 for
            tiles at 0.5 microns per pixel).
        blur: optical blur sigma in nominal pixels; ``noise``: sensor noise std in grey levels.
        **attrs: ground-truth attributes (``sample_attributes``); missing ones are sampled from ``rng``.
    """
    _check_label(label)
    if height < 1 or width < 1:
        raise ValueError(f"height={height}, width={width}: must be >= 1")
    sampled = sample_attributes(label, rng)
    sampled.update(attrs)
    if stain is None:
        stain = sample_stain(rng, strength=0.5)
    ch, ce = _PAINTERS[label](height, width, rng, sampled, float(scale))
    ch = np.asarray(ch, np.float32)
    ce = np.asarray(ce, np.float32)
    if blur > 0:
        ch = cv2.GaussianBlur(ch, (0, 0), blur * scale)
        ce = cv2.GaussianBlur(ce, (0, 0), blur * scale)
    np.maximum(ch, 0, out=ch)
    np.maximum(ce, 0, out=ce)
    sensor = rng.standard_normal((height, width), dtype=np.float32) * np.float32(noise) if noise > 0 else None
    return stain_to_rgb(ch, ce, stain, sensor)
