"""A chat client for any OpenAI-compatible endpoint that never pays twice and survives a flaky server.

:class:`ChatClient` wraps the official ``openai`` client (``base_url`` + ``model``; the key is read ONLY from the
environment variable named by ``api_key_env`` and is never printed, logged or written anywhere). On top of it:

* retries with exponential backoff and full jitter on 429, 408/409, 5xx, timeouts and dropped connections,
  honouring ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms``, with a cap on attempts;
* an on-disk cache keyed by the full request (model, messages, parameters): a re-run sends no request for work
  already done (the server URL is deliberately not part of the key, so a restarted local server still hits);
* bounded concurrency (a semaphore, so any number of caller threads share ``concurrency`` in-flight requests);
* token usage and an estimated cost (:class:`UsageMeter`).

:func:`run_journaled` runs a batch of items through any function with a thread pool and an append-only journal
(one fsynced JSON line per finished item), so a batch killed at any instant and restarted does each item once.
"""

from __future__ import annotations

import base64
import email.utils
import fcntl
import hashlib
import json
import mimetypes
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pathkit.io import JsonlAppender, PathkitError, atomic_write_text, iter_jsonl, one_line

# Lazy imports: openai (the OpenAI client, only for a remote LLM). They load inside the functions that need
# them, not when this module is imported.

# USD per 1M tokens (input, output): public list prices, for a rough estimate only. Override with
# ChatClient(price_per_mtok=(in, out)). Unknown models (local servers) cost 0.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4": (30.0, 60.0),
    "gpt-3.5-turbo": (0.5, 1.5),
}

RETRYABLE_STATUS = (408, 409, 429)


class ChatError(PathkitError):
    """A request that failed for good (a non-retryable status, or every attempt used up)."""


@dataclass
class ChatResult:
    """One completion: the reply text, token usage, whether it came from the cache, and attempts used."""

    text: str
    usage: dict[str, int] = field(default_factory=dict)
    cached: bool = False
    attempts: int = 0
    finish_reason: str | None = None


class UsageMeter:
    """Thread-safe totals of requests, cache hits, retries, tokens and estimated cost."""

    def __init__(self, model: str, price_per_mtok: tuple[float, float] | None = None):
        self.model = model
        self.price = price_per_mtok or _price_for(model)
        self._lock = threading.Lock()
        self.requests = 0  # HTTP requests sent (attempts included)
        self.retries = 0
        self.completions = 0  # successful replies from the server
        self.cache_hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    @property
    def cost_usd(self) -> float:
        return (self.prompt_tokens * self.price[0] + self.completion_tokens * self.price[1]) / 1e6

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"model": self.model, "requests": self.requests, "retries": self.retries,
                    "completions": self.completions, "cache_hits": self.cache_hits,
                    "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                    "estimated_cost_usd": round(self.cost_usd, 6),
                    "price_per_mtok_usd": list(self.price)}


def _price_for(model: str) -> tuple[float, float]:
    for name in sorted(PRICES_PER_MTOK, key=len, reverse=True):  # longest prefix wins (gpt-4o-mini > gpt-4o)
        if model.startswith(name):
            return PRICES_PER_MTOK[name]
    return (0.0, 0.0)


# ------------------------------------------------------------------------------------------ images
def image_data_url(path: str | Path) -> str:
    """An image file as a ``data:<mime>;base64,...`` URL (how images travel in chat content parts)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise PathkitError(f"{path}: image file not found") from err
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def with_images(messages: list[dict[str, Any]], images: Iterable[str | Path], detail: str = "auto"
                ) -> list[dict[str, Any]]:
    """Copy of ``messages`` whose first user message carries the images as ``image_url`` content parts."""
    images = list(images)
    if not images:
        return messages
    out = [dict(m) for m in messages]
    for m in out:
        if m["role"] == "user":
            text = m["content"] if isinstance(m["content"], str) else None
            parts = [{"type": "image_url", "image_url": {"url": image_data_url(p), "detail": detail}}
                     for p in images]
            m["content"] = parts + ([{"type": "text", "text": text}] if text is not None else list(m["content"]))
            break
    return out


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


# ------------------------------------------------------------------------------------------ cache
def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the full request (model, messages, parameters)."""
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """One small JSON file per request under ``root/ab/<sha256>.json``, written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        atomic_write_text(self._path(key), json.dumps(entry, ensure_ascii=False))


# ------------------------------------------------------------------------------------------ the client
class ChatClient:
    """Chat completions against an OpenAI-compatible server, with retries, backoff, a cache and usage.

    Args:
        base_url: e.g. ``https://api.openai.com/v1``, ``http://127.0.0.1:8000/v1`` (vLLM, Ollama, local_server).
        model: model name sent with each request.
        api_key_env: name of the environment variable holding the key. Unset means the placeholder "EMPTY"
            (local servers ignore it). The key lives only in the ``openai`` client object.
        concurrency: in-flight requests at most (shared by all threads using this client).
        max_attempts: attempts per request, the first included.
        timeout: seconds per attempt.
        cache_dir: folder of the response cache; None disables caching.
        backoff_base, backoff_max: seconds; wait before attempt k+1 is uniform(0.5, 1) * min(max, base * 2**(k-1)),
            or the server's Retry-After when that is longer (capped at ``retry_after_max``).
        default_params: sent with every request unless overridden (e.g. temperature, max_tokens).
    """

    def __init__(self, base_url: str | None, model: str, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_attempts: int = 5, timeout: float = 60.0,
                 cache_dir: str | Path | None = None, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 retry_after_max: float = 120.0, default_params: dict[str, Any] | None = None,
                 price_per_mtok: tuple[float, float] | None = None, seed: int | None = None):
        import openai

        if concurrency < 1 or max_attempts < 1:
            raise PathkitError(f"ChatClient: concurrency={concurrency} and max_attempts={max_attempts} must be >= 1")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.default_params = dict(default_params or {})
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.usage = UsageMeter(model, price_per_mtok)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._rng = random.Random(seed)
        self._openai = openai
        self._client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                                     max_retries=0, timeout=timeout)

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    # -------------------------------------------------------------------------------------------------
    def chat(self, messages: list[dict[str, Any]], use_cache: bool = True, **params: Any) -> ChatResult:
        """One completion for ``messages``; cached replies return at once with ``cached=True``.

        Raises :class:`ChatError` on a non-retryable error or when every attempt failed.
        """
        params = {**self.default_params, **params}
        key = request_key(self.model, messages, params)
        if self.cache is not None and use_cache:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.add(cache_hits=1)
                return ChatResult(text=hit["text"], usage=hit.get("usage", {}), cached=True,
                                  finish_reason=hit.get("finish_reason"))
        last_error = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self._slots:
                    self.usage.add(requests=1)
                    response = self._client.chat.completions.create(model=self.model, messages=messages,
                                                                    **params)
            except Exception as err:  # classified below; anything unexpected is not retried
                retry, wait_s, last_error = self._classify(err, attempt)
                if not retry or attempt == self.max_attempts:
                    break
                self.usage.add(retries=1)
                time.sleep(wait_s)
                continue
            choice = response.choices[0] if response.choices else None
            text = (choice.message.content if choice is not None else None) or ""
            usage = {"prompt_tokens": getattr(response.usage, "prompt_tokens", 0) or 0,
                     "completion_tokens": getattr(response.usage, "completion_tokens", 0) or 0}
            self.usage.add(completions=1, **usage)
            result = ChatResult(text=text, usage=usage, attempts=attempt,
                                finish_reason=getattr(choice, "finish_reason", None))
            if self.cache is not None:
                self.cache.put(key, {"text": text, "usage": usage, "finish_reason": result.finish_reason,
                                     "model": self.model})
            return result
        raise ChatError(self._redact(f"{self.model}: request failed after {attempt} attempt(s): {last_error}"))

    def _classify(self, err: Exception, attempt: int) -> tuple[bool, float, str]:
        """(retry?, seconds to wait, one-line reason) for an exception from the openai client."""
        o = self._openai
        backoff = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)
        if isinstance(err, o.APITimeoutError):  # subclass of APIConnectionError: check first
            return True, backoff, f"timeout after {self.timeout:g} s"
        if isinstance(err, o.APIConnectionError):
            return True, backoff, f"connection error ({one_line(err)})"
        if isinstance(err, o.APIStatusError):
            status = err.status_code
            reason = f"HTTP {status} ({one_line(err)[:200]})"
            if status in RETRYABLE_STATUS or status >= 500:
                retry_after = _retry_after_seconds(err.response.headers if err.response is not None else {})
                wait_s = backoff if retry_after is None else max(backoff, min(retry_after, self.retry_after_max))
                return True, wait_s, reason
            return False, 0.0, reason
        return False, 0.0, one_line(err)

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def map(self, requests: list[list[dict[str, Any]]], **params: Any) -> list[ChatResult | ChatError]:
        """Completions for many message lists concurrently; failures come back as ChatError values."""
        def one(messages):
            try:
                return self.chat(messages, **params)
            except ChatError as err:
                return err

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, requests))

    def run_journaled(self, items: Iterable[tuple[str, Any]], work: Callable[[Any], dict[str, Any]],
                      journal_path: str | Path, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """:func:`run_journaled` with this client's concurrency."""
        kwargs.setdefault("concurrency", self.concurrency)
        return run_journaled(items, work, journal_path, **kwargs)


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (a number of seconds or an HTTP date)."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except AttributeError:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# ------------------------------------------------------------------------------------------ resumable batches
def read_journal(journal_path: str | Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(header, last row per id) of a journal; a torn last line (killed mid-write) is ignored."""
    header, rows = None, {}
    path = Path(journal_path)
    if not path.exists():
        return None, rows
    for _, row in iter_jsonl(path, strict=False):
        if "_header" in row:
            header = header or row["_header"]
        elif "id" in row:
            rows[str(row["id"])] = row
    return header, rows


def run_journaled(items: Iterable[tuple[str, Any]], work: Callable[[Any], dict[str, Any]],
                  journal_path: str | Path, concurrency: int = 8, header: dict[str, Any] | None = None,
                  retry_failed: bool = True, progress: bool = True, desc: str = "items",
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run ``work(payload)`` for every ``(id, payload)`` not finished in the journal; return the last row per id.

    Each finished item is appended to the journal as ``{"id", "status": "ok", **work(...)}`` or
    ``{"id", "status": "failed", "reason"}``, flushed and fsynced, by this thread only, so rows never
    interleave. A restart skips ids whose last row is ``ok`` (and ``failed`` ones unless ``retry_failed``).
    ``header`` is written first in a new journal and must match on resume (same prompt, model, input), else
    a PathkitError says which field differs. A second run on the same journal fails at once (a file lock).
    """
    journal_path = Path(journal_path)
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_journal(journal_path)  # two runs on one journal would do items twice
    try:
        return _run_journaled_locked(items, work, journal_path, concurrency, header, retry_failed, progress, desc,
                                     on_row)
    finally:
        lock.close()  # also released by the kernel when a run is killed


def _lock_journal(journal_path: Path):
    fh = open(journal_path.with_name(journal_path.name + ".lock"), "a")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        fh.close()
        raise PathkitError(f"{journal_path}: another run is writing this journal (lock held)") from err
    return fh


def _run_journaled_locked(items, work, journal_path, concurrency, header, retry_failed, progress, desc, on_row):
    old_header, done = read_journal(journal_path)
    if header is not None and old_header is not None:
        for key in sorted(set(header) | set(old_header)):
            if header.get(key) != old_header.get(key):
                raise PathkitError(f"{journal_path}: journal was written with {key}={old_header.get(key)!r}, "
                                   f"this run has {key}={header.get(key)!r}; use another output or delete "
                                   "the journal")
    items = list(items)
    todo = [(i, p) for i, p in items
            if i not in done or (retry_failed and done[i].get("status") != "ok")]
    with JsonlAppender(journal_path) as journal:
        if header is not None and old_header is None:
            journal.append({"_header": header})
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, disable=not progress,
                   dynamic_ncols=True)
        pool = ThreadPoolExecutor(max(1, concurrency))
        pending: dict[Future, str] = {}
        queue = iter(todo)
        window = max(1, concurrency) * 4  # bounded submission: a million items never sit in memory as futures
        try:
            while True:
                while len(pending) < window:
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    pending[pool.submit(work, nxt[1])] = nxt[0]
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    item_id = pending.pop(fut)
                    try:
                        row = {"id": item_id, "status": "ok", **fut.result()}
                    except Exception as err:  # one bad item never stops the batch
                        row = {"id": item_id, "status": "failed", "reason": one_line(err)}
                    journal.append(row)
                    done[item_id] = row
                    if on_row is not None:
                        on_row(row)
                    bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
    return done
