"""Procedurally varied mouse pointers composited onto lecture-like patches: the pointer detector's training data.

No cursor theme is used: pointers are pathkit's own vector drawings with random proportions, direction, size
(9 to 72 px, ~a third of them 9 to 18 px; small ones sometimes without anti-aliasing), fill (white, black, any colour,
mostly saturated ones from dark navy to bright lime; flat, glassy gradient in any direction, an inner rim, translucent), outline (the contrasting polarity, 1 to 4 px; rarely none; sometimes doubled like comic themes),
anti-aliasing and drop shadow:

* arrows: the classic desktop arrow (with or without a tail) and block arrows (a head on a shaft), some with
  rounded corners, some mirrored (left-handed themes), mostly upright, some pointing left, right, down or any way; hotspot at the tip;
* hands: an index finger rising from a palm with curled-finger stubs and a thumb, right or left hand, upright,
  up-left, sideways or any way; hotspot at the fingertip;
* a few of pathkit's own pixel-art pointers (the synthetic lectures' pointer; no real theme).

They are pasted onto crops of photographs and pathkit's procedural tissue, text slides, flat (often black) screens,
some with hard negatives (dark or coloured angular blobs without an outline, like a nucleus cluster), then the
patch is downscaled by a random factor (0.4x to 1x, area or blur-then-bicubic/bilinear like ffmpeg's scalers)
and JPEG-compressed, chroma subsampled (what x264 and a smaller video do to it).

A sample is ``(patch RGB uint8 (S, S, 3), hotspot (x, y) float or None)``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pathkit.synthetic.video import synthetic_background
from pathkit.video.cursor_shapes import SHAPES, resized_shape

# Lazy imports: cv2 (OpenCV, ~0.3 s); skimage (scikit-image's submodules load SciPy). They load inside the
# functions that need them, not when this module is imported.

SS = 4  # supersampling of the drawing (anti-aliased edges after the area downscale)
CREASE = 128  # a body mask's value on lines drawn in the outline's colour (between a hand's fingers)


def _arrow_polygon(rng: np.random.Generator) -> np.ndarray:
    """The classic arrow, tip at (0, 0), height 1, with random wing, notch and tail proportions."""
    left = rng.uniform(0.7, 0.86)  # length of the straight left edge
    wing = rng.uniform(0.48, 0.66)
    notch = rng.uniform(0.18, 0.3)
    tail_w = rng.uniform(0.1, 0.17)
    tail_dx = rng.uniform(0.14, 0.26)
    wing_y = left * rng.uniform(0.74, 0.84)
    pts = [(0, 0), (0, left), (notch, wing_y - 0.06), (notch + tail_dx, 1.0), (notch + tail_dx + tail_w, 0.96),
           (notch + tail_w + 0.02, wing_y - 0.08), (wing, wing_y)]
    if rng.random() < 0.25:  # a tail-less arrow (a plain triangle with a notch)
        pts = [(0, 0), (0, left), (notch, wing_y - 0.05), (wing, wing_y)]
    return np.array(pts, np.float64)


def _pointer_angle(rng: np.random.Generator) -> float:
    """Degrees about the hotspot: mostly upright (+-12), sometimes any direction (left/right/up arrows)."""
    r = rng.random()
    if r < 0.8:
        return float(rng.uniform(-12, 12))
    if r < 0.88:
        return float(rng.choice([90.0, -90.0, 180.0, 45.0, -45.0]) + rng.uniform(-8, 8))
    return float(rng.uniform(-180, 180))


def _draw_arrow(rng: np.random.Generator, height: float, canvas: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Supersampled mask of an arrow (the classic one, or a block arrow: head on a shaft) and the tip position."""
    import cv2

    if rng.random() < 0.2:
        poly = _block_arrow_polygon(rng)
    else:
        poly = _arrow_polygon(rng)
        poly[:, 0] *= rng.uniform(0.85, 1.15)  # aspect
    a = np.deg2rad(_pointer_angle(rng))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    poly = poly @ rot.T * height * SS
    tip = np.array([canvas * SS * 0.5, canvas * SS * 0.5])
    mask = np.zeros((canvas * SS, canvas * SS), np.uint8)
    cv2.fillPoly(mask, [np.round(poly + tip).astype(np.int32)], 255, cv2.LINE_8)
    if rng.random() < 0.3:  # rounded corners and tip (Bibata's and the comic themes' soft arrows)
        r = max(1, int(round(height * SS * rng.uniform(0.03, 0.1))))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        ys, xs = np.nonzero(mask)
        if len(xs):  # the tip is where the rounded body now reaches nearest the sharp one
            i = np.argmin(np.hypot(xs - tip[0], ys - tip[1]))
            tip = np.array([float(xs[i]), float(ys[i])])
    if rng.random() < 0.2:  # a left-handed theme's mirror image (tip at the top right)
        return np.ascontiguousarray(mask[:, ::-1]), (float(mask.shape[1] - 1 - tip[0]), float(tip[1]))
    return mask, (float(tip[0]), float(tip[1]))


def _block_arrow_polygon(rng: np.random.Generator) -> np.ndarray:
    """A symmetric arrow pointing up: a triangular head on a rectangular shaft, tip at (0, 0), length 1."""
    head = rng.uniform(0.35, 0.6)  # head length
    half = rng.uniform(0.22, 0.38)  # head half-width
    shaft = half * rng.uniform(0.3, 0.55)
    return np.array([(0, 0), (half, head), (shaft, head), (shaft, 1.0), (-shaft, 1.0), (-shaft, head), (-half, head)],
                    np.float64)


def _draw_hand(rng: np.random.Generator, height: float, canvas: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Supersampled mask of a pointing hand: an index finger over a fist (knuckles, a thumb), fingertip =
    hotspot; pointing up, up-left, sideways or any way."""
    import cv2

    u = height * SS
    fw = u * rng.uniform(0.15, 0.26)  # finger width
    tip = np.array([canvas * SS * 0.5, canvas * SS * 0.5])
    mask = np.zeros((canvas * SS, canvas * SS), np.uint8)
    x0, y0 = tip[0] - fw / 2, tip[1]
    finger_len = u * rng.uniform(0.38, 0.6)
    cv2.rectangle(mask, (int(x0), int(y0 + fw / 2)), (int(x0 + fw), int(y0 + finger_len)), 255, -1)
    cv2.circle(mask, (int(tip[0]), int(y0 + fw / 2)), int(fw / 2), 255, -1)
    # the index finger rises from the palm's left part; the palm reaches right past the curled fingers
    palm_left = x0 - u * (rng.uniform(0.0, 0.1) if rng.random() < 0.7 else rng.uniform(0.1, 0.25))
    palm_right = x0 + fw + u * rng.uniform(0.3, 0.55)
    palm_top, palm_bottom = y0 + finger_len * rng.uniform(0.6, 0.9), y0 + u * rng.uniform(0.85, 1.05)
    r = int(u * rng.uniform(0.06, 0.14))
    cv2.rectangle(mask, (int(palm_left + r), int(palm_top)), (int(palm_right - r), int(palm_bottom)), 255, -1)
    cv2.rectangle(mask, (int(palm_left), int(palm_top + r)), (int(palm_right), int(palm_bottom - r)), 255, -1)
    for cx, cy in ((palm_left + r, palm_top + r), (palm_right - r, palm_top + r),
                   (palm_left + r, palm_bottom - r), (palm_right - r, palm_bottom - r)):
        cv2.circle(mask, (int(cx), int(cy)), r, 255, -1)
    creases = np.zeros_like(mask)  # lines between the fingers, drawn in the outline's colour by real themes
    if rng.random() < 0.85:  # the curled fingers: rounded stubs right of the index finger, rising above the palm
        n = int(rng.choice([2, 3, 3, 3]))
        kw = (palm_right - (x0 + fw)) / n
        lw = max(1, int(round(u * rng.uniform(0.03, 0.06))))
        for i in range(n):
            kx0 = x0 + fw + kw * i + kw * 0.05
            top = palm_top - u * rng.uniform(0.0, 0.15) + i * u * rng.uniform(0.0, 0.04)
            rr = max(1, int(kw * 0.45))
            cv2.rectangle(mask, (int(kx0), int(top + rr)), (int(kx0 + kw * 0.9), int(palm_top + r)), 255, -1)
            cv2.circle(mask, (int(kx0 + kw * 0.45), int(top + rr)), rr, 255, -1)
            cv2.line(creases, (int(kx0), int(top + rr)), (int(kx0), int(palm_top + (palm_bottom - palm_top) * 0.4)),
                     255, lw)
    if rng.random() < 0.6:  # the thumb, a bulge out to the lower left
        cv2.ellipse(mask, (int(palm_left), int(palm_top + u * rng.uniform(0.12, 0.3))),
                    (int(u * rng.uniform(0.08, 0.18)), int(u * rng.uniform(0.05, 0.1))),
                    float(rng.uniform(0, 60)), 0, 360, 255, -1)
    r = rng.random()  # mostly upright; sometimes pointing up-left or sideways; rarely any way
    a = rng.uniform(-12, 12) if r < 0.75 else rng.uniform(-60, 20) if r < 0.92 else rng.uniform(-180, 180)
    m = cv2.getRotationMatrix2D((float(tip[0]), float(tip[1])), a, 1.0)
    mask = cv2.warpAffine(mask, m, mask.shape[::-1], flags=cv2.INTER_NEAREST)
    if rng.random() < 0.6:
        mask[cv2.warpAffine(creases, m, mask.shape[::-1], flags=cv2.INTER_NEAREST) > 0] = CREASE
    if rng.random() < 0.25:  # a left hand (thumb on the right)
        mask = np.ascontiguousarray(mask[:, ::-1])
        return mask, (float(mask.shape[1] - 1 - tip[0]), float(tip[1]))
    return mask, (float(tip[0]), float(tip[1]))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """Any RGB colour, or (more often) a saturated one as themes use: any hue, dark navy to bright lime."""
    if rng.random() < 0.4:
        return rng.uniform(0, 255, 3)
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.3, 1.0))
    return np.array(rgb) * 255.0


def render_pointer(rng: np.random.Generator, height: float, canvas: int = 96
                   ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """One pointer at ``canvas`` px: (RGB float (c, c, 3), alpha float (c, c) in [0, 1], hotspot (x, y))."""
    import cv2

    kind = "hand" if rng.random() < 0.4 else "arrow"
    body, (tx, ty) = (_draw_hand if kind == "hand" else _draw_arrow)(rng, height, canvas)
    style = rng.random()
    coloured = style >= 0.56
    if style < 0.28:
        fill, outline = np.full(3, rng.uniform(225, 255)), np.full(3, rng.uniform(0, 40))
    elif not coloured:
        fill, outline = np.full(3, rng.uniform(0, 40)), np.full(3, rng.uniform(215, 255))
    else:
        fill = _random_colour(rng)
        o = rng.random()  # black, white, a darker shade of the fill
        outline = np.full(3, 0.0) if o < 0.5 else np.full(3, 255.0) if o < 0.8 else fill * rng.uniform(0.2, 0.6)
    # outline: 0 to 4 px of the final pointer (1 px of a pointer ~20 px tall is 1/20 of its height); a coloured
    # fill may have none (or one that matches the background: the pasted pointer then shows its fill alone),
    # while a look-alike dark blob in tissue is common
    width_px = int(rng.choice([0, 0, 1, 1, 1, 2, 2, 3])) if coloured else int(rng.choice([1, 1, 1, 1, 2, 2, 3, 4]))
    k = max(1, int(round(width_px * SS * max(1.0, height / 24) * rng.uniform(0.7, 1.2))))
    outer = cv2.dilate(body, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))) if width_px else body
    double = width_px and rng.random() < 0.2  # comic themes: a thick contrasting outline inside a thin outer line
    if double:
        k2 = max(1, int(round(SS * max(1.0, height / 32) * rng.uniform(0.7, 1.3))))
        ring = cv2.dilate(outer, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k2 + 1, 2 * k2 + 1)))
        ring_only, outer = (ring > 0) & ~(outer > 0), ring
        k += k2
    if width_px:  # the outline grows past the tip: the hotspot is the outline's pixel at the tip farthest out
        ys, xs = np.nonzero(body)
        cx, cy = xs.mean(), ys.mean()
        ys, xs = np.nonzero(outer)
        near = np.hypot(xs - tx, ys - ty) <= 1.5 * k + SS
        i = np.argmax(np.hypot(xs[near] - cx, ys[near] - cy))
        tx, ty = float(xs[near][i]), float(ys[near][i])
    c = canvas * SS
    rgb = np.zeros((c, c, 3), np.float32)
    rgb[outer > 0] = outline
    if double:
        rgb[ring_only] = fill if rng.random() < 0.7 else 255.0 - outline
    inside = body == 255
    if rng.random() < 0.35:  # a gradient across the fill (glassy themes), in any direction
        d = rng.normal(size=2)
        d /= np.linalg.norm(d) + 1e-6
        yy, xx = np.nonzero(inside)
        u = (xx * d[0] + yy * d[1]) / c
        u = (u - u.min()) / max(1e-6, np.ptp(u))
        lo, hi = rng.uniform(0.55, 1.0), rng.uniform(1.0, 1.45)
        rgb[inside] = np.clip(fill[None] * (lo + (hi - lo) * u)[:, None] + rng.uniform(-30, 30), 0, 255)
    else:
        rgb[inside] = fill
    if width_px and rng.random() < 0.2:  # an inner rim of a third tone (glass and 3-D themes)
        rim = inside & ~(cv2.erode(body, np.ones((2 * k + 1, 2 * k + 1), np.uint8)) > 0)
        rgb[rim] = rng.uniform(0, 255, 3)
    rgb[body == CREASE] = outline
    alpha = (outer > 0).astype(np.float32)
    if rng.random() < 0.15:  # translucent fill
        alpha[inside] = rng.uniform(0.55, 0.9)
    # small pixel-art themes are drawn without anti-aliasing: hard one-pixel steps
    interp = cv2.INTER_NEAREST if height < 24 and rng.random() < 0.25 else cv2.INTER_AREA
    rgb = cv2.resize(rgb * alpha[..., None], (canvas, canvas), interpolation=interp)
    alpha = cv2.resize(alpha, (canvas, canvas), interpolation=interp)
    rgb = rgb / np.maximum(alpha, 1e-4)[..., None]
    if rng.random() < 0.4:  # drop shadow: a blurred, offset, dark copy under the pointer
        off = rng.uniform(0, 4, 2) * max(1.0, height / 32)
        m = np.float32([[1, 0, off[0]], [0, 1, off[1]]])
        shadow = cv2.warpAffine(alpha, m, (canvas, canvas))
        shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(0.8, 2.5) * max(1.0, height / 40)) * rng.uniform(0.25, 0.7)
        shadow_rgb = np.zeros_like(rgb)
        a_total = alpha + shadow * (1 - alpha)
        rgb = (rgb * alpha[..., None] + shadow_rgb * (shadow * (1 - alpha))[..., None]) / np.maximum(a_total, 1e-4)[..., None]
        alpha = a_total
    return rgb, alpha, ((tx + 0.5) / SS - 0.5, (ty + 0.5) / SS - 0.5)


def pathkit_art_sprite(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """pathkit's own pointer pixel art (what its synthetic lectures draw, :mod:`pathkit.video.cursor_shapes`) at
    an integer or fractional scale, as a square sprite: not a real cursor theme, so no evaluation theme leaks."""
    scale = float(rng.choice([1, 1, 2, 3])) if rng.random() < 0.7 else float(rng.uniform(0.6, 2.0))
    shape = resized_shape(SHAPES[str(rng.choice(["arrow", "hand"]))], scale,
                          (float(rng.uniform(0, 1)), float(rng.uniform(0, 1))))
    h, w = shape.grey.shape
    c = max(h, w) + 2
    rgb = np.zeros((c, c, 3), np.float32)
    alpha = np.zeros((c, c), np.float32)
    rgb[:h, :w] = shape.grey[..., None]
    alpha[:h, :w] = shape.mask
    return rgb, alpha, (float(shape.hotspot[0]), float(shape.hotspot[1]))


@lru_cache(maxsize=1)
def _photo_pool() -> tuple[np.ndarray, ...]:
    """Background images: scikit-image's photographs and scanned text (not its IHC image, which is evaluation
    content), and pathkit's procedural tissue."""
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "text", "page", "coins", "moon", "hubble_deep_field"):
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, 2)
        out.append(np.ascontiguousarray(img[..., :3]))
    for seed in range(101, 107):
        out.append(synthetic_background(384, 384, np.random.default_rng(seed))[0])
    return tuple(out)


def _text_patch(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    bg = rng.choice([250, 255, 235, 30]) if rng.random() < 0.8 else rng.uniform(0, 255)
    img = np.full((size, size, 3), bg, np.uint8)
    ink = (20, 20, 20) if bg > 128 else (240, 240, 240)
    if rng.random() < 0.3:
        ink = tuple(int(v) for v in rng.uniform(0, 255, 3))
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<>/\\^v-|"
    y = int(rng.uniform(0, 20))
    while y < size + 20:
        scale = rng.uniform(0.4, 1.6)
        text = "".join(rng.choice(list(letters), int(rng.integers(3, 14))))
        cv2.putText(img, text, (int(rng.uniform(-20, 20)), y), int(rng.choice([0, 2, 3, 4])), scale, ink,
                    int(rng.integers(1, 4)), cv2.LINE_AA)
        y += int(30 * scale + rng.uniform(4, 20))
    return img


def background_patch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A lecture-like RGB background crop of ``size`` x ``size``."""
    import cv2

    r = rng.random()
    if r < 0.47:
        pool = _photo_pool()
        img = pool[int(rng.integers(len(pool)))]
        zoom = rng.uniform(0.7, 3.0)
        crop = max(8, int(size / zoom))
        crop = min(crop, img.shape[0], img.shape[1])
        y0, x0 = int(rng.integers(0, img.shape[0] - crop + 1)), int(rng.integers(0, img.shape[1] - crop + 1))
        out = cv2.resize(img[y0:y0 + crop, x0:x0 + crop], (size, size), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.3:
            out = out[:, ::-1].copy()
        return out
    if r < 0.77:
        return _text_patch(rng, size)
    if r < 0.93:  # flat: a blank black or white screen (common between slides), any colour
        return np.full((size, size, 3), rng.uniform(0, 255, 3) if rng.random() < 0.4 else rng.choice([0, 0, 255]),
                       np.uint8)
    g = np.linspace(rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), size)  # a gradient
    return np.ascontiguousarray(np.repeat(g[:, None], size, 1).astype(np.uint8))


def _paste_lookalikes(rng: np.random.Generator, bg: np.ndarray) -> None:
    """Hard negatives, in place: dark or coloured angular blobs with a sharp corner and no outline (a nucleus
    cluster, a letter's serif), which a detector of "corner with a contrasting edge" could take for a pointer."""
    import cv2

    size = bg.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(4, 22)
        n = int(rng.integers(3, 7))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.5, 1.2, n)
        c = rng.uniform(0, size, 2)
        poly = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1)
        mask = np.zeros(bg.shape[:2], np.float32)
        cv2.fillPoly(mask, [np.round(poly * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
        mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.3, 1.2))[..., None]
        colour = bg.reshape(-1, 3).min(0) * rng.uniform(0.3, 1.0) if rng.random() < 0.6 else rng.uniform(0, 255, 3)
        bg *= 1 - mask
        bg += mask * colour


@dataclass
class RenderPools:
    """Pre-rendered pointers and backgrounds (drawing them is the slow part); samples mix them freely."""

    sprites: list[tuple[np.ndarray, np.ndarray, tuple[float, float]]]  # (RGB, alpha, hotspot)
    backgrounds: list[np.ndarray]  # RGB, square, at least 2.5x the patch size (the largest downscale)

    @staticmethod
    def build(rng: np.random.Generator, n_sprites: int = 4000, n_backgrounds: int = 600, size: int = 96
              ) -> RenderPools:
        sprites = []
        for _ in range(n_sprites):
            small = rng.random() < 0.3  # the smallest themes (9 to 18 px) are the hardest to see
            height = float(np.exp(rng.uniform(np.log(9), np.log(18 if small else 72))))
            if rng.random() < 0.06:
                sprites.append(pathkit_art_sprite(rng))
                continue
            sprites.append(render_pointer(rng, height, int(height * 2.3) + 8))
        return RenderPools(sprites, [background_patch(rng, 5 * size // 2) for _ in range(n_backgrounds)])


def training_sample(rng: np.random.Generator, pools: RenderPools, size: int = 96, p_pointer: float = 0.7
                    ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A compressed patch with a pointer (probability ``p_pointer``) and its hotspot in patch pixels."""
    import cv2

    # the video is this much smaller than the screen (a 720p or 1080p capture delivered at 0.4x to 0.75x)
    r = rng.random()
    down = 1.0 if r < 0.4 else rng.uniform(1.0, 1.33) if r < 0.55 else rng.uniform(1.33, 2.5)
    big = int(round(size * down))
    src = pools.backgrounds[int(rng.integers(len(pools.backgrounds)))]
    y0, x0 = (int(rng.integers(0, src.shape[i] - big + 1)) for i in (0, 1))
    bg = src[y0:y0 + big, x0:x0 + big].astype(np.float32)
    if rng.random() < 0.3:
        _paste_lookalikes(rng, bg)
    hot = None
    if rng.random() < p_pointer:
        rgb, alpha, (hx, hy) = pools.sprites[int(rng.integers(len(pools.sprites)))]
        canvas = alpha.shape[0]
        ox = int(rng.integers(-int(hx) + 2, big - int(hx) - 2))
        oy = int(rng.integers(-int(hy) + 2, big - int(hy) - 2))
        x0, y0 = max(0, ox), max(0, oy)
        x1, y1 = min(big, ox + canvas), min(big, oy + canvas)
        a = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox, None]
        bg[y0:y1, x0:x1] = bg[y0:y1, x0:x1] * (1 - a) + rgb[y0 - oy:y1 - oy, x0 - ox:x1 - ox] * a
        hot = (ox + hx, oy + hy)
    img = np.clip(bg + 0.5, 0, 255).astype(np.uint8)
    if big != size:
        if rng.random() < 0.5:  # ffmpeg's area scaler
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        else:  # its bicubic/bilinear scalers widen their kernel by the factor: blur, then sample
            img = cv2.GaussianBlur(img, (0, 0), down * rng.uniform(0.3, 0.55))
            img = cv2.resize(img, (size, size), interpolation=(cv2.INTER_CUBIC, cv2.INTER_LINEAR)[int(rng.integers(2))])
        if hot is not None:
            hot = ((hot[0] + 0.5) / down - 0.5, (hot[1] + 0.5) / down - 0.5)
    if rng.random() < 0.85:  # block compression, chroma subsampled like x264's yuv420p
        q = int(rng.uniform(20, 90))
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return img, hot
