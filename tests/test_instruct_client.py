"""ChatClient against a REAL OpenAI-compatible server on 127.0.0.1 with the real openai client: every fault."""

from __future__ import annotations

import base64
import time

import pytest

from pathkit.instruct.client import ChatClient, ChatError, _retry_after_seconds, image_data_url, with_images
from pathkit.instruct.local_server import Faults, serve

MESSAGES = [{"role": "user", "content": "hello"}]


def echo(messages, body):
    return f"echo: {messages[-1]['content'] if isinstance(messages[-1]['content'], str) else 'parts'}"


def client(server, tmp_path=None, **kw):
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 2.0)
    return ChatClient(server.base_url, "test-model", cache_dir=tmp_path, seed=0, **kw)


def test_plain_reply_usage_and_auth_header(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-header-only")
    with serve(echo) as server:
        c = client(server)
        r = c.chat(MESSAGES, temperature=0.0)
        assert r.text == "echo: hello" and not r.cached and r.attempts == 1
        assert r.usage["prompt_tokens"] == 1 and server.request_count == 1
        assert server.requests[0]["temperature"] == 0.0 and server.requests[0]["model"] == "test-model"
        assert server.headers[0]["authorization"] == "Bearer sk-test-header-only"
        assert "sk-test" not in repr(c)


def test_rate_limit_honours_retry_after():
    with serve(echo) as server:
        server.faults.add("rate_limit", times=2, retry_after=0.4)
        c = client(server)
        t0 = time.perf_counter()
        r = c.chat(MESSAGES)
        elapsed = time.perf_counter() - t0
        assert r.text == "echo: hello" and r.attempts == 3 and server.request_count == 3
        assert elapsed >= 0.8  # two waits of Retry-After (0.4 s), not the 0.01 s backoff
        assert c.usage.retries == 2


@pytest.mark.parametrize("fault,options", [("server_error", {}), ("server_error", {"status": 503}),
                                           ("drop", {}), ("slow", {"delay": 3.0})])
def test_transient_faults_are_survived(fault, options):
    with serve(echo) as server:
        server.faults.add(fault, times=2, **options)
        c = client(server, timeout=0.5)
        t0 = time.perf_counter()
        r = c.chat(MESSAGES)
        assert r.text == "echo: hello" and r.attempts == 3 and server.request_count == 3
        if fault == "slow":  # the client gave up after its timeout instead of waiting for the slow reply
            assert time.perf_counter() - t0 < 5.0  # waiting for the two slow replies would take >= 6 s


def test_attempt_cap_and_non_retryable_status():
    with serve(echo) as server:
        server.faults.add("server_error", always=True)
        c = client(server, max_attempts=3)
        with pytest.raises(ChatError, match="after 3 attempt"):
            c.chat(MESSAGES)
        assert server.request_count == 3
        server.faults.clear()
        server.reset_counts()
        server.faults.add("server_error", status=400)
        with pytest.raises(ChatError, match="HTTP 400"):
            c.chat(MESSAGES)
        assert server.request_count == 1  # a bad request is not retried


def test_error_messages_never_carry_the_key(monkeypatch):
    key = "sk-unique-redaction-7f3a9c"
    monkeypatch.setenv("OPENAI_API_KEY", key)

    def leaky(messages, body):
        raise RuntimeError(f"invalid key {key}")

    with serve(leaky) as server:
        with pytest.raises(ChatError) as info:
            client(server, max_attempts=2).chat(MESSAGES)
    assert key not in str(info.value) and "***" in str(info.value)


def test_cache_rerun_sends_zero_requests(tmp_path):
    with serve(echo) as server:
        first = [client(server, tmp_path).chat([{"role": "user", "content": f"q{i}"}]) for i in range(5)]
        assert server.request_count == 5
    with serve(echo) as server:  # a new server on another port: the cache key ignores the URL
        again = client(server, tmp_path)
        second = [again.chat([{"role": "user", "content": f"q{i}"}]) for i in range(5)]
        assert server.request_count == 0 and all(r.cached for r in second)
        assert [r.text for r in first] == [r.text for r in second]
        assert again.usage.cache_hits == 5
        again.chat([{"role": "user", "content": "q0"}], temperature=0.5)  # other params: another request
        assert server.request_count == 1


def test_concurrency_is_bounded():
    import threading

    active, peak, lock = [0], [0], threading.Lock()

    def slow_echo(messages, body):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return "ok"

    with serve(slow_echo) as server:
        c = client(server, concurrency=3)
        results = c.map([[{"role": "user", "content": str(i)}] for i in range(12)])
        assert all(r.text == "ok" for r in results) and server.request_count == 12
        assert 2 <= peak[0] <= 3


def test_images_travel_as_data_urls(tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    messages = with_images([{"role": "system", "content": "s"}, {"role": "user", "content": "what?"}], [path])
    with serve(echo) as server:
        client(server).chat(messages)
        parts = server.requests[0]["messages"][1]["content"]
    assert parts[0]["type"] == "image_url" and parts[-1] == {"type": "text", "text": "what?"}
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and url == image_data_url(path)
    assert base64.b64decode(url.split(",", 1)[1]) == path.read_bytes()


def test_retry_after_forms():
    assert _retry_after_seconds({"retry-after": "2"}) == 2.0
    assert _retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert _retry_after_seconds({}) is None
    from email.utils import formatdate

    assert 5 <= _retry_after_seconds({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10
    assert Faults().add("rate_limit").take().kind == "rate_limit"
