"""Synthetic narrated pathology lectures with ground truth: MP4 + WebVTT transcript + ``.truth.json``.

A lecture is a sequence of stable *views* (crops of one large background image: procedural tissue or the
real IHC image bundled with scikit-image) joined by hard cuts or short pan/zoom transitions. A mouse pointer
(the classic white arrow with black outline, or a pointing hand) moves smoothly between regions, circles
and dwells on them, and is hidden in some stretches. Every dwell or circle is narrated by one utterance that
names the tissue under the pointer. The ground truth records the stable chunks ``[start, end]`` (seconds),
the pointer hotspot per frame (or ``None``), and each utterance's time, text, class and region box.

Time convention: frame ``i`` is shown during ``[i / fps, (i + 1) / fps)``; a chunk of frames ``a..b`` is
``[a / fps, (b + 1) / fps]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pathkit.io import PathkitError, atomic_path, atomic_write_text, read_json, write_json
from pathkit.synthetic.tissue import render_tissue
from pathkit.video.cursor_shapes import SHAPES, cursor_scale_for, draw_cursor

# Lazy imports: cv2 (OpenCV, ~0.3 s); skimage (scikit-image's submodules load SciPy); av (PyAV, FFmpeg's
# libraries). They load inside the functions that need them, not when this module is imported.

GENERATOR_VERSION = 1

SYNTHETIC_CLASSES = ("tumor", "stroma", "lymphocytes", "necrosis", "gland", "adipose")
IHC_CLASSES = ("dab_positive", "hematoxylin_nuclei", "unstained")

PHRASES = {
    "tumor": "tumor cells with crowded, enlarged pleomorphic nuclei",
    "stroma": "stroma with spindle-shaped nuclei in pink collagen fibres",
    "lymphocytes": "a dense infiltrate of small round lymphocytes",
    "necrosis": "necrosis with pink debris and scattered nuclear fragments",
    "gland": "a gland whose nuclei line a central lumen",
    "adipose": "adipose tissue with large empty fat cells",
    "dab_positive": "brown DAB-positive staining",
    "hematoxylin_nuclei": "blue hematoxylin-stained nuclei",
    "unstained": "pale, largely unstained stroma",
}

_TEMPLATES = (
    "Here we see {p}.",
    "Look at this area: {p}.",
    "Notice {p} right here.",
    "If you look closely at this spot, you can see {p}, which is a typical finding in this kind of section.",
    "This region shows {p}; keep this pattern in mind, because we will compare it with the next field and "
    "it is a frequent question on the board exam.",
)
_LINKS = ("Let us move to another field.", "Now a different area.", "Moving on.")


@dataclass
class Utterance:
    start: float
    end: float
    text: str
    label: str | None = None  # class under the pointer, None for connecting speech
    box: list[int] | None = None  # [x1, y1, x2, y2] frame pixels of the region pointed at
    chunk: int | None = None


@dataclass
class VideoTruth:
    """Ground truth of one synthetic lecture (what ``<stem>.truth.json`` holds) plus the file paths."""

    path: Path
    transcript: Path
    truth_path: Path
    fps: float
    width: int
    height: int
    n_frames: int
    background: str
    seed: int
    cursor_kind: str
    chunks: list[list[float]]  # [[start, end], ...] seconds of stable views
    transitions: list[dict[str, Any]]  # {"start", "end", "kind": cut|pan|zoom}
    cursor: list[list[int] | None]  # hotspot [x, y] per frame or None (hidden)
    utterances: list[Utterance] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.n_frames / self.fps

    def to_json(self) -> dict[str, Any]:
        return {
            "version": GENERATOR_VERSION,
            "video": self.path.name,
            "transcript": self.transcript.name,
            "fps": self.fps, "width": self.width, "height": self.height, "n_frames": self.n_frames,
            "seconds": self.seconds, "background": self.background, "seed": self.seed,
            "cursor_kind": self.cursor_kind, "chunks": self.chunks, "transitions": self.transitions,
            "cursor": self.cursor, "utterances": [asdict(u) for u in self.utterances],
        }

    @classmethod
    def load(cls, truth_path: str | Path) -> VideoTruth:
        """Read a ``.truth.json`` written by :func:`write_narrated_video`."""
        truth_path = Path(truth_path)
        d = read_json(truth_path)
        try:
            return cls(
                path=truth_path.parent / d["video"], transcript=truth_path.parent / d["transcript"],
                truth_path=truth_path, fps=float(d["fps"]), width=int(d["width"]), height=int(d["height"]),
                n_frames=int(d["n_frames"]), background=d["background"], seed=int(d["seed"]),
                cursor_kind=d["cursor_kind"], chunks=d["chunks"], transitions=d["transitions"],
                cursor=d["cursor"], utterances=[Utterance(**u) for u in d["utterances"]],
            )
        except KeyError as err:
            raise PathkitError(f"{truth_path}: missing field {err.args[0]!r}") from err


# --------------------------------------------------------------------------------------------- backgrounds


def _render_class(label: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(render_tissue(label, height, width, rng), dtype=np.uint8)[..., :3]


def synthetic_background(height: int, width: int, rng: np.random.Generator, n_regions: int = 8
                         ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A canvas of irregular (Voronoi, warped) tissue regions: (RGB (H, W, 3), label map (H, W) int, classes)."""
    import cv2

    classes = SYNTHETIC_CLASSES
    seeds = rng.uniform([0, 0], [width, height], size=(n_regions, 2))
    labels = rng.permutation(np.resize(np.arange(len(classes)), n_regions))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    warp = cv2.resize(rng.normal(0, 1, (height // 32 + 2, width // 32 + 2, 2)).astype(np.float32),
                      (width, height), interpolation=cv2.INTER_CUBIC) * (0.06 * min(height, width))
    px, py = xx + warp[..., 0], yy + warp[..., 1]
    dist = (px[None] - seeds[:, 0, None, None]) ** 2 + (py[None] - seeds[:, 1, None, None]) ** 2
    region = np.argmin(dist, axis=0)
    label_map = labels[region].astype(np.int16)
    canvas = np.zeros((height, width, 3), np.uint8)
    for c in np.unique(label_map):
        ys, xs = np.nonzero(label_map == c)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        tex = _render_class(classes[int(c)], int(y1 - y0), int(x1 - x0), rng)
        m = label_map[y0:y1, x0:x1] == c
        canvas[y0:y1, x0:x1][m] = tex[m]
    canvas = cv2.GaussianBlur(canvas, (3, 3), 0.6)
    return canvas, label_map, classes


def ihc_background(height: int, width: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The real IHC image of colon tissue (scikit-image), upscaled, with a stain label map from colour
    deconvolution: DAB-positive, hematoxylin nuclei, unstained."""
    import cv2
    from skimage import data
    from skimage.color import rgb2hed

    img = data.immunohistochemistry()
    hed = rgb2hed(img)
    h = cv2.GaussianBlur(hed[..., 0].astype(np.float32), (0, 0), 3)
    d = cv2.GaussianBlur(hed[..., 2].astype(np.float32), (0, 0), 3)
    label = np.full(img.shape[:2], 2, np.int16)
    label[h > np.quantile(h, 0.6)] = 1
    label[d > np.quantile(d, 0.8)] = 0
    canvas = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
    label_map = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return canvas, label_map, IHC_CLASSES


# --------------------------------------------------------------------------------------------- timeline


def _ease(u: float) -> float:
    """Smooth start and stop (cubic ease-in-out)."""
    return 4 * u**3 if u < 0.5 else 1 - (-2 * u + 2) ** 3 / 2


@dataclass
class _View:
    cx: float
    cy: float
    zoom: float


def _plan_views(n_frames: int, fps: float, canvas_wh: tuple[int, int], frame_wh: tuple[int, int],
                rng: np.random.Generator) -> tuple[list[tuple[int, int]], list[dict], list[tuple[_View, _View] | _View]]:
    """Per-frame view parameters: stable spans (frame index ranges), transitions and the view per frame."""
    cw, ch = canvas_wh
    fw, fh = frame_wh

    def random_view(prev: _View | None) -> _View:
        for _ in range(50):
            zoom = float(rng.uniform(0.9, 1.4))
            hw, hh = fw / zoom / 2, fh / zoom / 2
            v = _View(float(rng.uniform(hw, cw - hw)), float(rng.uniform(hh, ch - hh)), zoom)
            if prev is None or math.hypot(v.cx - prev.cx, v.cy - prev.cy) > 0.45 * fw:
                return v
        return v

    spans, transitions, per_frame = [], [], []
    i, view = 0, random_view(None)
    while i < n_frames:
        hold = int(round(rng.uniform(2.0, 4.0) * fps))
        if n_frames - (i + hold) < int(2.0 * fps):  # too little left for another view: hold to the end
            hold = n_frames - i
        spans.append((i, i + hold - 1))
        per_frame += [view] * hold
        i += hold
        if i >= n_frames:
            break
        nxt = random_view(view)
        if rng.random() < 0.5:
            transitions.append({"start": round(i / fps, 4), "end": round(i / fps, 4), "kind": "cut"})
        else:
            kind = "pan" if rng.random() < 0.6 else "zoom"
            if kind == "zoom":  # zoom in or out around (nearly) the same place
                nxt = _View(view.cx + float(rng.uniform(-0.1, 0.1)) * fw, view.cy,
                            view.zoom * (1.6 if view.zoom < 1.15 else 1 / 1.6))
                hw, hh = fw / nxt.zoom / 2, fh / nxt.zoom / 2
                nxt.cx, nxt.cy = float(np.clip(nxt.cx, hw, cw - hw)), float(np.clip(nxt.cy, hh, ch - hh))
            n_move = int(round(rng.uniform(0.4, 0.8) * fps))
            n_move = min(max(n_move, 2), n_frames - i - int(2.0 * fps))
            for k in range(n_move):
                u = _ease((k + 1) / (n_move + 1))
                per_frame.append(_View(view.cx + u * (nxt.cx - view.cx), view.cy + u * (nxt.cy - view.cy),
                                       view.zoom * (nxt.zoom / view.zoom) ** u))
            transitions.append({"start": round(i / fps, 4), "end": round((i + n_move) / fps, 4), "kind": kind})
            i += n_move
        view = nxt
    return spans, transitions, per_frame


def _view_matrix(v: _View, frame_wh: tuple[int, int]) -> np.ndarray:
    fw, fh = frame_wh
    return np.array([[v.zoom, 0, fw / 2 - v.zoom * v.cx], [0, v.zoom, fh / 2 - v.zoom * v.cy]], np.float64)


def _label_at(label_map: np.ndarray, v: _View, frame_wh: tuple[int, int], x: float, y: float, r: int
              ) -> tuple[int, float]:
    """Majority class (and its share) in a disc of radius r frame px around frame point (x, y)."""
    fw, fh = frame_wh
    cx = v.cx + (x - fw / 2) / v.zoom
    cy = v.cy + (y - fh / 2) / v.zoom
    rr = max(1, int(r / v.zoom))
    y0, y1 = int(max(0, cy - rr)), int(min(label_map.shape[0], cy + rr + 1))
    x0, x1 = int(max(0, cx - rr)), int(min(label_map.shape[1], cx + rr + 1))
    patch = label_map[y0:y1, x0:x1].ravel()
    counts = np.bincount(patch, minlength=int(label_map.max()) + 1)
    c = int(np.argmax(counts))
    return c, float(counts[c] / max(1, patch.size))


def _plan_cursor(spans, per_frame, fps, frame_wh, label_map, classes, rng, shape_hw
                 ) -> tuple[list[list[int] | None], list[Utterance]]:
    """Pointer hotspot per frame and the utterances that narrate its dwells and circles."""
    fw, fh = frame_wh
    sh, sw = shape_hw
    n = len(per_frame)
    margin_l, margin_t = 14, 14
    margin_r, margin_b = sw + 4, sh + 4
    cursor: list[list[int] | None] = [None] * n
    utterances: list[Utterance] = []
    pos: tuple[float, float] | None = None
    visible = False
    for chunk_id, (a, b) in enumerate(spans):
        # Hidden for this whole view sometimes (e.g. the narrator talks without pointing).
        if rng.random() < 0.2 and b - a > fps:
            visible = False
            pos = None
            utterances.append(Utterance(round(a / fps + 0.2, 4), round((b + 1) / fps - 0.2, 4), str(rng.choice(_LINKS)),
                                        chunk=chunk_id))
            continue
        i = a
        if pos is None:
            pos = (float(rng.uniform(margin_l, fw - margin_r)), float(rng.uniform(margin_t, fh - margin_b)))
        visible = True
        while i <= b:
            # choose a target whose neighbourhood is (mostly) one class
            best = None
            for _ in range(12):
                tx = float(rng.uniform(margin_l + 20, fw - margin_r - 20))
                ty = float(rng.uniform(margin_t + 20, fh - margin_b - 20))
                c, share = _label_at(label_map, per_frame[a], frame_wh, tx, ty, 18)
                if best is None or share > best[3]:
                    best = (tx, ty, c, share)
            tx, ty, c, _ = best
            n_move = min(int(round(rng.uniform(0.3, 0.6) * fps)), b - i + 1)
            for k in range(n_move):
                u = _ease((k + 1) / n_move)
                cursor[i + k] = [int(round(pos[0] + u * (tx - pos[0]))), int(round(pos[1] + u * (ty - pos[1])))]
            i += n_move
            pos = (tx, ty)
            n_act = min(int(round(rng.uniform(1.0, 2.0) * fps)), b - i + 1)
            if n_act < int(0.6 * fps):
                for k in range(b - i + 1):  # too short to narrate: rest here
                    cursor[i + k] = [int(round(tx)), int(round(ty))]
                i = b + 1
                break
            circle = rng.random() < 0.5
            radius = float(rng.uniform(0.05, 0.1)) * fw
            phase = float(rng.uniform(0, 2 * math.pi))
            wander = rng.normal(0, 1, (n_act // 3 + 2, 2)).cumsum(0) * (0.02 * fw)
            for k in range(n_act):
                if circle:  # about one turn per second
                    ang = phase + 2 * math.pi * k / max(1.0, fps)
                    x, y = tx + radius * math.cos(ang), ty + radius * math.sin(ang)
                else:  # a dwell: the hand drifts slowly around the spot
                    dx, dy = wander[k // 3] - wander[0]
                    x, y = tx + dx, ty + dy
                cursor[i + k] = [int(np.clip(round(x), 0, fw - margin_r)), int(np.clip(round(y), 0, fh - margin_b))]
            pts = np.array(cursor[i:i + n_act])
            box = [int(max(0, pts[:, 0].min() - 6)), int(max(0, pts[:, 1].min() - 6)),
                   int(min(fw - 1, pts[:, 0].max() + 6)), int(min(fh - 1, pts[:, 1].max() + 6))]
            label = classes[c]
            text = str(rng.choice(_TEMPLATES)).format(p=PHRASES[label])
            text = text[0].upper() + text[1:]
            utterances.append(Utterance(round(i / fps, 4), round((i + n_act) / fps, 4), text, label, box, chunk_id))
            i += n_act
        # clamp everything into the visible margins
        for k in range(a, b + 1):
            if cursor[k] is not None:
                cursor[k] = [int(np.clip(cursor[k][0], 0, fw - margin_r)), int(np.clip(cursor[k][1], 0, fh - margin_b))]
        pos = tuple(cursor[b]) if cursor[b] is not None else pos
    # During transitions the pointer stays where it was (if it was shown).
    last = None
    for k in range(n):
        in_span = any(a <= k <= b for a, b in spans)
        if in_span:
            last = cursor[k]
        elif last is not None:
            cursor[k] = list(last)
    del visible
    return cursor, utterances


# --------------------------------------------------------------------------------------------- writer


def _vtt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def write_vtt(path: str | Path, utterances: list[Utterance]) -> Path:
    """Write utterances as a WebVTT file (atomically)."""
    lines = ["WEBVTT", ""]
    for k, u in enumerate(utterances, start=1):
        lines += [str(k), f"{_vtt_time(u.start)} --> {_vtt_time(u.end)}", u.text, ""]
    return atomic_write_text(path, "\n".join(lines))


def write_narrated_video(path: str | Path, seconds: float = 12.0, fps: float = 10.0,
                         size: tuple[int, int] = (320, 240), seed: int = 0, background: str = "synthetic",
                         cursor_kind: str | None = None, crf: int = 28, noise: float = 2.0,
                         screen_scale: float = 1.0) -> VideoTruth:
    """Write a synthetic narrated lecture: ``path`` (MP4, H.264), ``<stem>.vtt`` and ``<stem>.truth.json``.

    Args:
        path: the ``.mp4`` to write; the transcript and ground truth go beside it.
        seconds, fps, size: duration, frame rate and (width, height) (even numbers; H.264 needs them).
        seed: everything (views, pointer path, speech) is a deterministic function of the seed.
        background: ``"synthetic"`` (procedural tissue regions) or ``"ihc"`` (scikit-image's real IHC image).
        cursor_kind: ``"arrow"`` or ``"hand"``; default: arrow, hand for one seed in four.
        crf: x264 constant rate factor; 28 gives the blocky compression of web lectures.
        noise: standard deviation (grey levels) of per-frame camera noise, as microscope cameras show.
        screen_scale: render the "screen" this many times larger and downscale it to ``size`` (a 1080p
            screen recorded at 720p is 1.5): the pointer then appears smaller and blurred, as in real uploads.
    """
    import av
    import cv2

    path = Path(path)
    fw, fh = int(size[0]), int(size[1])
    if fw % 2 or fh % 2 or min(fw, fh) < 64:
        raise PathkitError(f"{path}: size {size} must be even numbers >= 64 (H.264 needs even dimensions)")
    if background not in ("synthetic", "ihc"):
        raise PathkitError(f"{path}: background {background!r} must be 'synthetic' or 'ihc'")
    rng = np.random.default_rng([seed, 7, 0 if background == "synthetic" else 1])
    n_frames = int(round(seconds * fps))
    if n_frames < int(2 * fps):
        raise PathkitError(f"{path}: seconds={seconds} too short (need >= 2 s)")
    cursor_kind = cursor_kind or ("hand" if seed % 4 == 3 else "arrow")
    sw_, sh_ = int(round(fw * screen_scale)), int(round(fh * screen_scale))
    shape = SHAPES[cursor_kind].scaled(cursor_scale_for(sh_))
    out_hw = (int(np.ceil(shape.grey.shape[0] / screen_scale)), int(np.ceil(shape.grey.shape[1] / screen_scale)))

    cw, ch = 2 * fw, 2 * fh
    if background == "synthetic":
        canvas, label_map, classes = synthetic_background(ch, cw, rng)
    else:
        canvas, label_map, classes = ihc_background(max(ch, cw), max(ch, cw))
        cw = ch = max(cw, ch)
    spans, transitions, per_frame = _plan_views(n_frames, fps, (cw, ch), (fw, fh), rng)
    cursor, utterances = _plan_cursor(spans, per_frame, fps, (fw, fh), label_map, classes, rng, out_hw)

    noise_rng = np.random.default_rng([seed, 11])
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = fw, fh, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            for k, v in enumerate(per_frame):
                m = _view_matrix(v, (fw, fh)) * screen_scale
                frame = cv2.warpAffine(canvas, m, (sw_, sh_), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                if cursor[k] is not None:
                    x, y = cursor[k]
                    draw_cursor(frame, int(round(x * screen_scale)), int(round(y * screen_scale)), shape)
                if screen_scale != 1.0:
                    frame = cv2.resize(frame, (fw, fh), interpolation=cv2.INTER_AREA)
                if noise > 0:
                    grain = noise_rng.normal(0, noise, frame.shape[:2]).astype(np.float32)[..., None]
                    frame = np.clip(frame.astype(np.float32) + grain, 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    vtt = write_vtt(path.with_suffix(".vtt"), utterances)
    truth = VideoTruth(
        path=path, transcript=vtt, truth_path=path.with_suffix(".truth.json"), fps=float(fps), width=fw,
        height=fh, n_frames=n_frames, background=background, seed=int(seed), cursor_kind=cursor_kind,
        chunks=[[round(a / fps, 4), round((b + 1) / fps, 4)] for a, b in spans], transitions=transitions, cursor=cursor,
        utterances=utterances,
    )
    write_json(truth.truth_path, truth.to_json(), indent=None)
    return truth


def ensure_video_set(root: str | Path, cfg, seed: int = 0) -> list[VideoTruth]:
    """Load the synthetic lecture set under ``root`` if complete, else build it.

    ``cfg`` is a :class:`pathkit.config.SyntheticConfig`: ``video_count`` videos of ``video_seconds`` at
    ``video_fps`` and ``video_size``; backgrounds alternate synthetic / ihc. ``root/videos.json`` (written
    last) marks the set complete and records the parameters it was built with.
    """
    root = Path(root)
    params = {"version": GENERATOR_VERSION, "count": cfg.video_count, "seconds": cfg.video_seconds,
              "fps": cfg.video_fps, "size": list(cfg.video_size), "seed": seed}
    manifest = root / "videos.json"
    if manifest.exists():
        try:
            m = read_json(manifest)
            if m.get("params") == params:
                truths = [VideoTruth.load(root / name) for name in m["videos"]]
                if all(t.path.exists() and t.transcript.exists() for t in truths):
                    return truths
        except (PathkitError, json.JSONDecodeError, KeyError):
            pass
    truths = []
    for k in range(cfg.video_count):
        background = "synthetic" if k % 2 == 0 else "ihc"
        truths.append(write_narrated_video(root / f"lecture_{k:03d}.mp4", cfg.video_seconds, cfg.video_fps,
                                           tuple(cfg.video_size), seed=seed * 1000 + k, background=background))
    write_json(manifest, {"params": params, "videos": [t.truth_path.name for t in truths]})
    return truths
