"""Read narration transcripts: WebVTT, SRT and Whisper-style JSON (segments with optional word times).

All three give a list of :class:`Utterance` (start, end seconds, text, optional word timings). A malformed
line raises one :class:`PathkitError` naming the file and line number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pathkit.io import PathkitError


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Utterance:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)

    @property
    def n_words(self) -> int:
        return len(self.text.split())


_TS = r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})"
_CUE = re.compile(rf"^\s*{_TS}\s*-->\s*{_TS}(?:\s+.*)?$")
_TAG = re.compile(r"<[^>]+>")


def _seconds(h: str | None, m: str, s: str, frac: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000


def _parse_cues(path: Path, lines: list[str], first: int, vtt: bool) -> list[Utterance]:
    """Blocks of: [identifier], timing line, text lines; separated by blank lines."""
    out: list[Utterance] = []
    i = first
    n = len(lines)
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        block_start = i
        line = lines[i]
        if vtt and (line.startswith("NOTE") or line.startswith("STYLE") or line.startswith("REGION")):
            while i < n and lines[i].strip():
                i += 1
            continue
        m = _CUE.match(line)
        if m is None and i + 1 < n and "-->" not in line and "-->" in lines[i + 1]:  # cue id / SRT counter
            if not vtt and not line.strip().isdigit():
                raise PathkitError(f"{path}:{i + 1}: expected a cue number, got {line.strip()[:40]!r}")
            i += 1
            line = lines[i] if i < n else ""
            m = _CUE.match(line)
        if m is None:
            raise PathkitError(f"{path}:{i + 1}: malformed cue timing line {line.strip()[:60]!r} "
                               "(expected 'HH:MM:SS.mmm --> HH:MM:SS.mmm')")
        g = m.groups()
        start, end = _seconds(*g[0:4]), _seconds(*g[4:8])
        if end < start:
            raise PathkitError(f"{path}:{i + 1}: cue ends ({end:.3f} s) before it starts ({start:.3f} s)")
        i += 1
        text_lines = []
        while i < n and lines[i].strip():
            if "-->" in lines[i]:
                raise PathkitError(f"{path}:{i + 1}: timing line inside the text of the cue at line "
                                   f"{block_start + 1} (missing blank line?)")
            text_lines.append(_TAG.sub("", lines[i]).strip())
            i += 1
        text = " ".join(t for t in text_lines if t)
        if text:
            out.append(Utterance(start, end, text))
    return out


def read_vtt(path: str | Path) -> list[Utterance]:
    """WebVTT: a ``WEBVTT`` header, then cues (optional identifier, ``start --> end [settings]``, text)."""
    path = Path(path)
    lines = _read_lines(path)
    if not lines or not lines[0].lstrip("\ufeff").startswith("WEBVTT"):
        raise PathkitError(f"{path}:1: missing 'WEBVTT' header")
    i = 1
    while i < len(lines) and lines[i].strip():  # header block
        i += 1
    return _parse_cues(path, lines, i, vtt=True)


def read_srt(path: str | Path) -> list[Utterance]:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` then text."""
    path = Path(path)
    lines = _read_lines(path)
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    return _parse_cues(path, lines, 0, vtt=False)


def read_whisper_json(path: str | Path) -> list[Utterance]:
    """Whisper-style JSON: ``{"segments": [{"start", "end", "text", "words": [{"word", "start", "end"}]}]}``
    (or a bare list of segments)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PathkitError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise PathkitError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    segments = data.get("segments") if isinstance(data, dict) else data
    if not isinstance(segments, list):
        raise PathkitError(f"{path}: expected a 'segments' list")
    out = []
    for k, seg in enumerate(segments):
        try:
            words = [Word(str(w.get("word", w.get("text", ""))).strip(), float(w["start"]), float(w["end"]))
                     for w in seg.get("words") or []]
            out.append(Utterance(float(seg["start"]), float(seg["end"]), str(seg["text"]).strip(), words))
        except (KeyError, TypeError, ValueError) as err:
            raise PathkitError(f"{path}: segment {k}: missing or bad field {err}") from err
    return out


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise PathkitError(f"{path}: file not found") from err
    except UnicodeDecodeError as err:
        raise PathkitError(f"{path}: not UTF-8 text") from err


def read_transcript(path: str | Path) -> list[Utterance]:
    """Read a transcript by suffix: ``.vtt``, ``.srt`` or ``.json`` (Whisper)."""
    path = Path(path)
    readers = {".vtt": read_vtt, ".srt": read_srt, ".json": read_whisper_json}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise PathkitError(f"{path}: unknown transcript format {path.suffix!r} (use .vtt, .srt or .json)")
    return sorted(reader(path), key=lambda u: (u.start, u.end))


def utterances_in(utterances: list[Utterance], start: float, end: float) -> list[Utterance]:
    """Utterances whose midpoint lies in ``[start, end)`` (each utterance goes to exactly one chunk)."""
    return [u for u in utterances if start <= (u.start + u.end) / 2 < end]
