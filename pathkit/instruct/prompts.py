"""The prompt library: templates as data (YAML), each declaring the JSON shape of its reply.

Every template lives in ``pathkit/instruct/prompts/<kind>.yaml`` and can be listed (:func:`list_prompts`), read
(:func:`get_prompt`) and overridden by a user's directory of YAML files or a single YAML file (``overrides=``
or the environment variable ``PATHKIT_PROMPTS``). A template has a system message, a user message with
``{{input}}`` (the item as JSON) and ``{{reply_example}}`` placeholders, and a ``reply_shape`` naming the
validator its reply must pass (:data:`REPLY_SHAPES`). Every prompt that produces Q/A asks for the LLaVA turns
shape ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}``.

Multi-step prompts (iterative abduction) add named ``stages`` (``critic``, ``revise``) with their own messages
and reply shapes; ``output_shape`` is the shape of the final record.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pathkit.io import PathkitError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class ReplyParseError(ValueError):
    """A model reply that is not the declared JSON shape; the message says what is wrong in one line."""


@dataclass
class PromptStage:
    """One message exchange of a template: system text (optional for follow-ups), user text, reply shape."""

    user: str
    reply_shape: str
    reply_example: str = ""
    system: str | None = None


@dataclass
class PromptTemplate:
    """A prompt kind: the main stage's messages, the declared reply shape, and optional extra stages."""

    kind: str
    family: str
    description: str
    system: str
    user: str
    reply_shape: str
    reply_example: str
    source: str = ""
    images: bool = False  # attach the item's images as data URLs (multimodal "unblinded" prompts)
    output_shape: str | None = None  # shape of the final record when it differs from the main reply
    stages: dict[str, PromptStage] = field(default_factory=dict)
    path: str = ""

    @property
    def produces(self) -> str:
        """The shape of the record this kind writes (``conversations`` for every Q/A prompt)."""
        return self.output_shape or self.reply_shape

    def stage(self, name: str = "main") -> PromptStage:
        if name == "main":
            return PromptStage(user=self.user, reply_shape=self.reply_shape, reply_example=self.reply_example,
                               system=self.system)
        if name not in self.stages:
            raise PathkitError(f"prompt {self.kind!r}: no stage {name!r} (has {sorted(self.stages)})")
        return self.stages[name]

    def render(self, values: dict[str, Any], stage: str = "main") -> list[dict[str, Any]]:
        """Messages for one stage: ``[{"role": "system", ...}, {"role": "user", ...}]`` (text only).

        ``values`` fills the ``{{name}}`` placeholders; dicts/lists are written as indented JSON. Images are
        attached by the caller (:func:`pathkit.instruct.client.image_parts`).
        """
        st = self.stage(stage)
        values = {"reply_example": st.reply_example.strip(), **values}
        messages: list[dict[str, Any]] = []
        if st.system:
            messages.append({"role": "system", "content": st.system.strip()})
        messages.append({"role": "user", "content": fill_placeholders(st.user, values, f"{self.kind}.{stage}")})
        return messages

    def parse(self, text: str, stage: str = "main") -> dict[str, Any]:
        """Parse a reply into the stage's declared shape or raise :class:`ReplyParseError`."""
        return parse_reply(text, self.stage(stage).reply_shape)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("stages", "path")}
        out["stages"] = {name: dict(st.__dict__) for name, st in self.stages.items()}
        return out


def fill_placeholders(text: str, values: dict[str, Any], where: str) -> str:
    """Replace ``{{name}}`` in ``text``; a missing value raises an error naming the template and placeholder."""

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise PathkitError(f"prompt {where}: no value for placeholder {{{{{name}}}}}")
        value = values[name]
        if isinstance(value, (dict, list)):
            return json.dumps(value, indent=2, ensure_ascii=False)
        return str(value)

    return PLACEHOLDER.sub(sub, text).strip()


# ------------------------------------------------------------------------------------------ reply shapes
def _check_conversations(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or "conversations" not in obj:
        raise ReplyParseError('expected an object with key "conversations"')
    turns = obj["conversations"]
    if not isinstance(turns, list) or len(turns) < 2:
        raise ReplyParseError('"conversations" must be a list of at least 2 turns')
    for i, turn in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict):
            raise ReplyParseError(f"conversations[{i}] must be an object")
        if turn.get("from") != want:
            raise ReplyParseError(f'conversations[{i}].from must be "{want}" (turns alternate, human first), '
                                  f"got {turn.get('from')!r}")
        if not isinstance(turn.get("value"), str) or not turn["value"].strip():
            raise ReplyParseError(f"conversations[{i}].value must be a non-empty string")
    if len(turns) % 2:
        raise ReplyParseError("conversations must end with a gpt turn")
    return {"conversations": turns}


def _check_cleaning_label(obj: Any) -> dict[str, Any]:
    categories = ("human_pathology", "animal_pathology", "non_pathology")
    if not isinstance(obj, dict):
        raise ReplyParseError("expected a JSON object")
    if obj.get("category") not in categories:
        raise ReplyParseError(f'"category" must be one of {list(categories)}, got {obj.get("category")!r}')
    flag = obj.get("human_pathology")
    if not isinstance(flag, bool):
        raise ReplyParseError(f'"human_pathology" must be true or false, got {flag!r}')
    if flag != (obj["category"] == "human_pathology"):
        raise ReplyParseError('"human_pathology" contradicts "category"')
    return {"category": obj["category"], "human_pathology": flag, "reason": str(obj.get("reason", ""))}


def _check_hypothesis(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("hypothesis"), str) or not obj["hypothesis"].strip():
        raise ReplyParseError('expected {"hypothesis": "...", "reasoning": "..."} with a non-empty hypothesis')
    return {"hypothesis": obj["hypothesis"].strip(), "reasoning": str(obj.get("reasoning", "")).strip()}


def _check_verdict(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("verdict") not in ("correct", "revise"):
        raise ReplyParseError('expected {"verdict": "correct"|"revise", "guidance": "..."}')
    return {"verdict": obj["verdict"], "guidance": str(obj.get("guidance", "")).strip()}


REPLY_SHAPES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "conversations": _check_conversations,
    "cleaning_label": _check_cleaning_label,
    "hypothesis": _check_hypothesis,
    "verdict": _check_verdict,
}

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in a reply: bare, inside a ```json fence, or the outermost ``{...}`` in prose."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyParseError("empty reply")
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    first_error = None
    for cand in candidates:
        try:
            return json.loads(cand)
        except json.JSONDecodeError as err:
            first_error = first_error or err
    raise ReplyParseError(f"reply is not valid JSON ({first_error.msg} at line {first_error.lineno} "
                          f"column {first_error.colno})")


def parse_reply(text: str, shape: str) -> dict[str, Any]:
    """Parse ``text`` and check it against the named reply shape (see :data:`REPLY_SHAPES`)."""
    if shape not in REPLY_SHAPES:
        raise PathkitError(f"unknown reply shape {shape!r}; known: {sorted(REPLY_SHAPES)}")
    return REPLY_SHAPES[shape](extract_json(text))


# ------------------------------------------------------------------------------------------ loading
_REQUIRED = ("kind", "system", "user", "reply_shape", "reply_example")


def load_template_file(path: str | Path) -> list[PromptTemplate]:
    """Templates from one YAML file (one mapping, or a list of mappings)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PathkitError(f"{path}: file not found") from err
    except yaml.YAMLError as err:
        raise PathkitError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from err
    docs = data if isinstance(data, list) else [data]
    out = []
    for i, doc in enumerate(docs):
        where = f"{path}" + (f"[{i}]" if isinstance(data, list) else "")
        if not isinstance(doc, dict):
            raise PathkitError(f"{where}: a template must be a mapping")
        for key in _REQUIRED:
            if not isinstance(doc.get(key), str) or not doc[key].strip():
                raise PathkitError(f"{where}: missing field {key!r}")
        stages = {}
        for name, st in (doc.get("stages") or {}).items():
            if not isinstance(st, dict) or "user" not in st or "reply_shape" not in st:
                raise PathkitError(f"{where}: stage {name!r} needs 'user' and 'reply_shape'")
            stages[name] = PromptStage(user=st["user"], reply_shape=st["reply_shape"],
                                       reply_example=st.get("reply_example", ""), system=st.get("system"))
        for shape in [doc["reply_shape"], doc.get("output_shape")] + [s.reply_shape for s in stages.values()]:
            if shape is not None and shape not in REPLY_SHAPES:
                raise PathkitError(f"{where}: field 'reply_shape' {shape!r} is not one of {sorted(REPLY_SHAPES)}")
        out.append(PromptTemplate(
            kind=doc["kind"], family=doc.get("family", "custom"), description=str(doc.get("description", "")),
            system=doc["system"], user=doc["user"], reply_shape=doc["reply_shape"],
            reply_example=doc["reply_example"], source=str(doc.get("source", "")),
            images=bool(doc.get("images", False)), output_shape=doc.get("output_shape"), stages=stages,
            path=str(path)))
    return out


def _templates_in(location: str | Path) -> list[PromptTemplate]:
    location = Path(location)
    if location.is_dir():
        files = sorted(list(location.glob("*.yaml")) + list(location.glob("*.yml")))
        return [t for f in files for t in load_template_file(f)]
    return load_template_file(location)


def load_prompts(overrides: str | Path | None = None) -> dict[str, PromptTemplate]:
    """All templates by kind: the built-in ones, then ``$PATHKIT_PROMPTS``, then ``overrides`` (later wins)."""
    templates = {t.kind: t for t in _templates_in(PROMPTS_DIR)}
    for location in (os.environ.get("PATHKIT_PROMPTS"), overrides):
        if location:
            templates.update({t.kind: t for t in _templates_in(location)})
    return templates


def list_prompts(overrides: str | Path | None = None) -> list[str]:
    """Names of the available prompt kinds."""
    return sorted(load_prompts(overrides))


def get_prompt(kind: str, overrides: str | Path | None = None) -> PromptTemplate:
    """One template by kind; an unknown kind raises an error listing the known ones."""
    templates = load_prompts(overrides)
    if kind not in templates:
        raise PathkitError(f"unknown prompt kind {kind!r}; known: {', '.join(sorted(templates))}")
    return templates[kind]
