"""Safe file I/O shared by every pipeline: atomic writes, JSON Lines with line-numbered errors, failure logs.

The rule everywhere in pathkit: an output file exists under its final name only when complete. Long jobs
append one JSON line per finished item (flushed and fsynced) so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class PathkitError(Exception):
    """An error with a one-line message that names the file/record and field at fault."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error remove it.

    Use for writers that want a file name (h5py, tifffile, PyAV, numpy). The suffix of the temporary name
    keeps the real suffix so libraries that look at it (``.h5``, ``.mp4``) behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on building ``folder`` (``.<name>.lock`` beside it, ``flock``, released on exit).

    Concurrent runs that share a data folder build it once: the second waits, then finds it complete. The lock
    dies with its process, so a killed build never leaves the folder locked."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def replace_folder(tmp: str | Path, final: str | Path) -> Path:
    """Move a finished folder ``tmp`` onto ``final``: an old ``final`` is renamed aside first, then removed, so a
    folder under its final name is always complete (call under :func:`folder_lock`)."""
    tmp, final = Path(tmp), Path(final)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON; a parse error becomes a one-line PathkitError naming the file, line and column."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as err:
        raise PathkitError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise PathkitError(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg})") from err


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write JSON Lines atomically."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def iter_jsonl(path: str | Path, strict: bool = True, errors: list[str] | None = None, objects_only: bool = True
               ) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, row)`` for each non-empty line of a JSON Lines file.

    A malformed line raises ``PathkitError("file:line:column: invalid JSON (reason)")`` when ``strict``;
    otherwise the message is appended to ``errors`` and the line skipped. A row that is not a JSON object is
    such an error too, unless ``objects_only=False`` (a validator that reports it per record). A torn last line (a run killed mid-write) is always skipped
    in non-strict mode, which is what resumable journals need.
    """
    path = Path(path)
    if not path.exists():
        raise PathkitError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # so the error column is on this line
            except json.JSONDecodeError as err:
                msg = f"{path}:{lineno}:{err.colno}: invalid JSON ({err.msg})"
                if strict:
                    raise PathkitError(msg) from err
                if errors is not None:
                    errors.append(msg)
                continue
            if objects_only and not isinstance(row, dict):
                msg = f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                if strict:
                    raise PathkitError(msg)
                if errors is not None:
                    errors.append(msg)
                continue
            yield lineno, row


def read_jsonl(path: str | Path, strict: bool = True) -> list[dict[str, Any]]:
    return [row for _, row in iter_jsonl(path, strict=strict)]


class JsonlAppender:
    """Append-only JSON Lines journal: each row is written, flushed and fsynced before ``append`` returns.

    A run killed at any instant leaves at most one torn last line, which ``iter_jsonl(strict=False)`` skips;
    opening the journal again repairs such a tail so the next row starts on its own line.
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._repair_tail()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _repair_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            content = fh.read()
            cut = content.rfind(b"\n") + 1  # drop the torn line
            fh.truncate(cut)

    def append(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FailureLog:
    """Collects per-item failures of a batch job and writes them as ``failures.jsonl`` (file, reason)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.items: list[dict[str, Any]] = []

    def add(self, item: str, reason: str | BaseException, **extra: Any) -> None:
        if isinstance(reason, BaseException):
            reason = one_line(reason)
        self.items.append({"item": str(item), "reason": reason, **extra})

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def write(self) -> Path | None:
        """Write the failures file (or remove a stale one when nothing failed)."""
        if self.path is None:
            return None
        if self.items:
            return write_jsonl(self.path, self.items)
        self.path.unlink(missing_ok=True)
        return None

    def summary(self, what: str = "item") -> str:
        if not self.items:
            return f"all {what}s done"
        first = self.items[0]
        where = f" (see {self.path})" if self.path else ""
        return f"{len(self.items)} {what}(s) failed{where}; first: {first['item']}: {first['reason']}"


def one_line(err: BaseException) -> str:
    """An exception as a single line: its type (unless a PathkitError) and its first message line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, PathkitError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
