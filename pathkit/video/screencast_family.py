"""The real-screencast family: which X cursor themes, sizes and colours are recorded, and which are held out.

The pointer detector's network is trained on pathkit's own procedural drawings only; no theme below was used
to train it. Splits, for the tracker logic and thresholds around the network:

* ``dev``: the DMZ themes (white and black arrows and hands), on which the thresholds, the hotspot offset and the
  re-acquisition rules were set and debugged;
* ``heldout``: other themes, sizes and colours, never debugged; their per-clip recall was seen once on an
  earlier recording (different lecture seeds) while the tracker was still changing, and their failures (the
  red glass theme's left-pointing "hand", the 12 px handhelds arrow, a nucleus the first detector took for a
  black arrow) shaped the second detector's renders: held out from training, but not unseen;
* ``fresh``: added after the first tracker was frozen and scored once; its failures (hands) were then looked at
  and the renders widened, so it is no longer unseen either;
* ``accept``: other Debian themes (bibata, chameleon, comixcursors, oxygen, crystal), new fill colours
  (magenta, cyan, orange) and sizes (20, 28, 56 px), recorded after the second detector's weights were
  committed and scored once: the second detector's acceptance measurement; its failures (small pointers after
  downscaling) were then looked at, so it is "seen" for the third detector;
* ``accept2``: theme variants, colours, sizes and downscales no split used, recorded after the third detector's
  weights were committed and scored once: the third detector's acceptance measurement; its misses (still
  pointers the network scored 0.4-0.65, never taken for the pointer) were then looked at, so it is "seen" too;
* ``accept3``: two theme families no split used (Ubuntu's Yaru, Paper), left-handed opaque comic pointers,
  more theme variants, colours, sizes and downscales, recorded after the fourth detector's weights were
  committed and scored once: the fourth detector's acceptance measurement; its misses (still pointers
  scored low, left-handed arrows, a pointer searched for in a crop cut close to it) were then looked at;
* ``accept4``: two Debian packages no split used (right-handed opaque and left-handed translucent comic
  pointers), more theme variants, colours, sizes (14 to 52 px), a 1080p capture at 0.4x and other downscales,
  x264 at CRF 23 and 32, recorded after the fifth detector's weights were committed and scored once: the
  acceptance measurement.

Each clip is a ~17 s lecture (:func:`pathkit.video.lecture_script.demo_lecture`, its own seed) recorded
live by :func:`pathkit.video.screencast.record_screencast`, then delivered as x264 (CRF 28), optionally
downscaled from a larger screen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pathkit.video.lecture_script import demo_lecture
from pathkit.video.screencast import (
    PointerStyle,
    encode_variant,
    recoloured_theme,
    record_screencast,
    truth_path,
)

# Lazy imports: av (PyAV, FFmpeg's libraries). They load inside the functions that need them, not when this
# module is imported.

YELLOW = "pathkit-yellow"  # DMZ-White's cursors with a yellow fill, built with xcursorgen (recoloured_theme)
GREEN = "pathkit-green"  # whiteglass's cursors with a green fill
MAGENTA = "pathkit-magenta"  # crystalwhite's cursors with a magenta fill (accept split)
CYAN = "pathkit-cyan"  # Bibata-Modern-Ice's with a cyan fill (accept split)
ORANGE = "pathkit-orange"  # oxy-white's with an orange fill (accept split)
LIME = "pathkit-lime"  # ComixCursors-White's with a lime fill (accept2 split)
PINK = "pathkit-pink"  # Chameleon-White-Regular's with a pink fill (accept2)
TEAL = "pathkit-teal"  # ComixCursors-Slim-White's with a teal fill (accept2)
BROWN = "pathkit-brown"  # crystalgray's with a brown fill (accept2)
OLIVE = "pathkit-olive"  # crystalwhiteleft's with an olive fill (accept3)
CORAL = "pathkit-coral"  # Chameleon-White-Large's with a coral fill (accept3)
NAVY = "pathkit-navy"  # ComixCursors-LH-Opaque-White's with a navy fill (accept3)
VIOLET = "pathkit-violet"  # ComixCursors-LH-Opaque-Slim-White's with a violet fill (accept3)
CRIMSON = "pathkit-crimson"  # ComixCursors-Opaque-White's with a crimson fill (accept4)
GOLD = "pathkit-gold"  # Chameleon-White-Small's with a gold fill (accept4)
SKY = "pathkit-sky"  # Breeze_Snow's with a sky-blue fill (accept4)
PLUM = "pathkit-plum"  # ComixCursors-LH-White's (translucent) with a plum fill (accept4)
RECOLOURED = {YELLOW: ("DMZ-White", (255, 215, 0)), GREEN: ("whiteglass", (60, 200, 60)),
              MAGENTA: ("crystalwhite", (230, 40, 230)), CYAN: ("Bibata-Modern-Ice", (40, 220, 230)),
              ORANGE: ("oxy-white", (255, 140, 20)), LIME: ("ComixCursors-White", (150, 230, 30)),
              PINK: ("Chameleon-White-Regular", (255, 110, 180)), TEAL: ("ComixCursors-Slim-White", (0, 150, 140)),
              BROWN: ("crystalgray", (150, 90, 40)), OLIVE: ("crystalwhiteleft", (128, 128, 0)),
              CORAL: ("Chameleon-White-Large", (255, 110, 80)), NAVY: ("ComixCursors-LH-Opaque-White", (30, 40, 140)),
              VIOLET: ("ComixCursors-LH-Opaque-Slim-White", (140, 60, 220)),
              CRIMSON: ("ComixCursors-Opaque-White", (190, 20, 50)), GOLD: ("Chameleon-White-Small", (230, 180, 20)),
              SKY: ("Breeze_Snow", (100, 180, 255)), PLUM: ("ComixCursors-LH-White", (110, 40, 100))}


@dataclass(frozen=True)
class Clip:
    name: str
    style: PointerStyle
    split: str  # "dev" | "heldout" | "fresh" | "accept" | "accept2" | "accept3" | "accept4"
    capture: tuple[int, int] = (640, 360)
    scale: float = 1.0  # delivered size = capture * scale
    webcam: bool = False
    seed: int = 0
    crf: int = 28
    gestures: float = 0.0  # share of pointer rests that are circling gestures (narrated: pathkit video narratives)


FAMILY: tuple[Clip, ...] = (
    Clip("dmz-white-24", PointerStyle("DMZ-White", 24), "dev", seed=1),
    Clip("dmz-white-24-hand", PointerStyle("DMZ-White", 24, "hand2"), "dev", seed=2),
    Clip("dmz-black-32", PointerStyle("DMZ-Black", 32), "dev", seed=3, webcam=True),
    Clip("adwaita-24", PointerStyle("Adwaita", 24), "heldout", seed=4),
    Clip("adwaita-48-hand", PointerStyle("Adwaita", 48, "hand2"), "heldout", seed=5),
    Clip("adwaita-64", PointerStyle("Adwaita", 64), "heldout", seed=6, webcam=True),
    Clip("breeze-24", PointerStyle("breeze_cursors", 24), "heldout", seed=7),
    Clip("breeze-snow-36-hand", PointerStyle("Breeze_Snow", 36, "hand2"), "heldout", seed=8),
    Clip("whiteglass-16", PointerStyle("whiteglass", 16), "heldout", seed=9),
    Clip("handhelds-12", PointerStyle("handhelds", 12), "heldout", seed=10),
    Clip("redglass-24", PointerStyle("redglass", 24), "heldout", seed=11, webcam=True),
    Clip("redglass-32-hand", PointerStyle("redglass", 32, "hand2"), "heldout", seed=12),
    Clip("yellow-32", PointerStyle(YELLOW, 32), "heldout", seed=13),
    Clip("dmz-black-48-hand", PointerStyle("DMZ-Black", 48, "hand2"), "dev", seed=14),
    Clip("adwaita-32-720p-half", PointerStyle("Adwaita", 32), "heldout", capture=(1280, 720), scale=0.5, seed=15),
    Clip("breeze-48-720p", PointerStyle("breeze_cursors", 48), "heldout", capture=(1280, 720), seed=16),
    # "fresh": added after the tracker was frozen, recorded and scored once, never looked at before
    Clip("green-glass-32", PointerStyle(GREEN, 32), "fresh", seed=17),
    Clip("breeze-snow-48", PointerStyle("Breeze_Snow", 48), "fresh", seed=18, webcam=True),
    Clip("whiteglass-32-hand", PointerStyle("whiteglass", 32, "hand2"), "fresh", seed=19),
    Clip("adwaita-40-hand-720p-0.67", PointerStyle("Adwaita", 48, "hand2"), "fresh", capture=(960, 540), scale=0.67,
         seed=20),
    # narrated: the pointer circles what the narrator talks about (ground truth of `pathkit video narratives`)
    Clip("narrated-adwaita-32", PointerStyle("Adwaita", 32), "fresh", seed=31, gestures=0.8),
    Clip("narrated-breeze-24-hand", PointerStyle("breeze_cursors", 24, "hand2"), "fresh", seed=32, gestures=0.8),
    Clip("narrated-redglass-32", PointerStyle("redglass", 32), "fresh", seed=33, gestures=0.8, webcam=True),
    # "accept": themes (Debian's bibata, chameleon, comixcursors, oxygen and crystal cursors), colours and sizes
    # that nothing was trained or tuned on, recorded after the detector's weights were frozen and scored once
    Clip("bibata-classic-28", PointerStyle("Bibata-Modern-Classic", 28), "accept", seed=51),
    Clip("bibata-ice-24-hand", PointerStyle("Bibata-Original-Ice", 24, "hand2"), "accept", seed=52),
    Clip("chameleon-pearl-20", PointerStyle("Chameleon-Pearl-Regular", 20), "accept", seed=53),
    Clip("comix-orange-28-hand", PointerStyle("ComixCursors-Orange", 28, "hand2"), "accept", seed=54),
    Clip("oxy-blue-24", PointerStyle("oxy-blue", 24), "accept", seed=55, webcam=True),
    Clip("oxy-white-56-hand", PointerStyle("oxy-white", 56, "hand2"), "accept", seed=56),
    Clip("crystalgreen-32-hand", PointerStyle("crystalgreen", 32, "hand2"), "accept", seed=57),
    Clip("magenta-20", PointerStyle(MAGENTA, 20), "accept", seed=58),
    Clip("cyan-56-hand", PointerStyle(CYAN, 56, "hand2"), "accept", seed=59),
    Clip("orange-28-720p-half", PointerStyle(ORANGE, 28), "accept", capture=(1280, 720), scale=0.5, seed=60),
    Clip("bibata-amber-40-540p-0.67", PointerStyle("Bibata-Modern-Amber", 40), "accept", capture=(960, 540),
         scale=0.67, seed=61),
    Clip("comix-black-24", PointerStyle("ComixCursors-Black", 24), "accept", seed=62, webcam=True),
    # "accept2": recorded after the third detector's weights were committed and scored once: theme variants
    # (slim comic, left-handed crystal, obsidian oxygen, anthracite chameleon, original bibata), colours (lime,
    # pink, teal, brown) and sizes (18, 36, 44, 60 px) no split used, and captures of 1280x720 and 1600x900
    # delivered at 0.5x and 0.6x
    Clip("comix-slim-red-44-hand", PointerStyle("ComixCursors-Slim-Red", 44, "hand2"), "accept2", seed=81),
    Clip("crystalblueleft-32", PointerStyle("crystalblueleft", 32), "accept2", seed=82),
    Clip("oxy-obsidian-18", PointerStyle("oxy-obsidian", 18), "accept2", seed=83, webcam=True),
    Clip("chameleon-anthracite-36-hand", PointerStyle("Chameleon-Anthracite-Large", 36, "hand2"), "accept2", seed=84),
    Clip("lime-60", PointerStyle(LIME, 60), "accept2", seed=85),
    Clip("pink-18-hand", PointerStyle(PINK, 18, "hand2"), "accept2", seed=86),
    Clip("teal-36-720p-0.6", PointerStyle(TEAL, 36), "accept2", capture=(1280, 720), scale=0.6, seed=87,
         webcam=True),
    Clip("brown-36-720p-half", PointerStyle(BROWN, 36), "accept2", capture=(1280, 720), scale=0.5, seed=88),
    Clip("bibata-original-classic-44-900p-0.6", PointerStyle("Bibata-Original-Classic", 44), "accept2",
         capture=(1600, 900), scale=0.6, seed=89),
    # "accept3": recorded after the fourth detector's weights were committed and scored once: two theme
    # families no split used (Ubuntu's Yaru, Paper), left-handed opaque comic pointers (a Debian package no split
    # used), theme variants (mint, purple, cherry, emerald chameleon and oxygen, original amber bibata), fill
    # colours (olive, coral, navy, violet), sizes (16, 40, 64 px) and captures of 1280x720 at 0.75x and 0.5x and
    # 1600x900 at 0.45x
    Clip("yaru-24", PointerStyle("Yaru", 24), "accept3", seed=101),
    Clip("yaru-48-hand", PointerStyle("Yaru", 48, "hand2"), "accept3", seed=102, webcam=True),
    Clip("paper-32", PointerStyle("Paper", 32), "accept3", seed=103),
    Clip("paper-24-hand-720p-0.75", PointerStyle("Paper", 24, "hand2"), "accept3", capture=(1280, 720), scale=0.75,
         seed=104),
    Clip("comix-lh-blue-40", PointerStyle("ComixCursors-LH-Opaque-Blue", 40), "accept3", seed=105),
    Clip("comix-lh-slim-green-32-hand", PointerStyle("ComixCursors-LH-Opaque-Slim-Green", 32, "hand2"), "accept3",
         seed=106),
    Clip("chameleon-mint-16", PointerStyle("Chameleon-Mint-Small", 16), "accept3", seed=107),
    Clip("chameleon-purple-32-hand", PointerStyle("Chameleon-Purple-Large", 32, "hand2"), "accept3", seed=108),
    Clip("oxy-cherry-48-hand-720p-0.75", PointerStyle("oxy-cherry", 48, "hand2"), "accept3", capture=(1280, 720),
         scale=0.75, seed=109),
    Clip("oxy-emerald-24", PointerStyle("oxy-emerald", 24), "accept3", seed=110, webcam=True),
    Clip("bibata-original-amber-64", PointerStyle("Bibata-Original-Amber", 64), "accept3", seed=111),
    Clip("olive-32-720p-half", PointerStyle(OLIVE, 32), "accept3", capture=(1280, 720), scale=0.5, seed=112),
    Clip("coral-32-hand-900p-0.45", PointerStyle(CORAL, 32, "hand2"), "accept3", capture=(1600, 900), scale=0.45,
         seed=113),
    Clip("navy-40", PointerStyle(NAVY, 40), "accept3", seed=114),
    Clip("violet-40-hand", PointerStyle(VIOLET, 40, "hand2"), "accept3", seed=115),
    # "accept4": recorded after the fifth detector's weights were committed and scored once: two Debian packages
    # no split used (right-handed opaque and left-handed translucent comic pointers), theme variants (hot orange,
    # violet, zion and navy oxygen, sky-blue and dark-sky-blue chameleon, blue and left-handed grey crystal),
    # fill colours (crimson, gold, sky, plum), sizes (14, 22, 26, 30, 34, 42, 52 px), a 1920x1080 capture at
    # 0.4x, 1280x720 at 0.8x and 0.55x, 1600x900 at 0.5x, and x264 at CRF 32 and 23
    Clip("comix-opaque-red-30", PointerStyle("ComixCursors-Opaque-Red", 30), "accept4", seed=121),
    Clip("comix-lh-green-36-hand", PointerStyle("ComixCursors-LH-Green", 36, "hand2"), "accept4", seed=122),
    Clip("comix-opaque-slim-black-22", PointerStyle("ComixCursors-Opaque-Slim-Black", 22), "accept4", seed=123,
         webcam=True),
    Clip("oxy-hot-orange-34", PointerStyle("oxy-hot_orange", 34), "accept4", seed=124),
    Clip("oxy-violet-26-hand", PointerStyle("oxy-violet", 26, "hand2"), "accept4", seed=125),
    Clip("oxy-zion-52-720p-0.8", PointerStyle("oxy-zion", 52), "accept4", capture=(1280, 720), scale=0.8, seed=126),
    Clip("chameleon-skyblue-28-hand", PointerStyle("Chameleon-SkyBlue-Regular", 28, "hand2"), "accept4", seed=127),
    Clip("chameleon-darkskyblue-22", PointerStyle("Chameleon-DarkSkyBlue-Small", 22), "accept4", seed=128),
    Clip("crystalblue-30-hand-720p-0.55", PointerStyle("crystalblue", 30, "hand2"), "accept4", capture=(1280, 720),
         scale=0.55, seed=129),
    Clip("crystalgrayleft-42-900p-half", PointerStyle("crystalgrayleft", 42), "accept4", capture=(1600, 900),
         scale=0.5, seed=130),
    Clip("crimson-42", PointerStyle(CRIMSON, 42), "accept4", seed=131),
    Clip("gold-14", PointerStyle(GOLD, 14), "accept4", seed=132),
    Clip("sky-26-hand-crf32", PointerStyle(SKY, 26, "hand2"), "accept4", seed=133, crf=32),
    Clip("plum-52-hand", PointerStyle(PLUM, 52, "hand2"), "accept4", seed=134, crf=23),
    Clip("oxy-navy-38-1080p-0.4", PointerStyle("oxy-navy", 38), "accept4", capture=(1920, 1080), scale=0.4,
         seed=135, webcam=True),
)


def clip_path(root: str | Path, clip: Clip) -> Path:
    return Path(root) / f"{clip.name}.mp4"


def ensure_clip(root: str | Path, clip: Clip, short: bool = False) -> Path:
    """Record and encode ``clip`` under ``root`` unless it is already there (the lecture's length + ~8 s)."""
    root = Path(root)
    out = clip_path(root, clip)
    if out.exists() and truth_path(out).exists():
        return out
    style = clip.style
    if style.theme in RECOLOURED and not style.theme_dir:
        source, rgb = RECOLOURED[style.theme]
        theme = recoloured_theme(source, style.theme, rgb, root / "icons")
        style = replace(style, theme_dir=str(theme.parent))
    raw = root / f"{clip.name}.raw.mkv"
    record_screencast(raw, demo_lecture(clip.seed, clip.webcam, short), style, size=clip.capture, seed=clip.seed,
                      gesture_fraction=clip.gestures)
    encode_variant(raw, out, crf=clip.crf, scale=clip.scale)
    raw.unlink()
    truth_path(raw).unlink()
    return out


def frame_times(path: str | Path) -> np.ndarray:
    """Presentation time (s) of every frame of a video."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return np.array(sorted(float(p.pts * p.time_base) for p in c.demux(s) if p.pts is not None))


# Short held-out clips committed under tests/data/screencasts (made by benchmarks/record_screencast_clips.py):
# a black GNOME arrow over a webcam lecture, a white KDE hand, a red glass arrow, a small white glass arrow, a
# narrated clip whose pointer circles what is spoken about (notebook 03's narratives example), and two clips of
# the accept split's themes recorded after the second detector was frozen: an orange comic hand, a 20 px
# magenta arrow.
TEST_CLIPS: tuple[Clip, ...] = (
    Clip("adwaita-24", PointerStyle("Adwaita", 24), "heldout", seed=21, webcam=True, crf=32),
    Clip("breeze-snow-36-hand", PointerStyle("Breeze_Snow", 36, "hand2"), "heldout", seed=22, crf=32),
    Clip("redglass-24", PointerStyle("redglass", 24), "heldout", seed=23, crf=32),
    Clip("whiteglass-16", PointerStyle("whiteglass", 16), "heldout", seed=24, crf=32),
    Clip("narrated-adwaita-32", PointerStyle("Adwaita", 32), "heldout", seed=41, crf=32, gestures=0.8),
    Clip("comix-orange-28-hand", PointerStyle("ComixCursors-Orange", 28, "hand2"), "accept", seed=71, crf=32),
    Clip("magenta-20", PointerStyle(MAGENTA, 20), "accept", seed=72, crf=32),
)
