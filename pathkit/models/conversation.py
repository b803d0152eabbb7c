"""Chat templates and the label mask: which tokens of a conversation the language model is trained on.

Four templates, written as the seed systems write them (shared/reference/seed-systems.md):

``plain``      LLaVA pre-training (``preprocess_plain``): ``<image>`` + caption + ``"\\n"``; only the caption and
               its newline are supervised; the human turn is replaced by the bare ``<image>``.
``vicuna_v1``  LLaVA-1.5 / Quilt-LLaVA / WSI-LLaVA (``conv_vicuna_v1``, sep style TWO):
               ``"{system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>"``.
``llama3``     PA-LLaVA (xtuner ``llama3_chat``): ``<|start_header_id|>user<|end_header_id|>\\n\\n{q}<|eot_id|>``
               ``<|start_header_id|>assistant<|end_header_id|>\\n\\n{a}<|eot_id|>``.
``huatuo``     HuatuoGPT-Vision: ``"<|user|>\\n{q}\\n<|assistant|>\\n{a} \\n"``; pathkit appends the tokenizer's
               end-of-sequence token after each answer so that generation knows where to stop.

Tokenization is done piece by piece (each prompt piece and each answer is encoded on its own and the ids are
concatenated), so the label mask is exact by construction: no "tokenization mismatch" (LLaVA issues #661, #1166)
can silently zero the loss. Generation prompts are built from the same pieces (:func:`tokenize_prompt`), so a model
sees at inference exactly the token boundaries it was trained on. ``<image>`` becomes ONE placeholder id (the
tokenizer's ``<image>`` token) that :class:`pathkit.models.vlm.VisionLanguageModel` expands to the visual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pathkit.io import PathkitError

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100  # the label of every token the loss ignores (PyTorch cross-entropy's default)

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# PA-LLaVA's exact system prompt names its model ("...Your name is BioMLM..."); pathkit keeps a neutral one.
LLAMA3_SYSTEM = "You are a helpful pathology assistant."


@dataclass(frozen=True)
class Template:
    """One chat format: how a human turn and an assistant turn are written, and what ends an answer."""

    name: str
    system: str  # text before the first turn ("" = none)
    user_prefix: str  # before each question
    user_suffix: str  # after each question, up to where the answer starts (the generation prompt ends here)
    answer_prefix: str  # supervised text before the answer (e.g. the space after "ASSISTANT:")
    answer_suffix: str  # supervised text after the answer; "{eos}" is replaced by the tokenizer's EOS token
    first_prefix: str = ""  # before the first question instead of user_prefix ("" = user_prefix)
    stop_strings: tuple[str, ...] = ()  # extra strings that end a generated answer
    text_only_turns: bool = True  # False: the human text is dropped (plain keeps only <image>)


TEMPLATES: dict[str, Template] = {
    "plain": Template(
        name="plain", system="", user_prefix="", user_suffix="", answer_prefix="", answer_suffix="\n",
        stop_strings=("\n",), text_only_turns=False,
    ),
    "vicuna_v1": Template(
        name="vicuna_v1", system=VICUNA_SYSTEM + " ", user_prefix="USER: ", user_suffix=" ASSISTANT:",
        answer_prefix=" ", answer_suffix="{eos}", stop_strings=("USER:",),
    ),
    "llama3": Template(
        name="llama3",
        system=f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}<|eot_id|>",
        user_prefix="<|start_header_id|>user<|end_header_id|>\n\n",
        user_suffix="<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        answer_prefix="", answer_suffix="<|eot_id|>", stop_strings=("<|eot_id|>",),
    ),
    "huatuo": Template(
        name="huatuo", system="", user_prefix="<|user|>\n", user_suffix="\n<|assistant|>\n",
        answer_prefix="", answer_suffix=" \n{eos}", stop_strings=("<|user|>",),
    ),
}


def get_template(template: str | Template) -> Template:
    """A template by name (plain, vicuna_v1, llama3, huatuo) or the template itself."""
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise PathkitError(f"chat template {template!r}: must be one of {sorted(TEMPLATES)}")
    return TEMPLATES[template]


def image_token_id(tokenizer) -> int:
    """The id of the ``<image>`` placeholder in this tokenizer (``load_llm`` adds it when missing)."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise PathkitError(f"tokenizer has no {IMAGE_TOKEN!r} token; load it with pathkit.models.llm.load_llm")
    return int(token_id)


def _role(turn: dict[str, Any], index: int) -> str:
    role = turn.get("from", turn.get("role"))
    if role in ("human", "user"):
        return "human"
    if role in ("gpt", "assistant"):
        return "gpt"
    raise PathkitError(f"conversation turn {index}: field 'from' must be human or gpt, got {role!r}")


def _pieces(conversations: list[dict[str, Any]], template: Template, eos: str,
            generation_prompt: bool) -> list[tuple[str, bool]]:
    """The conversation as (text, supervised) pieces, in order."""
    pieces: list[tuple[str, bool]] = [(template.system, False)] if template.system else []
    for index, turn in enumerate(conversations):
        role = _role(turn, index)
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise PathkitError(f"conversation turn {index}: field 'value' must be a string")
        expected = "human" if index % 2 == 0 else "gpt"
        if role != expected:
            raise PathkitError(f"conversation turn {index}: expected a {expected} turn, got {role}")
        if role == "human":
            if not template.text_only_turns:  # plain: the human turn is the bare <image>
                value = IMAGE_TOKEN if IMAGE_TOKEN in value else ""
            prefix = template.first_prefix if (index == 0 and template.first_prefix) else template.user_prefix
            pieces.append((prefix + value + template.user_suffix, False))
        else:
            answer = template.answer_prefix + value + template.answer_suffix.replace("{eos}", eos)
            pieces.append((answer, True))
    if generation_prompt and conversations and _role(conversations[-1], len(conversations) - 1) == "gpt":
        raise PathkitError("conversation ends with a gpt turn; a generation prompt needs a final human turn")
    return [(text, sup) for text, sup in pieces if text]


def _encode(text: str, tokenizer, image_id: int) -> list[int]:
    """Token ids of ``text`` with every ``<image>`` as one placeholder id."""
    ids: list[int] = []
    for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if k > 0:
            ids.append(image_id)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return ids


def _bos(tokenizer) -> list[int]:
    bos = tokenizer.bos_token_id
    return [int(bos)] if bos is not None else []


def tokenize_conversation(conversations: list[dict[str, Any]], tokenizer, template: str | Template,
                          max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and labels of a LLaVA conversation; labels are -100 except the assistant turns.

    Args:
        conversations: ``[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]``.
        tokenizer: a transformers tokenizer with an ``<image>`` token (see ``load_llm``).
        template: ``plain``, ``vicuna_v1``, ``llama3`` or ``huatuo``.
        max_length: truncate both lists to this many tokens (``None`` = no limit).

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` of equal length; the sequence starts with the BOS token when the
        tokenizer has one (as LLaVA's ``tokenizer_image_token`` does), ``<image>`` is one placeholder id.
    """
    tmpl = get_template(template)
    image_id = image_token_id(tokenizer)
    input_ids = _bos(tokenizer)
    labels = [IGNORE_INDEX] * len(input_ids)
    for text, supervised in _pieces(conversations, tmpl, tokenizer.eos_token or "", generation_prompt=False):
        ids = _encode(text, tokenizer, image_id)
        input_ids.extend(ids)
        labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def build_prompt(question: str, template: str | Template, history: list[dict[str, Any]] | None = None) -> str:
    """The text a model continues to answer ``question`` (ends where the assistant's answer starts)."""
    tmpl = get_template(template)
    turns = list(history or []) + [{"from": "human", "value": question}]
    return "".join(text for text, _ in _pieces(turns, tmpl, "", generation_prompt=True))


def tokenize_prompt(question: str, tokenizer, template: str | Template,
                    history: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of :func:`build_prompt`, with the same piecewise boundaries used in training."""
    tmpl = get_template(template)
    image_id = image_token_id(tokenizer)
    turns = list(history or []) + [{"from": "human", "value": question}]
    ids = _bos(tokenizer)
    for text, _ in _pieces(turns, tmpl, tokenizer.eos_token or "", generation_prompt=True):
        ids.extend(_encode(text, tokenizer, image_id))
    return ids


def clean_answer(text: str, template: str | Template) -> str:
    """Cut a decoded answer at the template's stop strings and strip whitespace."""
    tmpl = get_template(template)
    text = text.lstrip()
    for stop in tmpl.stop_strings:
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    return text.strip()
