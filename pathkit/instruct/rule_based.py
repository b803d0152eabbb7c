"""The offline generator: Q/A written by rules from structured ground truth, the way PathVQA was built.

PathVQA turned figure captions into questions with rules; here the rules read the same JSON a language model
gets in its prompt (caption, grounded boxes, label and attributes of synthetic tiles, case facts, a slide
report) and reply with the JSON shape the prompt declares. Because it answers *messages*, the same code serves
in-process (:class:`RuleBasedChat`, model name ``rule-based``, used by the tiny preset) and behind the local
OpenAI-compatible server (:func:`rule_based_responder`), so a notebook can show the full client path offline
and both paths give identical records.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

from pathkit.curate.text_filter import vocabulary_hits
from pathkit.instruct.client import ChatResult, UsageMeter, message_text
from pathkit.instruct.prompts import PLACEHOLDER, PromptTemplate, load_prompts

MODEL_NAME = "rule-based"
REASK_PREFIX = "Your previous reply could not be parsed"
DEFAULT_DIAGNOSES = ("adenocarcinoma", "squamous cell carcinoma", "lymphoma", "benign stroma",
                     "necrotic tumour", "lipoma")
ANIMAL_WORDS = {"mouse", "mice", "murine", "rat", "rats", "canine", "dog", "dogs", "feline", "cat", "cats",
                "bovine", "porcine", "pig", "zebrafish", "rabbit", "equine", "horse", "primate", "macaque"}


def _rng(inp: dict[str, Any]) -> random.Random:
    digest = hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()
    return random.Random(int(digest[:12], 16))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text or "") if s.strip()]


def _diagnosis(inp: dict[str, Any]) -> str | None:
    facts = inp.get("facts") or {}
    return facts.get("diagnosis") or inp.get("diagnosis") or inp.get("label")


def _clues(inp: dict[str, Any]) -> list[str]:
    facts = inp.get("facts") or {}
    clues = facts.get("clues") or facts.get("supporting_facts") or []
    return [clues] if isinstance(clues, str) else [str(c) for c in clues]


def _box(b: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in b) + "]"


def _attribute_phrases(inp: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) pairs of the item's attributes, readable ("nuclear density", "0.72")."""
    out = []
    for key, value in sorted((inp.get("attributes") or {}).items()):
        if isinstance(value, float):
            value = f"{value:.2f}"
        elif isinstance(value, (list, dict)):
            continue
        out.append((key.replace("_", " "), str(value)))
    return out


def _describe(inp: dict[str, Any]) -> str:
    parts = []
    if inp.get("caption") or inp.get("context"):
        parts.append(str(inp.get("caption") or inp.get("context")).strip())
    elif inp.get("label"):
        parts.append(f"This image shows {inp['label']} tissue.")
    boxes = inp.get("boxes") or []
    if boxes:
        parts.append("Notable regions: " + "; ".join(f"{b['text']} {_box(b['box'])}" for b in boxes) + ".")
    attrs = _attribute_phrases(inp)
    if attrs:
        parts.append("Measured features: " + ", ".join(f"{k} {v}" for k, v in attrs) + ".")
    return " ".join(parts) or "A histopathology image."


def _human(text: str, first: bool) -> dict[str, str]:
    return {"from": "human", "value": ("<image>\n" + text) if first else text}


# ------------------------------------------------------------------------------------------ per kind
def conversation(inp: dict[str, Any]) -> dict[str, Any]:
    turns: list[dict[str, str]] = []
    first = _sentences(inp.get("caption") or inp.get("context") or "")
    label = inp.get("label")
    answer = " ".join(first[:2]) if first else (f"This is {label} tissue." if label else _describe(inp))
    turns += [_human("What does this image show?", True), {"from": "gpt", "value": answer}]
    for b in (inp.get("boxes") or [])[:2]:
        turns += [_human(f'Which region of the image shows what is described as "{b["text"]}"?', False),
                  {"from": "gpt", "value": f"The region {_box(b['box'])}."}]
    for name, value in _attribute_phrases(inp)[:2]:
        turns += [_human(f"What is the {name} here?", False), {"from": "gpt", "value": f"The {name} is {value}."}]
    if label and len(turns) == 2 and first:
        turns += [_human("What tissue type is this?", False), {"from": "gpt", "value": f"{label}."}]
    dx = (inp.get("facts") or {}).get("diagnosis")
    if dx:
        turns += [_human("What diagnosis do these findings suggest?", False),
                  {"from": "gpt", "value": f"Together with the rest of the case, they are consistent with {dx}."}]
    return {"conversations": turns}


def detailed_description(inp: dict[str, Any]) -> dict[str, Any]:
    text = _describe(inp)
    dx = _diagnosis(inp)
    if dx and dx.lower() not in text.lower():
        text += f" The findings are consistent with {dx}."
    return {"conversations": [_human("Describe this histopathology image in detail.", True),
                              {"from": "gpt", "value": text}]}


def complex_reasoning(inp: dict[str, Any]) -> dict[str, Any]:
    dx = _diagnosis(inp) or "the case diagnosis"
    evidence = [b["text"] for b in inp.get("boxes") or []] or _sentences(inp.get("caption") or "")[:2]
    evidence += [f"{k} {v}" for k, v in _attribute_phrases(inp)[:3]]
    steps = ["Step by step: the image shows " + ("; ".join(evidence) if evidence else "the described tissue") + "."]
    clues = _clues(inp)
    if clues:
        steps.append("Elsewhere in the case: " + "; ".join(clues) + ".")
    steps.append(f"Together these findings support {dx}.")
    return {"conversations": [_human("What do the findings in this image suggest, and why?", True),
                              {"from": "gpt", "value": " ".join(steps)}]}


def alignment_vqa(inp: dict[str, Any]) -> dict[str, Any]:
    return {"conversations": [_human("Can you describe what this image shows?", True),
                              {"from": "gpt", "value": _describe(inp)}]}


def instruction_vqa(inp: dict[str, Any]) -> dict[str, Any]:
    turns = conversation(inp)["conversations"]
    dx = _diagnosis(inp)
    if dx:
        turns += [_human("What is the most likely interpretation?", False),
                  {"from": "gpt", "value": f"The findings are most consistent with {dx}."}]
    return {"conversations": turns}


def cleaning_label(inp: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(str(inp.get(k) or "") for k in ("caption", "context", "label", "report"))
    words = set(re.findall(r"[a-z]+", text.lower()))
    hits = vocabulary_hits(text)
    if len(hits) < 2:
        return {"category": "non_pathology", "human_pathology": False,
                "reason": f"only {len(hits)} pathology term(s) in the text"}
    if words & ANIMAL_WORDS:
        return {"category": "animal_pathology", "human_pathology": False,
                "reason": "mentions " + ", ".join(sorted(words & ANIMAL_WORDS))}
    return {"category": "human_pathology", "human_pathology": True,
            "reason": "pathology terms: " + ", ".join(sorted(hits)[:5])}


def wsi_bench(inp: dict[str, Any]) -> dict[str, Any]:
    rng = _rng(inp)
    dx = _diagnosis(inp) or "the reported diagnosis"
    facts = inp.get("facts") or {}
    pool = [d for d in (facts.get("choices") or DEFAULT_DIAGNOSES) if d.lower() != dx.lower()]
    options = rng.sample(pool, k=min(3, len(pool))) + [dx]
    rng.shuffle(options)
    letters = "ABCD"[:len(options)]
    answer = letters[options.index(dx)]
    mc = "Which is the most likely diagnosis? " + " ".join(f"{ch}) {o}" for ch, o in zip(letters, options))
    asked = dx if rng.random() < 0.5 else options[(options.index(dx) + 1) % len(options)]
    report = inp.get("report") or inp.get("caption") or inp.get("context") or ""
    morphology = [s for s in _sentences(report) if dx.lower() not in s.lower()] or _sentences(report)
    return {"conversations": [
        _human(mc, True), {"from": "gpt", "value": answer, "answer_type": "CLOSED", "capability": "diagnosis"},
        _human(f"Is this slide consistent with {asked}?", False),
        {"from": "gpt", "value": "Yes" if asked == dx else "No", "answer_type": "CLOSED",
         "capability": "diagnosis"},
        _human("Describe the morphology seen in this slide.", False),
        {"from": "gpt", "value": " ".join(morphology[:3]) or _describe(inp), "answer_type": "OPEN",
         "capability": "morphology"},
        _human("What is the diagnosis?", False),
        {"from": "gpt", "value": f"The slide shows {dx}.", "answer_type": "OPEN", "capability": "diagnosis"},
    ]}


def abduction_hypothesis(inp: dict[str, Any], guidance: list[str]) -> dict[str, Any]:
    """The trainee: first a plausible wrong guess, then the answer the guidance points to."""
    evidence = "; ".join(b["text"] for b in inp.get("boxes") or []) or " ".join(_sentences(inp.get("caption") or "")[:1])
    evidence = evidence.rstrip(" .") or "the described tissue"
    candidates = [c for c in (inp.get("facts") or {}).get("choices") or DEFAULT_DIAGNOSES]
    rng = _rng(inp)
    rng.shuffle(candidates)
    for text in reversed(guidance):
        m = re.search(r"consider ([^.\n]+)", text)
        if m:
            return {"hypothesis": m.group(1).strip(), "reasoning": f"Revised after guidance. Evidence: {evidence}."}
    if guidance:  # a clue without the answer: a second, different guess
        return {"hypothesis": candidates[1 % len(candidates)],
                "reasoning": f"Revised after guidance. Evidence: {evidence}."}
    return {"hypothesis": candidates[0], "reasoning": f"Evidence: {evidence}."}


def abduction_verdict(inp: dict[str, Any], hypothesis: dict[str, Any]) -> dict[str, Any]:
    """The critic: correct when the hypothesis names the diagnosis; else first a clue, then the answer."""
    dx = _diagnosis(inp) or ""
    if dx and dx.lower() in hypothesis.get("hypothesis", "").lower():
        return {"verdict": "correct", "guidance": f"Correct. The key evidence: {'; '.join(_clues(inp)) or dx}."}
    clues = _clues(inp)
    if clues and not hypothesis.get("reasoning", "").startswith("Revised"):
        return {"verdict": "revise", "guidance": f"Not quite. Look again at this finding: {clues[0].rstrip(' .')}."}
    return {"verdict": "revise", "guidance": f"Not quite. Given all the findings, consider {dx}."}


KIND_RULES = {
    "quilt_conversation": conversation,
    "quilt_detailed_description": detailed_description,
    "quilt_complex_reasoning": complex_reasoning,
    "huatuo_alignment_vqa": alignment_vqa,
    "huatuo_instruction_vqa": instruction_vqa,
    "pa_llava_cleaning": cleaning_label,
    "wsi_bench": wsi_bench,
}
SHAPE_RULES = {"conversations": detailed_description, "cleaning_label": cleaning_label}


# ------------------------------------------------------------------------------------------ messages -> reply
def _json_after_prefix(content: str, user_template: str) -> Any:
    """The ``{{input}}`` JSON inside a rendered user message."""
    prefix = user_template.split("{{input}}")[0] if "{{input}}" in user_template else ""
    start = len(PLACEHOLDER.sub("", prefix).strip()) if prefix and not PLACEHOLDER.search(prefix) else 0
    idx = content.find("{", start)
    if idx < 0:
        return {}
    try:
        return json.JSONDecoder().raw_decode(content, idx)[0]
    except json.JSONDecodeError:
        return {}


class RuleBasedResponder:
    """Reply to chat messages rendered from pathkit templates, by rules (see the module docstring)."""

    def __init__(self, templates: dict[str, PromptTemplate] | None = None):
        self.templates = templates or load_prompts()
        self._by_system: dict[str, tuple[PromptTemplate, str]] = {}
        for t in self.templates.values():
            self._by_system[t.system.strip()] = (t, "main")
            for name, st in t.stages.items():
                if st.system:
                    self._by_system[st.system.strip()] = (t, name)

    def __call__(self, messages: list[dict[str, Any]], body: dict[str, Any] | None = None) -> str:
        return json.dumps(self.reply(messages), ensure_ascii=False)

    def reply(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        system = next((message_text(m).strip() for m in messages if m.get("role") == "system"), "")
        users = [message_text(m) for m in messages if m.get("role") == "user"]
        template, stage = self._by_system.get(system, (None, "main"))
        if template is None:  # an unknown prompt: describe whatever JSON the user sent
            inp = _json_after_prefix(users[0] if users else "", "")
            return detailed_description(inp if isinstance(inp, dict) else {})
        inp = _json_after_prefix(users[0], template.stage(stage).user)
        inp = inp if isinstance(inp, dict) else {}
        if template.reply_shape == "hypothesis" and stage == "main":
            guidance = [u for u in users[1:] if not u.startswith(REASK_PREFIX)]
            return abduction_hypothesis(inp, guidance)
        if stage == "critic":
            rest = users[0][users[0].find("{"):]
            decoder = json.JSONDecoder()
            _, end = decoder.raw_decode(rest)
            hyp_at = rest.find("{", end)
            hypothesis = decoder.raw_decode(rest, hyp_at)[0] if hyp_at >= 0 else {"hypothesis": ""}
            return abduction_verdict(inp, hypothesis)
        rule = KIND_RULES.get(template.kind) or SHAPE_RULES.get(template.produces, detailed_description)
        return rule(inp)


def rule_based_responder(templates: dict[str, PromptTemplate] | None = None) -> RuleBasedResponder:
    """A responder for :func:`pathkit.instruct.local_server.serve` that answers pathkit prompts by rules."""
    return RuleBasedResponder(templates)


class RuleBasedChat:
    """A stand-in for :class:`~pathkit.instruct.client.ChatClient` that answers in-process by rules.

    Model name ``rule-based``; no network, no key, no cost. Usage counts words as tokens.
    """

    model = MODEL_NAME
    concurrency = 1
    accepts_images = False  # rules read the structured text only; skip encoding images

    def __init__(self, templates: dict[str, PromptTemplate] | None = None):
        self.responder = RuleBasedResponder(templates)
        self.usage = UsageMeter(MODEL_NAME, (0.0, 0.0))

    def chat(self, messages: list[dict[str, Any]], use_cache: bool = True, **params: Any) -> ChatResult:
        text = self.responder(messages)
        usage = {"prompt_tokens": sum(len(message_text(m).split()) for m in messages),
                 "completion_tokens": len(text.split())}
        self.usage.add(completions=1, **usage)
        return ChatResult(text=text, usage=usage, attempts=1)
