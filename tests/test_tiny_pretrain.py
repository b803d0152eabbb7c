"""``tiny-pretrained``: the text corpus is true to its ground truth, the pre-training learns to answer from context,
and the cached model is rebuilt exactly when its recipe changes."""

from __future__ import annotations

import json
import re

import pytest

from pathkit.synthetic.corpus import text_conversations
from pathkit.synthetic.slides import DIAGNOSES
from pathkit.synthetic.text import _NOUN_PHRASES, YES_NO_SUFFIX

pytestmark = pytest.mark.usefixtures("one_thread")


def _caption_label(context: str) -> str:
    """The tissue class a caption names, read back from its first sentence (independent of the generator)."""
    first = context.split(".")[0] + "."
    hits = {label for label, phrases in _NOUN_PHRASES.items() for p in phrases if f" {p}." in first}
    assert len(hits) == 1, (first, hits)
    return hits.pop()


def test_corpus_is_deterministic_and_answers_follow_from_the_context():
    convs = text_conversations(600, seed=3)
    assert convs == text_conversations(600, seed=3)
    assert convs != text_conversations(600, seed=4)
    checked = {"choice": 0, "slide_choice": 0, "yes_no": 0}
    asked_words = {"tumor tissue": "tumor", "stroma": "stroma", "a lymphocytic infiltrate": "lymphocytes",
                   "necrosis": "necrosis", "glandular tissue": "gland", "adipose tissue": "adipose"}
    for human, gpt in convs:
        assert human["from"] == "human" and gpt["from"] == "gpt" and gpt["value"]
        if "\n" not in human["value"]:
            continue  # a description request
        context, question = human["value"].split("\n", 1)
        options = dict(re.findall(r"([A-H])\) ([a-z ]+?)(?= [A-H]\)|\. Answer)", question))
        if context.startswith("Diagnosis:"):
            truth = context[len("Diagnosis: "):].split(".")[0]
            assert truth in DIAGNOSES
            if options:
                assert options[gpt["value"]] == truth
                checked["slide_choice"] += 1
            elif question.startswith("Is this slide consistent with"):
                asked = question[len("Is this slide consistent with "):].split("?")[0]
                assert gpt["value"] == ("yes" if asked == truth else "no")
        else:
            label = _caption_label(context)
            if options:
                assert options[gpt["value"]] == label
                checked["choice"] += 1
            elif question.endswith(YES_NO_SUFFIX) and "mitos" not in question and "mitotic" not in question:
                asked = [w for phrase, w in asked_words.items() if phrase in question]
                assert asked, question
                assert gpt["value"] == ("yes" if asked[-1] == label else "no"), (context, question)
                checked["yes_no"] += 1
    assert min(checked.values()) >= 20, checked


def test_system_prefix_length_is_the_unsupervised_head(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path))
    from pathkit.models.conversation import VICUNA_SYSTEM, tokenize_conversation
    from pathkit.models.llm import load_llm
    from pathkit.models.tiny_pretrain import system_prefix_length

    _, tok = load_llm("tiny")
    n = system_prefix_length(tok, "vicuna_v1")
    ids = tokenize_conversation([{"from": "human", "value": "Is this tumor?"}, {"from": "gpt", "value": "yes"}],
                                tok, "vicuna_v1")["input_ids"]
    assert tok.decode(ids[:n], skip_special_tokens=True).strip() == VICUNA_SYSTEM
    assert tok.decode(ids[n:]).startswith(" USER:")  # LLaVA's tokens: the system's last space begins ĠUSER
    assert system_prefix_length(tok, "plain") == 1  # BOS only


def test_cache_is_rebuilt_exactly_when_the_pretraining_spec_changes(tmp_path, monkeypatch):
    from pathkit.models import llm
    from pathkit.models.tiny_pretrain import PretrainSpec

    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path))
    spec = PretrainSpec(conversations=200, steps=30, batch_size=8, warmup_steps=5)
    monkeypatch.setattr(llm, "_pretrain_spec", lambda name: spec if name == "tiny-pretrained" else None)
    folder = llm.tiny_llm_dir("tiny-pretrained", log=lambda line: None)
    record = json.loads((folder / "pathkit_build.json").read_text())
    losses = [r["loss"] for r in record["pretraining"]["losses"]]
    assert record["pretrain"]["steps"] == 30 and losses[-1] < losses[0] - 1.0  # it trained
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert llm.tiny_llm_dir("tiny-pretrained") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt

    spec = PretrainSpec(conversations=200, steps=31, batch_size=8, warmup_steps=5)
    folder = llm.tiny_llm_dir("tiny-pretrained", log=lambda line: None)
    assert json.loads((folder / "pathkit_build.json").read_text())["pretrain"]["steps"] == 31
    model, _ = llm.load_llm("tiny-pretrained")  # the public path loads it
    random_model, _ = llm.load_llm("tiny")
    assert not all(a.equal(b) for a, b in zip(model.parameters(), random_model.parameters()))


@pytest.mark.slow
def test_pretrained_tiny_llm_answers_from_context_and_random_one_does_not():
    """The shared cached model (built once per machine): held-out text questions, answered from the caption or
    report before them. Chance: yes/no 0.5, 4-way choice 0.25."""
    from pathkit.models.llm import load_llm
    from pathkit.models.tiny_pretrain import answer_from_context

    held_out = text_conversations(3000, seed=12345)

    def pick(kind: str) -> list:
        out = []
        for human, gpt in held_out:
            q = human["value"]
            if kind == "slide_choice" and q.startswith("Diagnosis:") and ") " in q:
                out.append((human, gpt))
            if kind == "tissue_yes_no" and not q.startswith("Diagnosis:") and q.endswith(YES_NO_SUFFIX) \
                    and "mito" not in q:
                out.append((human, gpt))
        return out[:150]

    pretrained, tok = load_llm("tiny-pretrained")
    random_init, _ = load_llm("tiny")
    for kind, floor in (("tissue_yes_no", 0.9), ("slide_choice", 0.7)):  # measured 1.0 and 0.84
        convs = pick(kind)
        assert len(convs) >= 100
        acc = answer_from_context(pretrained, tok, convs)
        base = answer_from_context(random_init, tok, convs)
        assert acc >= floor, (kind, acc)
        assert base <= 0.6, (kind, base)  # chance: 0.5 and 0.25


def test_a_corrupt_or_half_built_cache_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    """A build record that is unreadable JSON, or a folder without one (a build killed before its rename), is
    never reused: the next call builds a complete folder."""
    from pathkit.models import llm
    from pathkit.models.tiny_pretrain import PretrainSpec

    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path))
    spec = PretrainSpec(conversations=100, steps=5, batch_size=4, warmup_steps=2)
    monkeypatch.setattr(llm, "_pretrain_spec", lambda name: spec if name == "tiny-pretrained" else None)
    folder = llm.tiny_llm_dir("tiny-pretrained", log=lambda line: None)
    (folder / "pathkit_build.json").write_text("{not json")
    (folder / "model.safetensors").write_bytes(b"truncated")
    folder = llm.tiny_llm_dir("tiny-pretrained", log=lambda line: None)
    assert json.loads((folder / "pathkit_build.json").read_text())["pretrain"]["steps"] == 5
    model, _ = llm.load_llm("tiny-pretrained")  # loads: the truncated weights were replaced
    assert sum(p.numel() for p in model.parameters()) > 0
    (folder / "pathkit_build.json").unlink()
    assert llm.tiny_llm_dir("tiny-pretrained", log=lambda line: None) == folder
    assert (folder / "pathkit_build.json").exists()
