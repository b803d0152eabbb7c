"""A small fully convolutional pointer detector: RGB frame in, hotspot heatmap out (stride 4, ~115k weights).

Trained only on pathkit's procedural pointer drawings (:mod:`pathkit.video.pointer_renders`), never on a real
cursor theme, so real themes measure generalisation. Two paths: a stride-4 path sees edges and corners
(receptive field 15 px), a stride-8 path with dilated convolutions sees up to 123 px of context (a 64 px pointer
as a whole, or the text around a look-alike corner); the head joins them. Per output cell: the logit that
the hotspot falls in that 4 x 4 pixel cell and the hotspot's offset inside it.

The weights ship with the package (``weights/pointer_net.safetensors``, float16, ~230 KB) and are rebuilt by
``python -m pathkit.video.pointer_train``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pathkit.io import PathkitError

# Lazy imports: safetensors (the model stack, seconds to import); cv2 (OpenCV, ~0.3 s). They load inside the
# functions that need them, not when this module is imported.

STRIDE = 4
WEIGHTS = Path(__file__).with_name("weights") / "pointer_net.safetensors"
WIDTHS = (16, 24, 40, 64, 48)  # channels: the two fine stages, the stride-4 features, the coarse path, the head
UNRECORDED_WIDTHS = (12, 16, 32, 48, 32)  # files written before the widths were recorded (detectors v1-v3)


class PointerNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()

        def conv(i: int, o: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, dilation, dilation), nn.ReLU(inplace=True))

        a, b, f, c, h = widths
        self.widths = tuple(widths)
        self.fine = nn.Sequential(conv(3, a, 2), conv(a, b, 2), conv(b, f))
        self.coarse = nn.Sequential(conv(f, c, 2), conv(c, c, dilation=2), conv(c, c, dilation=4))
        self.head = nn.Sequential(nn.Conv2d(f + c, h, 1), nn.ReLU(inplace=True), nn.Conv2d(h, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, H, W) float in [-0.5, 0.5], H and W multiples of 8 -> (B, 3, H/4, W/4): logit, dx, dy."""
        f = self.fine(x)
        c = nn.functional.interpolate(self.coarse(f), size=f.shape[-2:], mode="nearest")
        return self.head(torch.cat([f, c], 1))


@lru_cache(maxsize=1)
def load_pointer_net(path: str | None = None) -> PointerNet:
    """The shipped (or given) weights, in float32, eval mode (the channel widths are read from the file)."""
    from safetensors import safe_open

    p = Path(path) if path else WEIGHTS
    if not p.exists():
        raise PathkitError(f"{p}: pointer detector weights missing (rebuild: python -m pathkit.video.pointer_train)")
    try:
        with safe_open(str(p), "pt") as f:  # one read: the widths (metadata) and the tensors
            widths = (f.metadata() or {}).get("widths")
            state = {k: f.get_tensor(k).float() for k in f.keys()}
    except Exception as e:  # safetensors' own error type: a truncated or foreign file
        raise PathkitError(f"{p}: not readable as pointer detector weights ({e})") from None
    try:
        net = PointerNet(tuple(int(w) for w in widths.split(",")) if widths else UNRECORDED_WIDTHS)
        net.load_state_dict(state)
    except (ValueError, RuntimeError) as e:
        raise PathkitError(f"{p}: metadata 'widths' ({widths!r}) does not fit the tensors: "
                           f"{str(e).splitlines()[0]}") from None
    return net.eval()


def to_input(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H8, W8) float, zero-padded at the bottom/right to multiples of 8."""
    h, w = rgb.shape[:2]
    H, W = -(-h // 8) * 8, -(-w // 8) * 8
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0).sub_(0.5)
    if (H, W) != (h, w):
        x = nn.functional.pad(x, (0, W - w, 0, H - h))
    return x[None]


@torch.inference_mode()
def heatmap(net: PointerNet, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per stride-4 cell of an RGB image: hotspot probability (h, w) and hotspot position (h, w, 2) in pixels."""
    out = net(to_input(rgb))[0].numpy()
    prob = 1.0 / (1.0 + np.exp(-out[0]))
    gy, gx = np.mgrid[0:out.shape[1], 0:out.shape[2]].astype(np.float32)
    xy = np.stack([(gx + np.clip(out[1], 0, 1)) * STRIDE - 0.5, (gy + np.clip(out[2], 0, 1)) * STRIDE - 0.5], -1)
    return prob, xy


def peaks(prob: np.ndarray, xy: np.ndarray, threshold: float, k: int = 3) -> list[tuple[float, float, float]]:
    """Up to ``k`` local maxima above ``threshold`` as ``(score, x, y)``, best first."""
    import cv2

    if prob.size == 0 or prob.max() < threshold:
        return []
    dil = cv2.dilate(prob, np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero((prob >= dil) & (prob >= threshold))
    order = np.argsort(-prob[ys, xs])[:k]
    return [(float(prob[ys[i], xs[i]]), float(xy[ys[i], xs[i], 0]), float(xy[ys[i], xs[i], 1])) for i in order]
