"""Keep images that look like usable H&E histology: size, aspect, not blank, not overexposed, H&E-like colour.

Quilt dropped non-histology frames with a classifier ensemble, PA-LLaVA removed non-pathology and animal images
with a model. Here cheap measurements come first (:func:`image_measurements`) and a pluggable ``classifier``
(any ``callable(image) -> probability``, e.g. a trained tissue classifier or :func:`llm_cleaning_classifier`,
which asks an OpenAI-compatible model the PA-LLaVA cleaning prompt) decides what the rules cannot.

H&E-likeness: haematoxylin stains nuclei blue-purple, eosin stains cytoplasm and stroma pink. In HSV, stained
tissue has hue in the purple-to-pink arc (about 235-360 degrees, blue above green) with some saturation. The score is
the fraction of non-background pixels (not near-white, not near-black) in that arc; a photo, a chart, a
radiograph or a brown DAB immunostain scores low.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pathkit.instruct.client import with_images
from pathkit.instruct.prompts import get_prompt
from pathkit.io import PathkitError


def load_rgb(image: str | Path | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from a path or an array (grey and RGBA are converted)."""
    if isinstance(image, np.ndarray):
        arr = image
    else:
        try:
            with Image.open(image) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError as err:
            raise PathkitError(f"{image}: image file not found") from err
        except (UnidentifiedImageError, OSError) as err:
            raise PathkitError(f"{image}: not a readable image ({err})") from err
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise PathkitError(f"image of shape {arr.shape}: expected (H, W, 3)")
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False)


def he_likeness(rgb: np.ndarray, max_pixels: int = 262_144) -> tuple[float, float]:
    """(H&E-likeness score in [0, 1], tissue fraction) of an RGB image (see the module docstring)."""
    rgb = load_rgb(rgb)
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / max_pixels)))
    x = rgb[::step, ::step].reshape(-1, 3).astype(np.float32) / 255.0
    mx, mn = x.max(axis=1), x.min(axis=1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    tissue = (mx > 0.15) & ~((mn > 0.85) & (sat < 0.1))  # not black, not white background
    if not tissue.any():
        return 0.0, 0.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    delta = np.maximum(mx - mn, 1e-6)
    hue = np.where(mx == r, ((g - b) / delta) % 6, np.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4))
    hue = hue * 60.0  # degrees
    stained = (hue >= 235) & (b > g) & (sat >= 0.08)  # blue-purple to pink: the magenta side of grey
    return float((stained & tissue).sum() / tissue.sum()), float(tissue.mean())


def image_measurements(image: str | Path | np.ndarray) -> dict[str, float]:
    """Width, height, aspect, blank fraction (near-white), overexposed (saturated) fraction, H&E score."""
    rgb = load_rgb(image)
    h, w = rgb.shape[:2]
    small = rgb[:: max(1, h // 512), :: max(1, w // 512)]
    grey = small.mean(axis=2)
    he, tissue = he_likeness(rgb)
    return {"width": float(w), "height": float(h), "aspect": float(max(w, h) / max(1, min(w, h))),
            "blank_fraction": float((grey > 220).mean() if small.std() < 60 else ((grey > 235).mean())),
            "overexposed_fraction": float((small.min(axis=2) >= 250).mean()),
            "contrast": float(grey.std()), "he_score": he, "tissue_fraction": tissue}


@dataclass
class ImageFilter:
    """Rules on :func:`image_measurements`; ``check`` returns None (keep) or the first failed rule.

    ``classifier``: optional ``callable(rgb) -> probability of usable human pathology``; kept when
    >= ``classifier_threshold`` (runs last, only on images the rules kept).
    """

    min_size: int = 64
    max_aspect: float = 4.0
    min_tissue: float = 0.05  # share of pixels that are neither glass-white nor black (adipose is ~0.2)
    max_overexposed: float = 0.5
    min_contrast: float = 3.0
    min_he_score: float = 0.3
    classifier: Callable[[np.ndarray], float] | None = None
    classifier_threshold: float = 0.5

    def check(self, image: str | Path | np.ndarray) -> str | None:
        rgb = load_rgb(image)
        m = image_measurements(rgb)
        if min(m["width"], m["height"]) < self.min_size:
            return f"too_small ({int(m['width'])}x{int(m['height'])} < {self.min_size})"
        if m["aspect"] > self.max_aspect:
            return f"aspect ({m['aspect']:.1f} > {self.max_aspect})"
        if m["contrast"] < self.min_contrast:
            return f"blank (contrast {m['contrast']:.1f} < {self.min_contrast})"
        if m["tissue_fraction"] < self.min_tissue:
            return f"blank (tissue {m['tissue_fraction']:.2f} < {self.min_tissue})"
        if m["overexposed_fraction"] > self.max_overexposed:
            return f"overexposed ({m['overexposed_fraction']:.2f} > {self.max_overexposed})"
        if m["he_score"] < self.min_he_score:
            return f"not_he_like (score {m['he_score']:.2f} < {self.min_he_score})"
        if self.classifier is not None:
            p = float(self.classifier(rgb))
            if p < self.classifier_threshold:
                return f"classifier ({p:.2f} < {self.classifier_threshold})"
        return None

    def __call__(self, image: str | Path | np.ndarray) -> bool:
        return self.check(image) is None


def llm_cleaning_classifier(client: Any, caption: str = "", overrides: str | Path | None = None
                            ) -> Callable[[np.ndarray], float]:
    """A classifier hook that asks a multimodal model the PA-LLaVA cleaning prompt (1.0 = human pathology)."""
    template = get_prompt("pa_llava_cleaning", overrides)

    def classify(rgb: np.ndarray) -> float:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        with tempfile.NamedTemporaryFile(suffix=".png") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            messages = with_images(template.render({"input": {"caption": caption}}), [fh.name])
        reply = template.parse(client.chat(messages).text)
        return 1.0 if reply["human_pathology"] else 0.0

    return classify
