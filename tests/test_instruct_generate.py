"""The generation pipeline: offline rule-based, the same through a real server, re-ask, failures, cache, key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from instruct_helpers import expected_ids, write_inputs

from pathkit.curate.llava_format import validate_llava_file
from pathkit.instruct.generate import RuleBasedGenerator, generate_file, output_paths, read_items
from pathkit.instruct.local_server import serve
from pathkit.instruct.prompts import list_prompts
from pathkit.instruct.rule_based import REASK_PREFIX
from pathkit.io import FailureLog, PathkitError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", sorted(list_prompts()))
def test_rule_based_every_kind_writes_one_record_per_row(tmp_path, kind):
    src = write_inputs(tmp_path, n=6)
    summary = generate_file(src, tmp_path / "out.json", kind, progress=False)
    records = json.loads((tmp_path / "out.json").read_text())
    assert summary["written"] == 6 and summary["failed"] == 0
    assert [r["id"] for r in records] == expected_ids(src) and all(r["kind"] == kind for r in records)
    if kind == "pa_llava_cleaning":
        assert all(r["human_pathology"] for r in records)  # pathology captions
        return
    assert validate_llava_file(tmp_path / "out.json") == 6  # loads in LLaVA's trainer format
    by_id = {r["id"]: r for r in records}
    if kind in ("quilt_complex_reasoning", "wsi_bench"):  # ground truth flows into the answers
        assert "adenocarcinoma" in json.dumps(by_id["item-0"]["conversations"])
    if kind == "quilt_conversation":  # grounded boxes normalised to 0-1 by the frame size
        assert "[0.05, 0.20, 0.55, 0.90]" in json.dumps(by_id["item-0"]["conversations"])
    if kind == "wsi_bench":
        turns = by_id["item-0"]["conversations"]
        letter = turns[1]["value"]
        choices = re.split(r" (?=[A-D]\) )", turns[0]["value"].split("? ", 1)[1])  # "A) x", "B) y", ...
        options = dict(c.split(") ", 1) for c in choices)
        assert options[letter] == "adenocarcinoma" and turns[1]["answer_type"] == "CLOSED"


def test_abduction_ends_correct_or_with_the_answer(tmp_path):
    rec = RuleBasedGenerator().generate({"id": "x", "caption": "Glands lined by atypical columnar cells.",
                                         "facts": {"diagnosis": "adenocarcinoma", "clues": ["back-to-back glands"]}},
                                        "quilt_iterative_abduction")
    turns = rec["conversations"]
    assert turns[0]["value"].startswith("<image>") is False  # no image in this row: no image token
    assert len(turns) in (2, 4, 6) and "adenocarcinoma" in turns[-1]["value"] + turns[-2]["value"]


def test_server_path_equals_offline_path(tmp_path):
    src = write_inputs(tmp_path, n=6)
    for kind in ("quilt_iterative_abduction", "huatuo_instruction_vqa", "wsi_bench"):
        generate_file(src, tmp_path / f"{kind}_offline.json", kind, progress=False)
        with serve() as server:
            s = generate_file(src, tmp_path / f"{kind}_server.json", kind, model="rule-based-over-http",
                              base_url=server.base_url, cache_dir=tmp_path / "cache", progress=False)
            assert s["written"] == 6 and server.request_count >= 6
        a = json.loads((tmp_path / f"{kind}_offline.json").read_text())
        b = json.loads((tmp_path / f"{kind}_server.json").read_text())
        assert [r["conversations"] for r in a] == [r["conversations"] for r in b]
    with serve() as server:  # multimodal prompts send every row's image as a data URL
        generate_file(src, tmp_path / "h.json", "huatuo_alignment_vqa", model="m", base_url=server.base_url,
                      progress=False)
        assert all(m["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
                   for m in server.requests)


def test_malformed_reply_is_reasked_once_then_a_failure(tmp_path):
    src = write_inputs(tmp_path, n=1)
    with serve() as server:
        server.faults.add("malformed", times=1)
        s = generate_file(src, tmp_path / "a.json", "quilt_conversation", model="m", base_url=server.base_url,
                          concurrency=1, progress=False)
        assert s["written"] == 1 and server.request_count == 2
        reask = server.requests[1]["messages"]
        assert reask[-2]["role"] == "assistant" and reask[-1]["content"].startswith(REASK_PREFIX)
        assert "not valid JSON" in reask[-1]["content"]
        server.reset_counts()
        server.faults.add("malformed", times=2)
        s = generate_file(src, tmp_path / "b.json", "quilt_conversation", model="m", base_url=server.base_url,
                          concurrency=1, progress=False)
        assert server.request_count == 2 and s["written"] == 0 and s["failed"] == 1
    assert json.loads((tmp_path / "b.json").read_text()) == []  # never written as data
    failure = json.loads(output_paths(tmp_path / "b.json")["failures"].read_text().splitlines()[0])
    assert failure["item"] == "item-0" and "malformed reply after one re-ask" in failure["reason"]


def test_bad_rows_are_failures_and_the_batch_continues(tmp_path):
    src = write_inputs(tmp_path, n=3)
    with open(src, "a") as fh:
        fh.write('{"id": "no-text", "image": "x.png"}\n{"id": "item-0", "caption": "dup"}\nnot json\n')
    failures = FailureLog()
    items = read_items(src, failures)
    assert len(items) == 3 and len(failures) == 3
    reasons = " | ".join(f["reason"] for f in failures.items)
    assert "no text" in reasons and "duplicate id 'item-0'" in reasons and "invalid JSON" in reasons
    assert all(f"{src}:" in f["item"] for f in failures.items)
    s = generate_file(src, tmp_path / "o.json", "quilt_conversation", progress=False)
    assert s["written"] == 3 and s["failed"] == 3 and s["items"] == 6
    with pytest.raises(PathkitError, match=r"in.jsonl:6:\d+: invalid JSON"):  # strict mode: the first bad line
        read_items(src)


def test_cached_rerun_sends_zero_requests_and_journal_resume(tmp_path):
    src = write_inputs(tmp_path, n=6)
    cache = tmp_path / "cache"
    with serve() as server:
        generate_file(src, tmp_path / "a.json", "quilt_complex_reasoning", model="m", base_url=server.base_url,
                      cache_dir=cache, progress=False)
        assert server.request_count == 6
    with serve() as server:
        server.faults.add("server_error", always=True)  # any request would fail: none is made
        s = generate_file(src, tmp_path / "b.json", "quilt_complex_reasoning", model="m", base_url=server.base_url,
                          cache_dir=cache, progress=False)
        assert server.request_count == 0 and s["written"] == 6 and s["usage"]["cache_hits"] == 6
        s = generate_file(src, tmp_path / "b.json", "quilt_complex_reasoning", model="m", base_url=server.base_url,
                          progress=False)  # no cache, but the journal says everything is done
        assert server.request_count == 0 and s["written"] == 6
        with pytest.raises(PathkitError, match="journal was written with prompt="):
            generate_file(src, tmp_path / "b.json", "wsi_bench", model="m", base_url=server.base_url,
                          progress=False)
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_key_never_written_and_cli_exit_status(tmp_path):
    key = "sk-pathkit-UNIQUE-4b1d8e0c2f"
    src = write_inputs(tmp_path / "data", n=4)
    out_dir = tmp_path / "out"
    env = {**os.environ, "OPENAI_API_KEY": key, "PATHKIT_CACHE": str(tmp_path / "pkcache")}

    def leaky(messages, body):  # a server whose error messages would echo the key
        raise RuntimeError(f"rejected key {key}")

    with serve() as server:
        cmd = [sys.executable, "-m", "pathkit.cli", "instruct", "generate", str(src), "--prompt", "huatuo_alignment_vqa",
               "--model", "m", "--base-url", server.base_url, "--out", str(out_dir / "ok.json")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert server.headers and all(h["authorization"] == f"Bearer {key}" for h in server.headers)
    with serve(leaky) as server:
        cmd = [sys.executable, "-m", "pathkit.cli", "instruct", "generate", str(src), "--prompt", "quilt_conversation",
               "--model", "m", "--base-url", server.base_url, "--out", str(out_dir / "bad.json"), "--max-attempts", "2"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "4 item(s) failed" in proc.stderr
    written = [p for p in list(out_dir.rglob("*")) + list((tmp_path / "pkcache").rglob("*")) if p.is_file()]
    assert len(written) >= 8  # outputs, journals, failures, summaries, cache entries
    for p in written:
        assert key not in p.read_text(errors="ignore"), p
    assert key not in proc.stdout + proc.stderr
    failures = (out_dir / "bad.failures.jsonl").read_text()
    assert "***" in failures and "HTTP 500" in failures


def test_cli_bad_input_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pathkit.cli", "instruct", "generate", str(tmp_path / "missing.jsonl"),
                           "--prompt", "wsi_bench", "--out", str(tmp_path / "o.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "missing.jsonl" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, "-m", "pathkit.cli", "instruct", "generate", str(tmp_path / "missing.jsonl"),
                           "--prompt", "nope", "--out", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown prompt kind 'nope'" in proc.stderr


def test_second_run_on_the_same_journal_is_refused(tmp_path):
    from pathkit.instruct.client import _lock_journal, run_journaled

    journal = tmp_path / "j.jsonl"
    held = _lock_journal(journal)
    try:
        with pytest.raises(PathkitError, match="another run is writing this journal"):
            run_journaled([("a", 1)], lambda p: {"x": p}, journal, progress=False)
    finally:
        held.close()
    assert run_journaled([("a", 1)], lambda p: {"x": p}, journal, progress=False)["a"]["x"] == 1
