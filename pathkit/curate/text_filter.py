"""Keep captions that are about pathology: a vocabulary hit count plus a minimum length.

The vocabulary ships as ``pathkit/curate/data/pathology_vocabulary.txt`` (written by hand for pathkit; its
header says how). PA-LLaVA cleaned PCaption-0.5M by dropping non-pathology pairs and captions under 20 words;
``TextFilter(min_words=20)`` reproduces the length rule, ``min_hits`` the topic rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

VOCABULARY_PATH = Path(__file__).resolve().parent / "data" / "pathology_vocabulary.txt"
_WORD = re.compile(r"[a-z][a-z&\-]*")


@lru_cache(maxsize=4)
def pathology_vocabulary(path: str | None = None) -> frozenset[str]:
    """The shipped word list (or another file with one word per line, ``#`` comments)."""
    text = Path(path or VOCABULARY_PATH).read_text(encoding="utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def vocabulary_hits(text: str, vocabulary: Iterable[str] | None = None) -> set[str]:
    """The distinct vocabulary words in ``text`` (hyphenated words also count by their parts)."""
    vocab = pathology_vocabulary() if vocabulary is None else frozenset(vocabulary)
    found = set()
    for w in words(text):
        if w in vocab:
            found.add(w)
        elif "-" in w:
            found.update(p for p in w.split("-") if p in vocab)
    return found


@dataclass
class TextFilter:
    """Decide whether a caption is pathology text worth keeping; ``check`` says why not."""

    min_hits: int = 2  # distinct vocabulary words
    min_words: int = 0  # PA-LLaVA used 20
    max_words: int | None = None
    vocabulary: frozenset[str] | None = None

    def check(self, text: str) -> str | None:
        """None when kept, else the reason (``too_short``, ``too_long``, ``off_topic``)."""
        n = len(words(text))
        if n < self.min_words:
            return f"too_short ({n} < {self.min_words} words)"
        if self.max_words is not None and n > self.max_words:
            return f"too_long ({n} > {self.max_words} words)"
        hits = len(vocabulary_hits(text, self.vocabulary))
        if hits < self.min_hits:
            return f"off_topic ({hits} < {self.min_hits} pathology words)"
        return None

    def __call__(self, text: str) -> bool:
        return self.check(text) is None
