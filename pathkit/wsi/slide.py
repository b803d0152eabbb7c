"""Open any slide openslide reads, with its microns per pixel, and read RGB regions as numpy arrays.

Why mpp matters: WSI-LLaVA / Prov-GigaPath tiles are 256 px at 0.5 microns per pixel, whatever the scanner.
A pyramid *level* is only a downsample of whatever level 0 happens to be (0.25 mpp on one scanner, 0.5 on
another), so pathkit always asks the slide for its physical pixel size and plans reads from it
(``pathkit.wsi.tiling``). A slide without mpp is refused unless the caller states it (``--slide-mpp``).

Errors are one line naming the file: missing, not a slide, truncated/unreadable, no mpp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathkit.io import PathkitError

# Lazy imports: openslide (OpenSlide, a system library). They load inside the functions that need them, not
# when this module is imported.


class Slide:
    """An openslide handle plus the facts pathkit plans with (mpp, objective power, vendor, levels).

    Args:
        path: any openslide-supported file.
        slide_mpp: override (or supply) the level-0 microns per pixel.
        require_mpp: raise when the slide states no mpp and no override is given.
    """

    def __init__(self, path: str | Path, slide_mpp: float | None = None, require_mpp: bool = True):
        import openslide

        self.path = Path(path)
        if not self.path.is_file():
            raise PathkitError(f"{self.path}: file not found")
        try:
            self.handle = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as err:
            if _looks_like_tiff(self.path):
                raise PathkitError(f"{self.path}: truncated or corrupt slide (a TIFF header, but openslide "
                                   "cannot read its directories)") from err
            raise PathkitError(f"{self.path}: not a slide file openslide can read (unsupported format)") from err
        except openslide.OpenSlideError as err:
            raise PathkitError(f"{self.path}: cannot open slide ({_first_line(err)})") from err
        props = self.handle.properties
        self.vendor = props.get("openslide.vendor", "unknown")
        power = props.get("openslide.objective-power")
        self.objective_power = float(power) if power not in (None, "") else None
        self.mpp = float(slide_mpp) if slide_mpp else _read_mpp(props)
        if self.mpp is None and require_mpp:
            self.handle.close()
            raise PathkitError(f"{self.path}: no microns per pixel in the slide properties (openslide.mpp-x); "
                               "pass --slide-mpp")
        self.dimensions: tuple[int, int] = self.handle.dimensions
        self.level_count: int = self.handle.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = self.handle.level_dimensions
        self.level_downsamples: tuple[float, ...] = self.handle.level_downsamples

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at ``level``; (x, y) is level-0 top-left; outside the slide is white."""
        try:
            rgba = np.asarray(self.handle.read_region((int(x), int(y)), int(level), (int(width), int(height))))
        except Exception as err:  # openslide.OpenSlideError on truncated/corrupt tiles
            raise PathkitError(f"{self.path}: cannot read region at ({x}, {y}) level {level} "
                               f"({_first_line(err)})") from err
        rgb = rgba[..., :3]
        if rgba[0, 0, 3] != 255 or rgba[-1, -1, 3] != 255:  # transparent = beyond the slide edge: glass white
            rgb = rgb.copy()
            rgb[rgba[..., 3] == 0] = 255
        return rgb

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """RGB thumbnail whose longest side is at most ``max_size`` and its scale (level-0 px per pixel)."""
        try:
            thumb = np.asarray(self.handle.get_thumbnail((max_size, max_size)).convert("RGB"))
        except Exception as err:
            raise PathkitError(f"{self.path}: cannot read thumbnail ({_first_line(err)})") from err
        return thumb, self.dimensions[0] / thumb.shape[1]

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Slide({self.path.name}, {self.dimensions[0]}x{self.dimensions[1]}, mpp={self.mpp}, "
                f"levels={self.level_count}, vendor={self.vendor})")


def open_slide(path: str | Path, slide_mpp: float | None = None, require_mpp: bool = True) -> Slide:
    """Open a slide (see :class:`Slide`)."""
    return Slide(path, slide_mpp=slide_mpp, require_mpp=require_mpp)


def _read_mpp(props) -> float | None:
    for key in ("openslide.mpp-x", "aperio.MPP", "tiff.XResolution"):
        value = props.get(key)
        if value in (None, ""):
            continue
        if key == "tiff.XResolution":  # only trustworthy with a physical unit
            unit = props.get("tiff.ResolutionUnit", "")
            factor = {"centimeter": 1e4, "inch": 25400.0}.get(unit.lower())
            if factor is None or float(value) <= 0:
                continue
            return factor / float(value)
        mpp = float(value)
        if mpp > 0:
            return mpp
    return None


def _looks_like_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
