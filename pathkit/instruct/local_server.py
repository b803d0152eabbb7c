"""A small OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1 with switchable faults.

Tests, notebooks and benchmarks point the REAL ``openai`` client at it, so the whole client path (HTTP, JSON,
retries, timeouts) runs offline. Usage::

    from pathkit.instruct.local_server import serve

    with serve() as server:                      # default responder: the rule-based generator
        client = ChatClient(server.base_url, "rule-based")
        server.faults.add("rate_limit", times=2, retry_after=0.2)   # next 2 requests get 429
        client.chat(messages)
        print(server.request_count)

``serve(responder=None, faults=None, latency=0.0, port=0)``:
    responder  ``callable(messages, body) -> str`` (the assistant's content) or a dict
               ``{"content": str, "usage": {...}}``; default :func:`pathkit.instruct.rule_based.rule_based_responder`.
    faults     a :class:`Faults` (one is created otherwise; reach it as ``server.faults``).
    latency    seconds every request waits before answering (a fixed model latency, for benchmarks).

Fault kinds (each applies to the next ``times`` requests, in the order added; ``always=True`` keeps it on):
    ``rate_limit``   HTTP 429 with ``Retry-After: <retry_after>`` seconds;
    ``server_error`` HTTP 500 (``status=`` another 5xx);
    ``slow``         wait ``delay`` seconds before replying (longer than the client's timeout);
    ``malformed``    a normal 200 reply whose content is not the JSON the prompt asked for;
    ``drop``         close the connection without any response.

The server records ``request_count`` (every POST to chat/completions, faulted ones included), ``requests``
(the bodies) and ``headers`` (lower-cased names; tests use them to check the key is sent only there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pathkit.instruct.rule_based import rule_based_responder

Responder = Callable[[list[dict[str, Any]], dict[str, Any]], "str | dict[str, Any]"]
FAULT_KINDS = ("rate_limit", "server_error", "slow", "malformed", "drop")
MALFORMED_CONTENT = 'Sure! Here is the JSON you asked for: {"conversations": [{"from": "human", "value": '


class _QuietHTTPServer(ThreadingHTTPServer):
    """Clients that vanish mid-request (killed, timed out) are normal here, not tracebacks on stderr."""

    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


@dataclass
class Fault:
    kind: str
    times: int = 1
    always: bool = False
    retry_after: float = 1.0
    delay: float = 5.0
    status: int = 500


@dataclass
class Faults:
    """A queue of faults applied to the next requests (thread-safe)."""

    queue: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, times: int = 1, always: bool = False, **options: Any) -> Faults:
        """Apply fault ``kind`` to the next ``times`` requests (or to all of them with ``always=True``)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULT_KINDS}")
        with self._lock:
            self.queue.append(Fault(kind, times=times, always=always, **options))
        return self

    def clear(self) -> None:
        with self._lock:
            self.queue.clear()

    def take(self) -> Fault | None:
        with self._lock:
            if not self.queue:
                return None
            fault = self.queue[0]
            if not fault.always:
                fault.times -= 1
                if fault.times <= 0:
                    self.queue.pop(0)
            return fault


def _count_tokens(messages: list[dict[str, Any]]) -> int:
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    n += len(part.get("text", "").split())
                elif isinstance(part, dict):
                    n += 85  # an image part: a flat charge, like a low-detail image
    return n


class LocalServer:
    """The running server: ``base_url``, ``request_count``, ``requests``, ``headers``, ``faults``."""

    def __init__(self, responder: Responder, faults: Faults, latency: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0):
        self.responder = responder
        self.faults = faults
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._count = 0
        self._httpd = _QuietHTTPServer((host, port), self._handler_class())
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pathkit-local-server",
                                        daemon=True)

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    def reset_counts(self) -> None:
        with self._lock:
            self._count = 0
            self.requests.clear()
            self.headers.clear()

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self._count += 1
            self.requests.append(body)
            self.headers.append(headers)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms Nagle/delayed-ACK stall

            def log_message(self, *args: Any) -> None:  # quiet: tests and notebooks read their own output
                pass

            def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path.rstrip("/").endswith("/models"):
                    self._send_json(200, {"object": "list", "data": [{"id": "rule-based", "object": "model"}]})
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send_json(400, {"error": {"message": "request body is not JSON"}})
                    return
                server._record(body, {k.lower(): v for k, v in self.headers.items()})
                fault = server.faults.take()
                if server.latency:
                    time.sleep(server.latency)
                if fault is not None:
                    if fault.kind == "rate_limit":
                        self._send_json(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                                        {"Retry-After": f"{fault.retry_after:g}"})
                        return
                    if fault.kind == "server_error":
                        self._send_json(fault.status, {"error": {"message": "injected server error"}})
                        return
                    if fault.kind == "drop":
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if fault.kind == "slow":
                        time.sleep(fault.delay)
                messages = body.get("messages") or []
                if fault is not None and fault.kind == "malformed":
                    content, usage = MALFORMED_CONTENT, None
                else:
                    try:
                        out = server.responder(messages, body)
                    except Exception as err:  # a responder bug is a 500, not a hung client
                        self._send_json(500, {"error": {"message": f"responder failed: {err}"}})
                        return
                    content, usage = (out.get("content", ""), out.get("usage")) if isinstance(out, dict) \
                        else (str(out), None)
                prompt_tokens = _count_tokens(messages)
                completion_tokens = len(content.split())
                usage = usage or {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}
                self._send_json(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", "local"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                         "refusal": None},
                                 "logprobs": None, "finish_reason": "stop"}],
                    "usage": usage})

        return Handler


@contextlib.contextmanager
def serve(responder: Responder | None = None, faults: Faults | None = None, latency: float = 0.0,
          host: str = "127.0.0.1", port: int = 0) -> Iterator[LocalServer]:
    """Run an OpenAI-compatible server in a background thread for the ``with`` block (see module docs)."""
    if responder is None:
        responder = rule_based_responder()
    server = LocalServer(responder, faults or Faults(), latency=latency, host=host, port=port).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m pathkit.instruct.local_server --port 8000``: serve the rule-based responder until Ctrl-C."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    args = parser.parse_args(argv)
    with serve(latency=args.latency, port=args.port) as server:
        print(f"serving {server.base_url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
