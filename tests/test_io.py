"""Safe I/O: atomic writes leave nothing half-written, JSONL errors name file and line, journals survive kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pathkit.io import (
    FailureLog,
    JsonlAppender,
    PathkitError,
    atomic_path,
    iter_jsonl,
    read_json,
    write_json,
)


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash mid-write")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n[1, 2]\n{"a": 3}\n')
    with pytest.raises(PathkitError, match=r"rows\.jsonl:3:\d+: invalid JSON"):
        list(iter_jsonl(path))
    errors: list[str] = []
    rows = list(iter_jsonl(path, strict=False, errors=errors))
    assert [r["a"] for _, r in rows] == [1, 3]
    assert [e.removeprefix(f"{path}:").split(":")[0] for e in errors] == ["3", "4"]
    assert errors[0].startswith(f"{path}:3:8: invalid JSON")  # the column too: 8 is where the "," is missing
    rows = list(iter_jsonl(path, strict=False, objects_only=False))  # a validator that reports rows itself
    assert [r for _, r in rows] == [{"a": 1}, [1, 2], {"a": 3}]
    assert "expected a JSON object, got list" in errors[1]


def test_read_json_error_is_one_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"a": [1, 2,]}')
    with pytest.raises(PathkitError) as info:
        read_json(path)
    assert str(info.value).startswith(f"{path}:1:") and "\n" not in str(info.value)


def test_journal_repairs_torn_tail(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "tex')  # killed mid-line
    with JsonlAppender(path) as journal:
        journal.append({"id": 3})
    assert [r["id"] for _, r in iter_jsonl(path)] == [1, 2, 3]


def test_journal_exactly_once_under_sigkill(tmp_path):
    """A writer killed at random instants and restarted ends with every item exactly once."""
    path = tmp_path / "journal.jsonl"
    script = textwrap.dedent(f"""
        import time
        from pathkit.io import JsonlAppender, iter_jsonl
        from pathlib import Path
        p = Path({str(path)!r})
        done = {{r["id"] for _, r in iter_jsonl(p, strict=False)}} if p.exists() else set()
        with JsonlAppender(p) as j:
            for i in range(200):
                if i in done:
                    continue
                j.append({{"id": i, "payload": "x" * 200}})
                time.sleep(0.001)
    """)
    for delay in (0.25, 0.35, 0.3, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", script])
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    ids = [r["id"] for _, r in iter_jsonl(path)]
    assert sorted(ids) == list(range(200))


def test_failure_log_writes_and_clears(tmp_path):
    log = FailureLog(tmp_path / "failures.jsonl")
    log.add("a.svs", ValueError("not a slide\nmore detail"))
    log.add("b.svs", PathkitError("b.svs: missing mpp"))
    log.write()
    rows = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert rows == [{"item": "a.svs", "reason": "ValueError: not a slide"},
                    {"item": "b.svs", "reason": "b.svs: missing mpp"}]
    assert "2 item(s) failed" in log.summary()
    FailureLog(tmp_path / "failures.jsonl").write()  # a clean re-run removes the stale list
    assert not (tmp_path / "failures.jsonl").exists()
