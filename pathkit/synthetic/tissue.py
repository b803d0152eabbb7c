"""Procedural H&E-like tissue with ground truth: six classes whose morphology a model has to look at.

An H&E image is two dyes seen through a microscope: hematoxylin stains nuclei blue-purple, eosin stains
cytoplasm and collagen pink, and empty space (lumina, fat, glass) stays white. Following Beer-Lambert, each
pixel's optical density is a sum of dye concentrations times the dyes' optical-density vectors,
``OD = c_H * od_H + c_E * od_E`` and ``RGB = 255 * exp(-OD)``. We therefore paint two concentration maps
(hematoxylin and eosin), blur them like optics do, and convert; stain variation between "labs" is a small
perturbation of the two OD vectors and their strengths.

Classes and what tells them apart (``CLASSES``):
    tumor        crowded, large, pleomorphic, hyperchromatic nuclei in a sheet of cells with faint borders;
                 mitotic figures when ``mitoses``; pleomorphism and size grow with ``grade`` 1-3.
    stroma       pink wavy collagen fibres with sparse spindle (elongated) nuclei aligned to them.
    lymphocytes  dense small round very dark nuclei with scant cytoplasm.
    necrosis     pink granular debris, nuclear dust (karyorrhexis), a few shrunken pyknotic nuclei and
                 ghost cells (eosinophilic outlines of dead cells).
    gland        white lumina ringed by columnar epithelium whose nuclei sit radially around the lumen.
    adipose      large empty polygonal cells with thin pink membranes.

Everything is vectorised numpy + OpenCV (polygon vertices computed for all nuclei at once and filled by OpenCV,
Voronoi fat cells from ``cv2.distanceTransformWithLabels``), so one call paints several megapixels per second
and slides of any size can be painted tile by tile. A tile is a pure function of ``(label, size, rng state,
attrs)``. Structures (nuclei, fibres, glands, fat cells, smooth stain variation) are hashed from absolute
pixel coordinates and a ``field_seed``: tiles painted at adjacent ``origin``s with the same ``field_seed``,
``attrs`` (from ``sample_attributes``), ``stain`` (from ``sample_stain``) and ``scale`` join without a seam.
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
    Class-specific keys: tumour ``pleomorphism``; stroma ``fibre_angle`` (degrees, direction the fibres
    run) and ``fibre_period`` (px); necrosis ``karyorrhexis`` (nuclear dust amount, 0-1); gland
    ``lumen_radius`` (px) and ``fibre_angle`` of the stroma between glands; adipose ``cell_size`` (px).
    Sizes are nominal pixels, multiplied by ``render_tissue``'s ``scale``.
    """
    _check_label(label)
    u = rng.uniform
    attrs: dict[str, Any] = {"grade": None, "mitoses": False}
    if label == "tumor":
        grade = int(rng.integers(1, 4))
        attrs.update(grade=grade, mitoses=bool(rng.random() < 0.5),
                     nuclear_density=round(u(0.45, 0.55) + 0.05 * (grade - 1), 3),
                     pleomorphism=round(u(0.15, 0.25) + 0.12 * (grade - 1), 3))
    elif label == "stroma":
        attrs.update(nuclear_density=round(u(0.03, 0.08), 3), fibre_angle=round(u(0.0, 180.0), 1),
                     fibre_period=round(u(5.0, 7.5), 2))
    elif label == "lymphocytes":
        attrs.update(nuclear_density=round(u(0.45, 0.60), 3))
    elif label == "necrosis":
        attrs.update(nuclear_density=round(u(0.02, 0.05), 3), karyorrhexis=round(u(0.4, 1.0), 3))
    elif label == "gland":
        attrs.update(nuclear_density=round(u(0.10, 0.18), 3), lumen_radius=round(u(7.0, 13.0), 2),
                     fibre_angle=round(u(0.0, 180.0), 1))
    elif label == "adipose":
        attrs.update(nuclear_density=round(u(0.002, 0.01), 4), cell_size=round(u(22.0, 34.0), 2))
    return attrs


def _check_label(label: str) -> None:
    if label not in CLASSES:
        raise ValueError(f"label={label!r}: must be one of {CLASSES}")


# --------------------------------------------------------------------------------------------------- fields
# Everything that is larger than a few pixels (smooth stain variation, fibre waves, nuclei, glands, fat
# cells) is a function of *absolute* pixel coordinates and a ``field_seed``, through a counter-based hash.
# Two tiles painted at neighbouring origins with the same field_seed, attrs and stain therefore join without a
# seam; only pixel-scale grain and mitotic figures come from the per-call ``rng``.

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * _M2
    h = (h ^ (h >> np.uint64(27))) * _M3
    return h ^ (h >> np.uint64(31))


def _hash(*parts: Any) -> np.ndarray:
    """Hash integer arrays (broadcast together) to uint64."""
    h = np.uint64(0x243F6A8885A308D3)
    with np.errstate(over="ignore"):
        for p in parts:
            h = _mix(h ^ (np.asarray(p).astype(np.int64).astype(np.uint64) + _M1))
    return h


def _u01(h: np.ndarray) -> np.ndarray:
    return ((h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)).astype(np.float32)


class _Field:
    """Deterministic random fields over absolute pixel coordinates, for one tile at ``origin``."""

    def __init__(self, key: int, x0: int, y0: int, h: int, w: int):
        self.key, self.x0, self.y0, self.h, self.w = int(key) % 2**63, int(x0), int(y0), h, w

    def uniform(self, ids: np.ndarray, salt: int) -> np.ndarray:
        """U[0, 1) per id (float32), the same wherever the id is drawn."""
        return _u01(_hash(self.key, salt, ids))

    def normal(self, ids: np.ndarray, salt: int) -> np.ndarray:
        """N(0, 1) per id (Box-Muller on two hashed uniforms)."""
        u1 = np.maximum(self.uniform(ids, 2 * salt + 1), 1e-7)
        u2 = self.uniform(ids, 2 * salt + 2)
        return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)

    def smooth(self, cell: float, salt: int) -> np.ndarray:
        """Low-frequency noise ~N(0, 1) with features ``cell`` px across: (h, w) float32, seamless."""
        c = max(2, int(round(cell)))
        gx0, gy0 = self.x0 // c - 2, self.y0 // c - 2
        gw, gh = (self.x0 + self.w) // c - gx0 + 3, (self.y0 + self.h) // c - gy0 + 3
        iy, ix = np.mgrid[gy0:gy0 + gh, gx0:gx0 + gw]
        grid = (self.uniform(ix * 1_000_003 + iy, salt) - 0.5) * np.float32(np.sqrt(12.0))
        big = cv2.resize(grid, (gw * c, gh * c), interpolation=cv2.INTER_CUBIC)
        oy, ox = self.y0 - gy0 * c, self.x0 - gx0 * c
        return big[oy:oy + self.h, ox:ox + self.w]

    def scatter(self, density: float, mean_area: float, margin: float, salt: int, cell: float = 16.0
                ) -> tuple[np.ndarray, np.ndarray]:
        """Points covering about ``density`` of the area with shapes of ``mean_area`` px: (centres (N, 2) in
        tile coordinates, ids (N,) uint64). A hashed Bernoulli process on an absolute grid of ``cell`` px."""
        c = max(4, int(round(cell)))
        rate = density / max(mean_area, 1e-3) * c * c  # expected points per grid cell
        slots = max(1, int(np.ceil(rate + 4.0 * np.sqrt(rate) + 2.0)))
        m = int(np.ceil(margin))
        gx0, gy0 = (self.x0 - m) // c, (self.y0 - m) // c
        gx1, gy1 = (self.x0 + self.w + m) // c + 1, (self.y0 + self.h + m) // c + 1
        iy, ix, k = np.meshgrid(np.arange(gy0, gy1), np.arange(gx0, gx1), np.arange(slots), indexing="ij")
        ids = _hash(ix, iy, k).ravel()
        keep = self.uniform(ids, salt) < rate / slots
        ids = ids[keep]
        x = (ix.ravel()[keep] + self.uniform(ids, salt + 1)) * c - self.x0
        y = (iy.ravel()[keep] + self.uniform(ids, salt + 2)) * c - self.y0
        inside = (x > -m) & (x < self.w + m) & (y > -m) & (y < self.h + m)
        return np.stack([x[inside], y[inside]], 1).astype(np.float32), ids[inside]

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Absolute (x, y) pixel coordinates of the tile, float32 (h, w) each."""
        yy, xx = np.mgrid[self.y0:self.y0 + self.h, self.x0:self.x0 + self.w]
        return xx.astype(np.float32), yy.astype(np.float32)


def _fine_noise(rng: np.random.Generator, h: int, w: int, sigma: float = 0.0) -> np.ndarray:
    """Per-pixel noise, optionally blurred to grains of about ``sigma`` px, rescaled to unit std."""
    n = rng.standard_normal((h, w), dtype=np.float32)
    if sigma > 0:
        n = cv2.GaussianBlur(n, (0, 0), sigma)
        n *= 1.0 / max(float(n.std()), 1e-6)
    return n


def _polygons(f: _Field, ids: np.ndarray, salt: int, centers: np.ndarray, a: np.ndarray, b: np.ndarray,
              angle: np.ndarray, irregularity: float, vertices: int = 10) -> np.ndarray:
    """Irregular ellipse-like polygons, (N, K, 2) int32 in 1/4-pixel units (``cv2.fillPoly`` shift=2)."""
    t = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False, dtype=np.float32)[None, :]  # (1, K)
    u = f.uniform(ids[:, None] * np.uint64(16) + np.arange(vertices, dtype=np.uint64)[None, :], salt)
    wobble = 1.0 + irregularity * (2.0 * u - 1.0)  # (N, K)
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


def _nuclei(canvas: np.ndarray, f: _Field, centers: np.ndarray, ids: np.ndarray, radius: float,
            radius_sd: float, aspect: float, intensity: float, intensity_sd: float, irregularity: float,
            angle: np.ndarray | None = None, scale: float = 1.0, salt: int = 0) -> None:
    """Paint nuclei (hematoxylin concentration) at ``centers``; ``aspect`` < 1 makes them elongated.

    Each nucleus's size, shape, angle and darkness are hashed from its id, so a nucleus cut by a tile border
    continues with the same shape in the neighbouring tile.
    """
    if len(centers) == 0:
        return
    salt = 1000 * (salt + 1)
    r = np.maximum(radius + radius_sd * f.normal(ids, salt), 0.4 * radius) * np.float32(scale)
    asp = np.clip(aspect + 0.08 * f.normal(ids, salt + 1), 0.15, 1.0)
    a, b = r / np.sqrt(asp), r * np.sqrt(asp)
    ang = f.uniform(ids, salt + 2) * np.float32(np.pi) if angle is None else angle.astype(np.float32)
    polys = _polygons(f, ids, salt + 3, centers, a, b, ang, irregularity)
    vals = np.clip(intensity + intensity_sd * f.normal(ids, salt + 4), 0.3, 2.5)
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
# Each painter returns (hematoxylin, eosin) concentration maps, float32 (H, W). Salts keep fields distinct.


def _cell_borders(h: int, w: int, centers: np.ndarray, pad: int, scale: float) -> np.ndarray:
    """Faint membranes between the cells around ``centers``: Voronoi edges, blurred; (h, w) float32 in [0, 1].

    ``centers`` must include the points up to ``pad`` px beyond the tile, so borders continue across tiles.
    """
    H, W = h + 2 * pad, w + 2 * pad
    xy = np.round(centers + pad).astype(np.int64)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
    if ok.sum() < 2:
        return np.zeros((h, w), np.float32)
    img = np.full((H, W), 255, np.uint8)
    img[xy[ok, 1], xy[ok, 0]] = 0
    _, labels = cv2.distanceTransformWithLabels(img, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    edge = np.zeros((H, W), np.float32)
    edge[:, 1:] += labels[:, 1:] != labels[:, :-1]
    edge[1:, :] += labels[1:, :] != labels[:-1, :]
    edge = cv2.GaussianBlur(np.minimum(edge, 1.0), (0, 0), 0.7 * scale)
    return np.minimum(edge[pad:pad + h, pad:pad + w] * 2.0, 1.0)


def _paint_tumor(f, rng, attrs, scale):
    h, w = f.h, f.w
    grade = int(attrs.get("grade") or 2)
    pleo = float(attrs.get("pleomorphism", 0.3))
    ce = 0.38 + 0.06 * f.smooth(24 * scale, 1)  # cytoplasm, slightly basophilic
    ch = 0.10 + 0.03 * f.smooth(12 * scale, 2)
    radius = 5.0 + 0.8 * (grade - 1)
    r_px = radius * scale
    centers, ids = f.scatter(float(attrs.get("nuclear_density", 0.4)), np.pi * r_px * r_px * 1.1, 3 * r_px,
                             salt=3, cell=3 * r_px)
    nuc = np.zeros((h, w), np.float32)
    _nuclei(nuc, f, centers, ids, radius, (0.9 + 2.5 * pleo), 0.75, 1.35 + 0.1 * grade, 0.25,
            irregularity=0.10 + 0.35 * pleo, scale=scale, salt=4)
    ce = ce + 0.14 * _cell_borders(h, w, centers, int(np.ceil(3 * r_px)), scale)  # cohesive sheets of cells
    chromatin = 1.0 + 0.22 * _fine_noise(rng, h, w, 0.8 * scale)  # coarse clumped chromatin
    ch = np.maximum(ch, nuc * chromatin)
    ce = np.where(nuc > 0, ce * 0.6, ce)
    if attrs.get("mitoses"):
        count = max(1, int(round(h * w / (96 * 96 * scale * scale) * 0.5)))
        _mitotic_figures(ch, ce, rng, int(rng.integers(1, count + 1)), scale)
    return ch, ce


def _wavy_fibres(f, angle_deg, period, scale, salt):
    """Collagen: a stripe pattern across ``angle_deg`` bent by smooth noise (waves); ~0-1, (H, W)."""
    theta = np.deg2rad(angle_deg)
    xx, yy = f.coords()
    u = xx * np.float32(np.sin(theta)) - yy * np.float32(np.cos(theta))  # across the fibres
    phase = u * np.float32(2 * np.pi / (period * scale)) + 4.5 * f.smooth(22 * scale, salt)
    stripes = 0.5 + 0.5 * np.cos(phase)
    return stripes * (0.55 + 0.45 * np.clip(0.5 + 0.5 * f.smooth(9 * scale, salt + 1), 0, 1))


def _paint_stroma(f, rng, attrs, scale):
    angle = float(attrs.get("fibre_angle", 0.0))
    fibres = _wavy_fibres(f, angle, float(attrs.get("fibre_period", 6.0)), scale, 10)
    gaps = np.clip(0.8 + 0.5 * f.smooth(14 * scale, 12), 0.0, 1.0)  # loose, paler areas
    ce = (0.30 + 0.45 * fibres) * gaps + 0.05
    ch = np.zeros((f.h, f.w), np.float32)
    radius = 2.6
    centers, ids = f.scatter(float(attrs.get("nuclear_density", 0.05)), np.pi * (radius * scale) ** 2,
                             12 * scale, salt=13, cell=24 * scale)
    angles = np.deg2rad(angle) + 0.15 * f.normal(ids, 14)  # along the fibres
    _nuclei(ch, f, centers, ids, radius, 0.3, 0.12, 1.25, 0.15, irregularity=0.05, angle=angles, scale=scale,
            salt=15)
    return ch, ce


def _paint_lymphocytes(f, rng, attrs, scale):
    ce = 0.20 + 0.05 * f.smooth(20 * scale, 20)
    ch = np.full((f.h, f.w), 0.06, np.float32)
    radius = 2.6
    centers, ids = f.scatter(float(attrs.get("nuclear_density", 0.5)), np.pi * (radius * scale) ** 2,
                             6 * scale, salt=21, cell=12 * scale)
    nuc = np.zeros((f.h, f.w), np.float32)
    _nuclei(nuc, f, centers, ids, radius, 0.25, 0.92, 1.75, 0.15, irregularity=0.04, scale=scale, salt=22)
    return np.maximum(ch, nuc), ce


def _paint_necrosis(f, rng, attrs, scale):
    granular = _fine_noise(rng, f.h, f.w, 0.9 * scale)
    blotches = f.smooth(16 * scale, 30)
    ce = 0.60 + 0.11 * granular + 0.12 * blotches  # eosinophilic, granular, smudgy
    ch = 0.18 + 0.04 * granular + 0.05 * blotches  # diffuse basophilic haze of nuclear debris
    dust = np.zeros((f.h, f.w), np.float32)
    kary = float(attrs.get("karyorrhexis", 0.7))
    centers, ids = f.scatter(0.02 + 0.05 * kary, np.pi * scale * scale, 3 * scale, salt=31, cell=8 * scale)
    _nuclei(dust, f, centers, ids, 1.0, 0.35, 0.85, 1.2, 0.3, irregularity=0.3, scale=scale, salt=32)
    centers, ids = f.scatter(float(attrs.get("nuclear_density", 0.03)), np.pi * 4.0 * scale * scale,
                             4 * scale, salt=33, cell=16 * scale)
    _nuclei(dust, f, centers, ids, 2.0, 0.3, 0.9, 2.0, 0.2, irregularity=0.1, scale=scale, salt=34)
    # ghost cells: pale outlines of dead cells whose nuclei are gone
    ghosts, gids = f.scatter(0.25, np.pi * (6.0 * scale) ** 2, 8 * scale, salt=35, cell=24 * scale)
    outline = np.zeros((f.h, f.w), np.float32)
    ga = (5.0 + 1.5 * f.uniform(gids, 36)) * scale
    gb = ga * (0.7 + 0.3 * f.uniform(gids, 37))
    rot = 180.0 * f.uniform(gids, 38)
    thick = max(2, int(round(1.5 * scale)))
    for (x, y), a, b, r in zip(ghosts.tolist(), ga.tolist(), gb.tolist(), rot.tolist()):
        centre, axes = (round(x * 4), round(y * 4)), (round(a * 4), round(b * 4))
        cv2.ellipse(outline, centre, axes, r, 0, 360, 0.35, -1, cv2.LINE_8, 2)  # eosinophilic cell body
        cv2.ellipse(outline, centre, axes, r, 0, 360, 1.0, thick, cv2.LINE_8, 2)  # its membrane
    ce = ce + 0.45 * outline
    return np.maximum(ch, dust), np.clip(ce, 0.3, None)


def _paint_gland(f, rng, attrs, scale):
    h, w = f.h, f.w
    r_lumen = float(attrs.get("lumen_radius", 10.0)) * scale
    epi = 5.5 * scale  # epithelial thickness
    fibres = _wavy_fibres(f, float(attrs.get("fibre_angle", 30.0)), 6.0, scale, 40)
    ce = 0.22 + 0.25 * fibres  # loose stroma between glands
    ch = np.zeros((h, w), np.float32)
    # glands on a jittered absolute grid, each drawn from its own hashed id
    spacing = int(round(2 * (r_lumen + epi) + 6 * scale))
    reach = int(1.6 * r_lumen + epi) + 2
    gx = np.arange((f.x0 - reach) // spacing, (f.x0 + w + reach) // spacing + 1)
    gy = np.arange((f.y0 - reach) // spacing, (f.y0 + h + reach) // spacing + 1)
    iy, ix = np.meshgrid(gy, gx, indexing="ij")
    gid = _hash(ix.ravel(), iy.ravel())
    cx = (ix.ravel() + 0.5) * spacing + 0.15 * spacing * f.normal(gid, 41) - f.x0
    cy = (iy.ravel() + 0.5) * spacing + 0.15 * spacing * f.normal(gid, 42) - f.y0
    ga = r_lumen * (0.8 + 0.45 * f.uniform(gid, 43))
    gb = r_lumen * (0.6 + 0.4 * f.uniform(gid, 44))
    rot = 180.0 * f.uniform(gid, 45)
    lumen = np.zeros((h, w), np.uint8)
    epithelium = np.zeros((h, w), np.uint8)
    for x, y, a, b, r in zip(cx.tolist(), cy.tolist(), ga.tolist(), gb.tolist(), rot.tolist()):
        cv2.ellipse(epithelium, (round(x * 4), round(y * 4)), (round((a + epi) * 4), round((b + epi) * 4)), r,
                    0, 360, 1, -1, cv2.LINE_8, 2)
        cv2.ellipse(lumen, (round(x * 4), round(y * 4)), (round(a * 4), round(b * 4)), r, 0, 360, 1, -1,
                    cv2.LINE_8, 2)
    # columnar nuclei, basal in the epithelium, long axis radial
    ring_a, ring_b = ga + 0.6 * epi, gb + 0.6 * epi
    k = np.maximum(6, (np.pi * (ring_a + ring_b) / (4.6 * scale)).astype(int))
    owner = np.repeat(np.arange(len(gid)), k)
    slot = np.arange(len(owner)) - np.repeat(np.cumsum(k) - k, k)
    t = 2 * np.pi * (slot / k[owner] + f.uniform(gid, 46)[owner])
    ex, ey = ring_a[owner] * np.cos(t), ring_b[owner] * np.sin(t)
    cr, sr = np.cos(np.deg2rad(rot[owner])), np.sin(np.deg2rad(rot[owner]))
    nid = _hash(gid[owner], slot)
    nc = np.stack([cx[owner] + ex * cr - ey * sr, cy[owner] + ex * sr + ey * cr], 1).astype(np.float32)
    nc += 0.4 * scale * np.stack([f.normal(nid, 47), f.normal(nid, 48)], 1)
    na = np.arctan2(ex * sr + ey * cr, ex * cr - ey * sr).astype(np.float32)
    epithelium = epithelium.astype(bool)
    lumen = lumen.astype(bool)
    ce = np.where(epithelium, 0.42 + 0.05 * f.smooth(10 * scale, 49), ce)
    ch = np.where(epithelium, np.float32(0.08), ch)
    nuc = np.zeros((h, w), np.float32)
    _nuclei(nuc, f, nc, nid, 2.1, 0.2, 0.4, 1.2, 0.15, irregularity=0.06, angle=na, scale=scale, salt=50)
    ch = np.maximum(ch, nuc)
    ce = np.where(lumen, np.float32(0.02), ce)
    ch = np.where(lumen & (nuc == 0), np.float32(0.0), ch)
    return ch.astype(np.float32), ce.astype(np.float32)


def _paint_adipose(f, rng, attrs, scale):
    h, w = f.h, f.w
    size = float(attrs.get("cell_size", 28.0)) * scale
    pad = int(2 * size)
    # one seed per cell of an absolute grid, jittered by its hashed id: the same fat cells in every tile
    gx = np.arange(int((f.x0 - pad) // size), int((f.x0 + w + pad) // size) + 1)
    gy = np.arange(int((f.y0 - pad) // size), int((f.y0 + h + pad) // size) + 1)
    iy, ix = np.meshgrid(gy, gx, indexing="ij")
    sid = _hash(ix.ravel(), iy.ravel())
    sx = (ix.ravel() + 0.5 + 0.7 * (f.uniform(sid, 60) - 0.5)) * size - (f.x0 - pad)
    sy = (iy.ravel() + 0.5 + 0.7 * (f.uniform(sid, 61) - 0.5)) * size - (f.y0 - pad)
    H, W = h + 2 * pad, w + 2 * pad
    ok = (sx >= 0) & (sx < W) & (sy >= 0) & (sy < H)
    img = np.full((H, W), 255, np.uint8)
    img[sy[ok].astype(np.int64), sx[ok].astype(np.int64)] = 0
    _, labels = cv2.distanceTransformWithLabels(img, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    edge = np.zeros((H, W), np.uint8)
    edge[:, 1:] |= (labels[:, 1:] != labels[:, :-1]).astype(np.uint8)
    edge[1:, :] |= (labels[1:, :] != labels[:-1, :]).astype(np.uint8)
    membrane = cv2.GaussianBlur(edge.astype(np.float32), (0, 0), 0.6 * scale)[pad:pad + h, pad:pad + w] * 2.2
    ce = 0.02 + np.clip(membrane, 0, 1) * (0.55 + 0.1 * f.smooth(16 * scale, 62))
    ch = np.zeros((h, w), np.float32)
    # flattened nuclei squeezed on the membranes: scattered points that land on one
    near = cv2.dilate(edge, np.ones((3, 3), np.uint8))[pad:pad + h, pad:pad + w]
    centers, ids = f.scatter(float(attrs.get("nuclear_density", 0.005)) / 0.15, np.pi * 6.0 * scale * scale,
                             4 * scale, salt=63, cell=size)
    xi, yi = np.round(centers[:, 0]).astype(int), np.round(centers[:, 1]).astype(int)
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    on = np.zeros(len(centers), bool)
    on[inside] = near[yi[inside], xi[inside]] > 0
    _nuclei(ch, f, centers[on], ids[on], 2.4, 0.2, 0.2, 1.2, 0.1, irregularity=0.05, scale=scale, salt=64)
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
                  noise: float = 3.0, origin: tuple[int, int] | None = None, field_seed: int | None = None,
                  **attrs: Any) -> np.ndarray:
    """Paint an H&E-like tile of class ``label``: uint8 (height, width, 3).

    Args:
        label: one of ``CLASSES``.
        rng: the per-call randomness; the same generator state gives the same pixels.
        stain: from ``sample_stain``; default: a mild random stain drawn from ``rng``.
        scale: pixels per nominal pixel (tumour nuclei are ~5 px in radius at scale 1; use 2-3 for tiles at
            0.5 microns per pixel). Keep it the same for all tiles of a slide.
        blur: optical blur sigma in nominal pixels; ``noise``: sensor noise std in grey levels.
        origin: (x, y) of the tile's top-left pixel in a larger image (a slide, level 0).
        field_seed: seed of the structures (nuclei, fibres, glands, fat cells). Tiles that share
            ``field_seed``, ``attrs``, ``stain`` and ``scale`` and are painted at adjacent ``origin``s join
            without a seam. Default: drawn from ``rng`` (an independent tile).
        **attrs: ground-truth attributes (``sample_attributes``); missing ones are sampled from ``rng``.

    Example (a seamless 2x1 strip)::

        attrs, stain = sample_attributes("stroma", rng), sample_stain(rng)
        left = render_tissue("stroma", 256, 256, rng, stain=stain, origin=(0, 0), field_seed=7, **attrs)
        right = render_tissue("stroma", 256, 256, rng, stain=stain, origin=(256, 0), field_seed=7, **attrs)
    """
    _check_label(label)
    if height < 1 or width < 1:
        raise ValueError(f"height={height}, width={width}: must be >= 1")
    sampled = sample_attributes(label, rng)
    sampled.update(attrs)
    if stain is None:
        stain = sample_stain(rng, strength=0.5)
    if field_seed is None:
        field_seed = int(rng.integers(0, 2**62))
    x0, y0 = (0, 0) if origin is None else (int(origin[0]), int(origin[1]))
    m = int(np.ceil(3 * blur * scale)) + 1 if blur > 0 else 0  # paint a margin so the blur is seamless too
    f = _Field(field_seed, x0 - m, y0 - m, height + 2 * m, width + 2 * m)
    ch, ce = _PAINTERS[label](f, rng, sampled, float(scale))
    ch = np.asarray(ch, np.float32)
    ce = np.asarray(ce, np.float32)
    if blur > 0:
        ch = cv2.GaussianBlur(ch, (0, 0), blur * scale)[m:m + height, m:m + width]
        ce = cv2.GaussianBlur(ce, (0, 0), blur * scale)[m:m + height, m:m + width]
    np.maximum(ch, 0, out=ch)
    np.maximum(ce, 0, out=ce)
    sensor = rng.standard_normal((height, width), dtype=np.float32) * np.float32(noise) if noise > 0 else None
    return stain_to_rgb(np.ascontiguousarray(ch), np.ascontiguousarray(ce), stain, sensor)
