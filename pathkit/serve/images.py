"""The visual input of a chat request: an ``image_url`` data URL, or a file path under the server's image root.

A path is accepted only when ``--image-root`` was given, and only when it resolves (symlinks followed, ``..``
collapsed) to a file inside that root: ``..`` climbs, absolute paths elsewhere and symlinks that point out
are refused before anything is opened. Data URLs are size-checked before and after decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pathkit.eval.answers import load_visual as load_file
from pathkit.io import PathkitError

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.ASCII)
SLIDE_SUFFIXES = (".h5", ".hdf5")


class RequestError(Exception):
    """A bad request: answered with HTTP ``status`` and an OpenAI-style error body naming ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ImageLimits:
    """What an image may weigh: encoded bytes and decoded pixels (width x height)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


def _open_image(data: bytes, where: str, param: str, limits: ImageLimits):
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before decoding
    except Exception as err:
        raise RequestError(f"{where}: not a readable image ({type(err).__name__})", param, "invalid_image") from err
    width, height = image.size
    if width * height > limits.max_pixels:
        raise RequestError(f"{where}: image of {width}x{height} pixels is over the limit of {limits.max_pixels}",
                           param, "image_too_large")
    try:
        return image.convert("RGB")
    except Exception as err:
        raise RequestError(f"{where}: the image data is corrupt ({type(err).__name__})", param,
                           "invalid_image") from err


def decode_data_url(url: str, param: str, limits: ImageLimits):
    """A ``data:image/...;base64,...`` URL -> RGB PIL image; :class:`RequestError` when it is not one."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise RequestError("image_url: expected a data URL 'data:image/<type>;base64,<data>'", param,
                           "invalid_image_url")
    mime = match.group("mime") or ""
    if not mime.startswith("image/"):
        raise RequestError(f"image_url: media type {mime or '(none)'!r} is not an image", param, "invalid_image_url")
    payload = url[match.end():]
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise RequestError(f"image_url: the image is over the limit of {limits.max_bytes} bytes", param,
                           "image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError("image_url: the base64 data is malformed", param, "invalid_image_url") from err
    return _open_image(data, "image_url", param, limits)


def path_under_root(path: str, root: Path | None, param: str) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved, when it is an existing file inside ``root``."""
    if root is None:
        raise RequestError("image_url: file paths are accepted only when the server runs with --image-root; "
                           "send the image as a data URL", param, "path_not_allowed")
    text = path[len("file://"):] if path.startswith("file://") else path
    if "\x00" in text:
        raise RequestError("image_url: invalid path", param, "path_not_allowed")
    candidate = Path(text)
    candidate = candidate if candidate.is_absolute() else root / candidate
    try:
        resolved = candidate.resolve(strict=True)  # follows every symlink, collapses ".."
    except (OSError, RuntimeError):
        raise RequestError(f"image_url: {text!r} is not a file under the image root", param,
                           "path_not_allowed") from None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise RequestError(f"image_url: {text!r} is not a file under the image root", param, "path_not_allowed")
    return resolved


def load_visual(url: str, root: Path | None, vision: str, param: str, limits: ImageLimits) -> tuple[str, Any]:
    """``("image", PIL image)`` or ``("slide", (features, coords))`` for one ``image_url``."""
    if url.startswith("data:"):
        if vision == "slide":
            raise RequestError("this is a slide model: send a feature file path (.h5) under --image-root", param,
                               "slide_features_required")
        return "image", decode_data_url(url, param, limits)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url) and not url.startswith("file://"):
        raise RequestError("image_url: only data URLs and file paths under --image-root are accepted (the "
                           "server fetches nothing from the network)", param, "invalid_image_url")
    path = path_under_root(url, root, param)
    if path.suffix.lower() in SLIDE_SUFFIXES:
        if vision != "slide":
            raise RequestError(f"image_url: {path.name} is a slide feature file; this model takes images", param,
                               "invalid_image")

        try:
            return load_file(path)
        except PathkitError as err:
            raise RequestError(f"image_url: {path.name}: {err}", param, "invalid_image") from err
    if vision == "slide":
        raise RequestError("this is a slide model: send a feature file path (.h5) under --image-root", param,
                           "slide_features_required")
    if path.stat().st_size > limits.max_bytes:
        raise RequestError(f"image_url: {path.name} is over the limit of {limits.max_bytes} bytes", param,
                           "image_too_large")
    return "image", _open_image(path.read_bytes(), f"image_url: {path.name}", param, limits)
