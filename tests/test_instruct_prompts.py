"""Prompt library: every kind renders, declares its reply shape, parses fenced replies, can be overridden."""

from __future__ import annotations

import json

import pytest

from pathkit.instruct.prompts import ReplyParseError, extract_json, get_prompt, list_prompts, parse_reply
from pathkit.io import PathkitError

KINDS = {"quilt_conversation", "quilt_detailed_description", "quilt_complex_reasoning", "quilt_iterative_abduction",
         "huatuo_alignment_vqa", "huatuo_instruction_vqa", "pa_llava_cleaning", "wsi_bench"}


def test_all_kinds_present_and_qa_kinds_ask_for_llava_turns():
    assert KINDS <= set(list_prompts())
    for kind in KINDS:
        t = get_prompt(kind)
        if kind != "pa_llava_cleaning":
            assert t.produces == "conversations"
        messages = t.render({"input": {"caption": "a caption", "facts": {"diagnosis": "x"}}})
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
        assert '"caption": "a caption"' in messages[-1]["content"]
        assert "{{" not in messages[-1]["content"]
        example = t.stage().reply_example
        if t.reply_shape == "conversations":
            assert '"conversations"' in example and '"from": "human"' in example and '"from": "gpt"' in example
        parse_reply(example.replace("...", "x"), t.reply_shape)  # the declared example passes its own shape


def test_abduction_has_critic_and_revise_stages():
    t = get_prompt("quilt_iterative_abduction")
    assert set(t.stages) == {"critic", "revise"}
    critic = t.render({"input": {"facts": {"diagnosis": "lymphoma"}}, "hypothesis": {"hypothesis": "x"}}, "critic")
    assert "lymphoma" in critic[-1]["content"] and '"hypothesis": "x"' in critic[-1]["content"]
    revise = t.render({"guidance": "look at the nuclei"}, "revise")
    assert [m["role"] for m in revise] == ["user"] and "look at the nuclei" in revise[0]["content"]


def test_parse_tolerates_fences_and_prose_and_names_the_problem():
    body = {"conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]}
    for text in (json.dumps(body), f"```json\n{json.dumps(body)}\n```", f"Here you go:\n```\n{json.dumps(body)}\n```",
                 f"Sure. {json.dumps(body)} Hope it helps."):
        assert parse_reply(text, "conversations") == body
    with pytest.raises(ReplyParseError, match="not valid JSON"):
        extract_json('{"conversations": [')
    bad = {"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]}
    with pytest.raises(ReplyParseError, match=r"conversations\[0\]\.from"):
        parse_reply(json.dumps(bad), "conversations")
    with pytest.raises(ReplyParseError, match="end with a gpt turn"):
        parse_reply(json.dumps({"conversations": body["conversations"] * 1 + [body["conversations"][0]]}),
                    "conversations")
    with pytest.raises(ReplyParseError, match="contradicts"):
        parse_reply('{"category": "non_pathology", "human_pathology": true}', "cleaning_label")


def test_override_from_directory_and_env(tmp_path, monkeypatch):
    custom = tmp_path / "mine"
    custom.mkdir()
    (custom / "conv.yaml").write_text(
        "kind: quilt_conversation\nsystem: MY SYSTEM\nuser: 'IN {{input}} OUT {{reply_example}}'\n"
        "reply_shape: conversations\nreply_example: '{\"conversations\": []}'\n")
    (custom / "new.yaml").write_text(
        "kind: my_kind\nsystem: S\nuser: '{{input}}'\nreply_shape: cleaning_label\nreply_example: '{}'\n")
    t = get_prompt("quilt_conversation", custom)
    assert t.system == "MY SYSTEM" and "my_kind" in list_prompts(custom)
    assert "wsi_bench" in list_prompts(custom)  # built-ins stay
    monkeypatch.setenv("PATHKIT_PROMPTS", str(custom))
    assert get_prompt("quilt_conversation").system == "MY SYSTEM"


def test_bad_template_and_unknown_kind_errors_name_the_field(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: k\nsystem: s\nuser: u\nreply_shape: nonsense\nreply_example: x\n")
    with pytest.raises(PathkitError, match="reply_shape"):
        list_prompts(tmp_path)
    (tmp_path / "bad.yaml").write_text("kind: k\nsystem: s\nreply_shape: conversations\nreply_example: x\n")
    with pytest.raises(PathkitError, match="missing field 'user'"):
        list_prompts(tmp_path / "bad.yaml")
    with pytest.raises(PathkitError, match="unknown prompt kind 'nope'"):
        get_prompt("nope")
    with pytest.raises(PathkitError, match="placeholder"):
        get_prompt("wsi_bench").render({})


def test_cli_lists_and_shows_prompts():
    from typer.testing import CliRunner

    from pathkit.cli import app

    runner = CliRunner()
    listing = runner.invoke(app, ["instruct", "prompts"])
    assert listing.exit_code == 0 and all(k in listing.output for k in KINDS)
    shown = runner.invoke(app, ["instruct", "prompts", "quilt_iterative_abduction"])
    assert shown.exit_code == 0 and "[stage critic: reply shape verdict]" in shown.output
