"""Where pathkit keeps what it builds once and reuses: tiny models, tokenizers, caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$PATHKIT_CACHE`` if set, else ``~/.cache/pathkit``. Created on first use."""
    root = Path(os.environ.get("PATHKIT_CACHE", Path.home() / ".cache" / "pathkit")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
