"""Record real screencasts with ground truth: Xvfb, a real X cursor theme, xdotool, ffmpeg's x11grab.

pathkit draws neither the pointer nor the capture: the X server shows the theme's cursor (libXcursor reads
``XCURSOR_THEME`` / ``XCURSOR_SIZE``), ``xdotool`` moves it, and ``ffmpeg -f x11grab -draw_mouse 1`` grabs the
screen and paints the cursor image the X server reports (XFixes). The lecture is played by a Tk window
(:mod:`pathkit.video.screencast_player`) at the top left of a screen wider than the captured region, so
moving the pointer right of the region takes it out of the video.

Synchronisation: x11grab stamps each grab with the wall clock and ffmpeg prints the first stamp
(``start: <seconds>``); the player ticks half-way between grabs and logs each pointer move's wall-clock
interval. A frame's pointer is the last move finished before its grab; a frame grabbed while a move was
in flight (within ``slack`` seconds) is *ambiguous* and left out of scoring.

``record_screencast`` writes a lossless capture (``.raw.mkv``) plus ``.truth.json``; ``encode_variant`` makes
the delivered video from it (x264 at a CRF, optionally downscaled), whose ground truth scales with it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pathkit.io import PathkitError, atomic_path, read_json, write_json
from pathkit.synthetic.video import Utterance, write_vtt
from pathkit.video.lecture_script import Lecture

# Lazy imports: cv2 (OpenCV, ~0.3 s). They load inside the functions that need them, not when this module is
# imported.

REQUIRED_PROGRAMS = ("Xvfb", "xdotool", "xsetroot", "ffmpeg")
THEME_DIRS = (Path("/usr/share/icons"), Path.home() / ".icons")


@dataclass(frozen=True)
class PointerStyle:
    """A real X cursor: theme folder name, nominal size in pixels, cursor name (``left_ptr`` or ``hand2``)."""

    theme: str
    size: int = 24
    cursor: str = "left_ptr"
    theme_dir: str = ""  # a folder holding the theme, when it is not installed (e.g. a recoloured_theme)

    @property
    def name(self) -> str:
        return f"{self.theme}-{self.size}-{self.cursor}"


def missing_programs() -> list[str]:
    return [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]


def theme_installed(theme: str, theme_dir: str = "") -> bool:
    dirs = (Path(theme_dir), *THEME_DIRS) if theme_dir else THEME_DIRS
    return any((d / theme / "cursors").is_dir() for d in dirs)


def pointer_plan(n_ticks: int, fps: float, size: tuple[int, int], screen_width: int,
                 rng: np.random.Generator, outside_fraction: float = 0.2, gesture_fraction: float = 0.0
                 ) -> tuple[list[list[int]], list[list[float]]]:
    """Per tick, the pointer's screen position: dwells, eased moves, and spells outside the captured region.

    With ``gesture_fraction``, that share of the dwells are pointing gestures: the narrator circles a region
    (radius 14-40 px, once or twice) instead of resting. Returns the plan and the gestures as
    ``[first tick, last tick, cx, cy, radius]`` (screen pixels).
    """
    w, h = size
    out: list[list[int]] = []
    gestures: list[list[float]] = []
    x, y = float(rng.uniform(40, w - 60)), float(rng.uniform(40, h - 60))
    while len(out) < n_ticks:
        if rng.random() < outside_fraction:  # leave the region to the right, wait, come back
            ox, oy = float(rng.uniform(w + 40, screen_width - 10)), float(rng.uniform(20, h - 20))
            out += [[int(ox), int(oy)]] * int(rng.uniform(0.4, 1.0) * fps)
        elif rng.random() < gesture_fraction:  # circle a region, starting and ending at its centre's right
            r = float(rng.uniform(14, 40))
            cx, cy = float(np.clip(x, r + 10, w - r - 50)), float(np.clip(y, r + 10, h - r - 50))
            n = int(rng.uniform(1.2, 2.0) * fps)
            loops = float(rng.choice([1.0, 2.0]))
            k0 = len(out)
            out += [[int(round(cx + r * np.cos(2 * np.pi * loops * i / n))), int(round(cy + r * np.sin(2 * np.pi * loops * i / n)))]
                    for i in range(n)]
            gestures.append([k0, len(out) - 1, cx, cy, r])
            x, y = cx + r, cy
        else:
            out += [[int(x), int(y)]] * int(rng.uniform(0.3, 1.4) * fps)  # dwell
        nx, ny = float(rng.uniform(20, w - 50)), float(rng.uniform(20, h - 50))
        steps = max(2, int(rng.uniform(0.3, 0.9) * fps))
        for i in range(1, steps + 1):
            u = i / steps
            e = 4 * u**3 if u < 0.5 else 1 - (-2 * u + 2) ** 3 / 2
            out.append([int(round(x + (nx - x) * e)), int(round(y + (ny - y) * e))])
        x, y = nx, ny
    return out[:n_ticks], [g for g in gestures if g[1] < n_ticks]


def _start_xvfb(screen: tuple[int, int]) -> tuple[subprocess.Popen, str]:
    """An Xvfb on a free display (``-displayfd``: the server picks it and writes it to us)."""
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", f"{screen[0]}x{screen[1]}x24",
                             "-br", "-nolisten", "tcp", "-noreset"], pass_fds=(w,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        raise PathkitError("Xvfb did not start (no display number reported)")
    return proc, f":{number}"


def record_screencast(path: str | Path, lecture: Lecture, style: PointerStyle, *, fps: float = 25.0,
                      size: tuple[int, int] = (640, 360), seed: int = 0, lead_seconds: float = 1.0,
                      tail_seconds: float = 0.4, slack: float = 0.008, gesture_fraction: float = 0.0) -> Path:
    """Record ``lecture`` with a real pointer; writes ``path`` (lossless ``.mkv``) and ``<path>.truth.json``.

    Takes ``lecture.duration + lead_seconds + tail_seconds`` of wall-clock time plus a few seconds of setup.
    """
    missing = missing_programs()
    if missing:
        raise PathkitError(f"cannot record a screencast: missing programs {', '.join(missing)} "
                           "(Debian: xvfb xdotool x11-xserver-utils ffmpeg)")
    if not theme_installed(style.theme, style.theme_dir):
        raise PathkitError(f"cursor theme {style.theme!r} is not installed under {THEME_DIRS[0]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    screen = (w + 200, h)
    rng = np.random.default_rng(seed)
    n_ticks = int(round(lecture.duration * fps))
    plan, gestures = pointer_plan(n_ticks, fps, size, screen[0], rng, gesture_fraction=gesture_fraction)
    lead = int(round(lead_seconds * fps))
    xvfb, display = _start_xvfb(screen)
    procs: list[subprocess.Popen] = [xvfb]
    restore = _exit_on_sigterm()  # a killed recorder still stops its X server, player and ffmpeg
    try:
        env = {**os.environ, "DISPLAY": display, "XCURSOR_THEME": style.theme, "XCURSOR_SIZE": str(style.size)}
        if style.theme_dir:
            env["XCURSOR_PATH"] = ":".join([style.theme_dir, *map(str, THEME_DIRS)])
        subprocess.run(["xsetroot", "-cursor_name", style.cursor], env=env, check=True)
        subprocess.run(["xdotool", "mousemove", str(plan[0][0]), str(plan[0][1])], env=env, check=True)
        with tempfile.TemporaryDirectory(prefix="screencast-") as tmp:
            tmp = Path(tmp)
            job = {"lecture": lecture.to_json(), "size": [w, h], "fps": fps, "pointer": plan,
                   "cursor_name": style.cursor, "start_file": str(tmp / "start"), "ready_file": str(tmp / "ready"),
                   "stop_file": str(tmp / "stop"),
                   "lead_frames": lead,
                   "log": str(tmp / "log.json")}
            (tmp / "job.json").write_text(json.dumps(job))
            player = subprocess.Popen([sys.executable, "-m", "pathkit.video.screencast_player", str(tmp / "job.json")],
                                      env=env, stderr=subprocess.PIPE, text=True)
            procs.append(player)
            deadline = time.time() + 120
            while not (tmp / "ready").exists():  # its window is up and every source canvas is built
                if player.poll() is not None or time.time() > deadline:
                    raise PathkitError(f"screencast player did not start: {player.stderr.read()[-800:]}")
                time.sleep(0.02)
            with atomic_path(path) as part:
                ffmpeg = subprocess.Popen(
                    ["ffmpeg", "-hide_banner", "-nostats", "-y", "-f", "x11grab", "-draw_mouse", "1",
                     "-framerate", str(fps), "-video_size", f"{w}x{h}", "-i", f"{display}+0,0",
                     "-c:v", "libx264rgb", "-preset", "ultrafast", "-qp", "0", "-fps_mode", "passthrough",
                     "-f", "matroska", str(part)],
                    env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                procs.append(ffmpeg)
                start, lines = _capture_start(ffmpeg)
                (tmp / "start.part").write_text(repr(start))
                os.replace(tmp / "start.part", tmp / "start")
                drain = threading.Thread(target=lambda: lines.extend(ffmpeg.stderr), daemon=True)
                drain.start()
                deadline = time.time() + lecture.duration + lead_seconds + 120
                while not (tmp / "log.json").exists():  # the player has played the last tick
                    if player.poll() is not None or time.time() > deadline:
                        raise PathkitError(f"screencast player failed: {player.stderr.read()[-800:]}")
                    time.sleep(0.02)
                time.sleep(tail_seconds)
                ffmpeg.communicate(input="q", timeout=60)
                drain.join(timeout=5)
                (tmp / "stop").write_text("stop")
                player.wait(timeout=30)
                if ffmpeg.returncode != 0:
                    raise PathkitError(f"ffmpeg x11grab failed: {''.join(lines)[-800:]}")
            log = json.loads((tmp / "log.json").read_text())
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        restore()
    truth = {"style": asdict(style), "fps": fps, "size": [w, h], "screen": list(screen), "scale": 1.0,
             "capture_start": start, "lead_frames": lead, "slack": slack, "seed": seed,
             "initial": plan[0], "lecture": lecture.to_json(),
             # per tick, relative to the first grab: [move began, move ended, x, y] (screen pixels)
             "moves": [[round(r["t_move0"] - start, 5), round(r["t_move1"] - start, 5), r["x"], r["y"]] for r in log],
             "shown": [round(r["t_show"] - start, 5) for r in log],
             "gestures": gestures}  # [first tick, last tick, cx, cy, radius], screen pixels
    write_json(truth_path(path), truth)
    return path


def _exit_on_sigterm():
    """Turn SIGTERM into SystemExit while recording (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        raise SystemExit(f"screencast recording stopped by signal {signum}")

    old = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, old)


def _capture_start(ffmpeg: subprocess.Popen) -> tuple[float, list[str]]:
    """The wall clock of x11grab's first grab, from ffmpeg's ``start: <seconds>`` line."""
    lines: list[str] = []
    for line in ffmpeg.stderr:
        lines.append(line)
        m = re.search(r"start: ([0-9.]+)", line)
        if m:
            return float(m.group(1)), lines
    raise PathkitError(f"ffmpeg x11grab did not start: {''.join(lines)[-800:]}")


def truth_path(video: str | Path) -> Path:
    return Path(video).with_suffix(".truth.json")


def encode_variant(raw: str | Path, out: str | Path, crf: int = 28, scale: float = 1.0) -> Path:
    """The delivered video: x264 (yuv420p) at ``crf``, downscaled by ``scale`` (area); ground truth follows."""
    raw, out = Path(raw), Path(out)
    truth = read_json(truth_path(raw))
    w, h = truth["size"]
    ow, oh = int(round(w * scale / 2)) * 2, int(round(h * scale / 2)) * 2
    with atomic_path(out) as part:
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(raw),
                        "-vf", f"scale={ow}:{oh}:flags=area", "-c:v", "libx264", "-preset", "medium",
                        "-crf", str(crf), "-pix_fmt", "yuv420p", "-fps_mode", "passthrough", "-enc_time_base", "-1",
                        "-video_track_timescale", "1000", "-f", "mp4",
                        str(part)], check=True)
    write_json(truth_path(out), {**truth, "scale": truth["scale"] * ow / w, "size": [ow, oh], "crf": crf})
    return out


def pointer_truth(truth: dict, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame time (seconds from the first grab): the hotspot in video pixels (NaN where no pointer is
    in the video) and whether the frame is ambiguous (grabbed while a move was in flight, or the hotspot
    within 2 px of the region's edge)."""
    moves = np.asarray(truth["moves"], np.float64).reshape(-1, 4)
    slack = float(truth["slack"])
    w, h = truth["size"]
    s = float(truth["scale"])
    xy = np.full((len(times), 2), np.nan)
    ambiguous = np.zeros(len(times), bool)
    for i, t in enumerate(np.asarray(times, np.float64)):
        done = moves[moves[:, 1] <= t]
        px, py = (done[-1, 2], done[-1, 3]) if len(done) else truth["initial"]
        in_flight = (moves[:, 0] - slack <= t) & (t <= moves[:, 1] + slack)
        vx, vy = (px + 0.5) * s - 0.5, (py + 0.5) * s - 0.5
        ambiguous[i] = bool(in_flight.any()) or abs(vx - w) < 3
        if 0 <= vx < w and 0 <= vy < h:
            xy[i] = vx, vy
    return xy, ambiguous


def chunk_truth(truth: dict, duration: float) -> list[tuple[float, float]]:
    """The lecture's content holds in video seconds, from when the player actually showed their first and
    last frames (it can fall behind its schedule); a hold that ends the lecture runs to the end of the video."""
    lecture = Lecture.from_json(truth["lecture"])
    shown = np.asarray(truth["shown"], np.float64)
    fps = float(truth["fps"])
    k_end = len(shown)

    def at(t: float) -> float:
        k = int(round(t * fps))
        return float(shown[k]) if k < k_end else duration

    # the player keeps the last view on screen until the capture stops: a hold that ends the lecture runs on
    return [(at(a), duration if b >= lecture.duration - 0.5 / fps else at(b)) for a, b in lecture.chunks()]


def _xcursor_images(path: Path) -> list[tuple[int, int, int, int, int, np.ndarray]]:
    """Images of an Xcursor file: (nominal size, xhot, yhot, delay, frame index, RGBA uint8 (h, w, 4))."""
    b = path.read_bytes()
    if b[:4] != b"Xcur":
        raise PathkitError(f"{path}: not an Xcursor file")
    (ntoc,) = struct.unpack_from("<I", b, 12)
    out = []
    for i in range(ntoc):
        kind, _, pos = struct.unpack_from("<III", b, 16 + 12 * i)
        if kind != 0xFFFD0002:  # image chunk
            continue
        _, _, size, _, w, h, xhot, yhot, delay = struct.unpack_from("<9I", b, pos)
        argb = np.frombuffer(b, "<u4", w * h, pos + 36).reshape(h, w)
        a = (argb >> 24).astype(np.float32)
        rgb = np.stack([(argb >> s) & 255 for s in (16, 8, 0)], -1).astype(np.float32)  # premultiplied
        rgb = np.where(a[..., None] > 0, rgb * 255 / np.maximum(a, 1)[..., None], 0)
        out.append((size, xhot, yhot, delay, i, np.dstack([np.clip(rgb + 0.5, 0, 255), a]).astype(np.uint8)))
    return out


def recoloured_theme(source: str, name: str, fill_rgb: tuple[int, int, int], root: str | Path,
                     cursors: tuple[str, ...] = ("left_ptr", "hand2")) -> Path:
    """A new cursor theme ``root/name``: ``source``'s cursors with their light fill painted ``fill_rgb``, built
    by ``xcursorgen`` from PNGs. Use it with ``XCURSOR_PATH=root:/usr/share/icons``."""
    import cv2

    if shutil.which("xcursorgen") is None:
        raise PathkitError("xcursorgen is missing (Debian: x11-apps)")
    src = next((d / source / "cursors" for d in THEME_DIRS if (d / source / "cursors").is_dir()), None)
    if src is None:
        raise PathkitError(f"cursor theme {source!r} is not installed")
    out = Path(root) / name / "cursors"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for cursor in cursors:
            lines = []
            for size, xhot, yhot, delay, i, rgba in _xcursor_images((src / cursor).resolve()):
                img = rgba.astype(np.float32)
                light = img[..., :3].mean(-1, keepdims=True) / 255.0  # white fill -> colour, black outline stays
                img[..., :3] = light * np.asarray(fill_rgb, np.float32)
                png = Path(tmp) / f"{cursor}_{i}.png"
                cv2.imwrite(str(png), cv2.cvtColor(np.clip(img + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGBA2BGRA))
                lines.append(f"{size} {xhot} {yhot} {png} {delay}")
            cfg = Path(tmp) / f"{cursor}.cfg"
            cfg.write_text("\n".join(lines) + "\n")
            subprocess.run(["xcursorgen", str(cfg), str(out / cursor)], check=True)
    (out.parent / "index.theme").write_text(f"[Icon Theme]\nName={name}\n")
    return out.parent


_DWELL_LINES = ("Look at this area here.", "Notice the staining right here.", "Here you can see the nuclei.",
                "This spot shows the pattern we discussed.", "Keep this region in mind.")


def dwells(truth: dict, min_seconds: float = 0.6) -> list[tuple[float, float, float, float]]:
    """Spans where the pointer rested inside the video for at least ``min_seconds``: ``(start, end, x, y)``,
    seconds from the first grab and video pixels."""
    moves = np.asarray(truth["moves"], np.float64).reshape(-1, 4)
    w, h = truth["size"]
    s = float(truth["scale"])
    out = []
    i = 0
    while i < len(moves):
        j = i
        while j + 1 < len(moves) and moves[j + 1, 2] == moves[i, 2] and moves[j + 1, 3] == moves[i, 3]:
            j += 1
        x, y = (moves[i, 2] + 0.5) * s - 0.5, (moves[i, 3] + 0.5) * s - 0.5
        start, end = moves[i, 1], moves[j + 1, 0] if j + 1 < len(moves) else moves[j, 1] + 1 / truth["fps"]
        if end - start >= min_seconds and 0 <= x < w and 0 <= y < h:
            out.append((float(start), float(end), float(x), float(y)))
        i = j + 1
    return out


def gesture_boxes(truth: dict) -> list[tuple[float, float, list[float]]]:
    """The pointing gestures as ``(start, end, [x1, y1, x2, y2])``: seconds from the first grab, video pixels."""
    moves = np.asarray(truth["moves"], np.float64).reshape(-1, 4)
    s = float(truth["scale"])
    out = []
    for k0, k1, cx, cy, r in truth.get("gestures", []):
        box = [(cx - r + 0.5) * s - 0.5, (cy - r + 0.5) * s - 0.5, (cx + r + 0.5) * s - 0.5, (cy + r + 0.5) * s - 0.5]
        out.append((float(moves[int(k0), 1]), float(moves[int(k1), 1]), box))
    return out


def dwell_transcript(truth: dict, vtt: str | Path) -> list[tuple[float, float, list[float]]]:
    """A WebVTT narration with one utterance per pointing gesture (or, for a recording without gestures, per
    rest of the pointer): the narrator speaks about what the pointer shows. Returns ``(start, end, box)`` per
    utterance, the groundings' ground truth (a rest's box is the 1-pixel point where it rested)."""
    spans = gesture_boxes(truth) or [(a, b, [x, y, x + 1, y + 1]) for a, b, x, y in dwells(truth)]
    write_vtt(vtt, [Utterance(round(a, 3), round(b, 3), _DWELL_LINES[k % len(_DWELL_LINES)])
                    for k, (a, b, _) in enumerate(spans)])
    return spans
