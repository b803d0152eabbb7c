"""Compact fingerprints of what the tiny preset is built from, so drift is caught where it starts.

A learning number moves when the data or the initial weights move. When a library release changes what a
generator draws (an RNG stream, a filter's rounding, a codec), the change should fail one test that names the
generator and the package versions, not surface three layers later as a missed accuracy target.

Each fingerprint is either ``exact`` (a SHA-256 of text or integer ids: they must not change at all) or ``close``
(a short vector of floats compared with an absolute tolerance, where float noise between CPUs and builds is
expected: block means of images, per-tensor sums of weights). ``tests/fingerprints.json`` holds the recorded
values; ``make fingerprints`` rewrites it after a deliberate change.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pathkit.config import LongNetConfig
from pathkit.models.clip import build_tiny_text_tower
from pathkit.models.encoders import build_tiny_encoder
from pathkit.models.llm import build_tiny_llm, build_tiny_tokenizer
from pathkit.models.longnet import LongNetEncoder
from pathkit.synthetic.slides import write_slide
from pathkit.synthetic.tiles import make_tile_record
from pathkit.synthetic.tissue import CLASSES
from pathkit.synthetic.video import write_narrated_video

# Lazy imports: openslide (OpenSlide, a system library); av (PyAV, FFmpeg's libraries); torch, safetensors
# (the model stack, seconds to import). They load inside the functions that need them, not when this module is
# imported.

# packages whose release can change a generator's output, named in a failure
DATA_PACKAGES = ("numpy", "scipy", "scikit-image", "opencv-python-headless", "av", "tifffile", "imagecodecs",
                 "openslide-bin", "torch", "transformers", "tokenizers")


def exact(value: Any) -> dict[str, Any]:
    text = json.dumps(value, sort_keys=True, default=str)
    return {"kind": "exact", "sha256": hashlib.sha256(text.encode()).hexdigest()}


def close(values: np.ndarray | list[float], atol: float) -> dict[str, Any]:
    return {"kind": "close", "atol": atol, "values": [round(float(v), 4) for v in np.ravel(values)]}


def block_means(image: np.ndarray, block: int) -> np.ndarray:
    """Mean of each ``block x block`` cell per channel: robust to a pixel flipping by one grey level."""
    h, w = image.shape[:2]
    h, w = h - h % block, w - w % block
    img = np.asarray(image[:h, :w], dtype=np.float64)
    img = img.reshape(h // block, block, w // block, block, -1)
    return img.mean(axis=(1, 3))


def weight_stats(state: dict[str, Any]) -> np.ndarray:
    """Per tensor (sorted by name): sum and sum of absolute values."""
    rows = []
    for name in sorted(state):
        t = state[name].double().numpy() if hasattr(state[name], "double") else np.asarray(state[name], float)
        rows.append([t.sum(), np.abs(t).sum()])
    return np.asarray(rows)


# ------------------------------------------------------------------------------------------ the generators


def tiles() -> dict[str, Any]:
    """Two tiles of every class at the tiny size: pixels (block means), attributes, and their text (exact)."""
    images, attrs, text = [], [], []
    for label in CLASSES:
        for index in (0, 1):
            image, row, questions = make_tile_record(label, index, index, seed=0, tile_size=64)
            images.append(block_means(image, 8))
            attrs.append([v for _, v in sorted(row["attributes"].items()) if isinstance(v, (int, float))])
            text.append([row["caption"], questions])
    return {"pixels": close(np.stack(images), atol=1.0), "attributes": close(np.concatenate(attrs), atol=1e-6),
            "text": exact(text)}


def slide_region() -> dict[str, Any]:
    """A 1024 px synthetic slide, read back through openslide: a level-0 region and level 1."""
    import openslide

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fingerprint.tiff"
        write_slide(path, 1024, 1024, seed=0, workers=1)
        with openslide.OpenSlide(str(path)) as slide:
            region = np.asarray(slide.read_region((256, 256), 0, (256, 256)).convert("RGB"))
            level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
    return {"level0_region": close(block_means(region, 32), atol=2.0),
            "level1": close(block_means(level1, 64), atol=2.0)}


def video_frames() -> dict[str, Any]:
    """A 2 s narrated lecture at 160x120: three decoded frames (grey block means) and the cursor truth."""
    import av

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fingerprint.mp4"
        truth = write_narrated_video(path, seconds=2.0, fps=10.0, size=(160, 120), seed=0)
        frames = []
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in (0, 10, 19):
                    frames.append(block_means(frame.to_ndarray(format="gray"), 16))
    return {"frames": close(np.stack(frames), atol=3.0), "cursor": exact(truth.cursor)}


def tokenizer_ids() -> dict[str, Any]:
    """The tiny BPE tokenizer's ids for a fixed text (exact)."""
    text = ("A chat between a curious user and an artificial intelligence assistant. USER: <image>\n"
            "Is this tumor tissue with mitoses? ASSISTANT: yes, dense sheets of atypical nuclei.")
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tiny_tokenizer(tmp)
        return {"ids": exact(tok(text)["input_ids"]), "vocab_size": exact(len(tok))}


def initial_weights() -> dict[str, Any]:
    """Initial weights of the tiny LLM, vision tower, text tower and LongNet (per-tensor sums)."""
    import torch
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (("llm", lambda d: build_tiny_llm(d, "tiny")), ("vision", build_tiny_encoder),
                            ("text", build_tiny_text_tower)):
            folder = Path(tmp) / name
            build(folder)
            state = {}
            for file in sorted(folder.rglob("*.safetensors")):
                state.update({f"{file.name}:{k}": v for k, v in load_file(str(file)).items()})
            out[name] = close(weight_stats(state), atol=1e-3)
    cfg = LongNetConfig(in_dim=64, dim=64, depth=2, heads=4, segment_lengths=(16, 64), dilation_rates=(1, 2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        longnet = LongNetEncoder(cfg)
    out["longnet"] = close(weight_stats(longnet.state_dict()), atol=1e-3)
    return out


GENERATORS: dict[str, Callable[[], dict[str, Any]]] = {
    "tiles": tiles, "slide_region": slide_region, "video_frames": video_frames, "tokenizer": tokenizer_ids,
    "initial_weights": initial_weights,
}


def compare(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """One line per fingerprint that differs: ``generator.part: what changed``."""
    problems = []
    for part, want in expected.items():
        got = actual.get(part)
        if got is None:
            problems.append(f"{part}: no longer produced")
        elif want["kind"] == "exact":
            if got.get("sha256") != want["sha256"]:
                problems.append(f"{part}: changed (exact fingerprint)")
        else:
            a, b = np.asarray(want["values"]), np.asarray(got.get("values", []))
            if a.shape != b.shape:
                problems.append(f"{part}: {a.size} values recorded, {b.size} now")
            else:
                diff = float(np.abs(a - b).max()) if a.size else 0.0
                if diff > want["atol"]:
                    problems.append(f"{part}: differs by up to {diff:.4g} (tolerance {want['atol']})")
    return problems
