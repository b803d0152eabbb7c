"""Chat templates and the label mask: which tokens of a conversation the language model is trained on.

Five templates, written as the seed systems write them (shared/reference/seed-systems.md):

``plain``      LLaVA pre-training (``preprocess_plain``): ``<image>`` + caption + ``"\\n"``; only the caption and
               its newline are supervised; the human turn is replaced by the bare ``<image>``.
``vicuna_v1``  LLaVA-1.5 / Quilt-LLaVA / WSI-LLaVA (``conv_vicuna_v1``, sep style TWO):
               ``"{system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>"``.
``llama3``     PA-LLaVA (xtuner ``llama3_chat``): ``<|start_header_id|>user<|end_header_id|>\\n\\n{q}<|eot_id|>``
               ``<|start_header_id|>assistant<|end_header_id|>\\n\\n{a}<|eot_id|>``.
``huatuo``     HuatuoGPT-Vision: ``"<|user|>\\n{q}\\n<|assistant|>\\n{a} \\n"``; pathkit appends the tokenizer's
               end-of-sequence token after each answer so that generation knows where to stop.
``qwen2``      Qwen2 / LLaVA-OneVision ChatML: ``<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}``
               ``<|im_end|>\n`` after a default system turn (Qwen2's own chat template).

Tokenization follows LLaVA's ``tokenizer_image_token``: the WHOLE conversation string is rendered, split at
``<image>`` and each chunk is tokenized as one string, so token boundaries are those of LLaVA's trainer, of an HF
processor's ``apply_chat_template`` and of vLLM (``ASSISTANT: Yes`` gives ``ĠYes``, ``</s>USER`` what the tokenizer
makes of it, never a piece boundary the tokenizer would not make). Labels come from character offsets: a token is
supervised when its last character lies in an assistant answer, so the mask is exact for any fast tokenizer and no
"tokenization mismatch" (LLaVA issues #661, #1166) can silently zero the loss. Generation prompts are the same
rendering cut where the answer starts (:func:`tokenize_prompt`). ``<image>`` becomes ONE placeholder id (the
tokenizer's ``<image>`` token) that :class:`pathkit.models.vlm.VisionLanguageModel` expands to the visual tokens.
:func:`chat_template_jinja` writes each template as a transformers chat template, for exported models.
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
QWEN2_SYSTEM = "You are a helpful assistant."  # Qwen2's chat template's default system message


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
    "qwen2": Template(
        name="qwen2", system=f"<|im_start|>system\n{QWEN2_SYSTEM}<|im_end|>\n",
        user_prefix="<|im_start|>user\n", user_suffix="<|im_end|>\n<|im_start|>assistant\n",
        answer_prefix="", answer_suffix="<|im_end|>\n", stop_strings=("<|im_end|>",),
    ),
}
TEMPLATE_NAMES = tuple(TEMPLATES)


def get_template(template: str | Template) -> Template:
    """A template by name (plain, vicuna_v1, llama3, huatuo, qwen2) or the template itself."""
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


def _render(pieces: list[tuple[str, bool]]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation string and the character spans of its supervised pieces."""
    text, spans = "", []
    for piece, supervised in pieces:
        if supervised:
            spans.append((len(text), len(text) + len(piece)))
        text += piece
    return text, spans


def _encode_chunk(chunk: str, tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of one ``<image>``-free chunk and each token's character span in it."""
    try:
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except NotImplementedError:  # a slow (Python) tokenizer has no offsets: find each token's end by prefixes
        ids = list(tokenizer(chunk, add_special_tokens=False)["input_ids"])
        spans, cut = [], 0
        for n in range(1, len(ids) + 1):
            while cut < len(chunk) and len(tokenizer(chunk[:cut], add_special_tokens=False)["input_ids"]) < n:
                cut += 1
            spans.append((cut - 1, cut))
        return ids, spans


def _encode(text: str, tokenizer, image_id: int,
            spans: list[tuple[int, int]] = ()) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` (every ``<image>`` one placeholder id, each chunk tokenized whole, as LLaVA's
    ``tokenizer_image_token`` does) and, per token, whether its last character lies in one of ``spans``."""
    ids: list[int] = []
    supervised: list[bool] = []
    offset = 0
    for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if k > 0:
            ids.append(image_id)
            supervised.append(False)
            offset += len(IMAGE_TOKEN)
        if chunk:
            chunk_ids, chunk_offsets = _encode_chunk(chunk, tokenizer)
            ids.extend(chunk_ids)
            for start, end in chunk_offsets:
                last = offset + (end - 1 if end > start else start)  # a prepended "▁" has an empty span
                supervised.append(any(a <= last < b for a, b in spans))
        offset += len(chunk)
    return ids, supervised


def _bos(tokenizer) -> list[int]:
    bos = tokenizer.bos_token_id
    return [int(bos)] if bos is not None else []


def tokenize_conversation(conversations: list[dict[str, Any]], tokenizer, template: str | Template,
                          max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and labels of a LLaVA conversation; labels are -100 except the assistant turns.

    Args:
        conversations: ``[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]``.
        tokenizer: a transformers tokenizer with an ``<image>`` token (see ``load_llm``).
        template: ``plain``, ``vicuna_v1``, ``llama3``, ``huatuo`` or ``qwen2``.
        max_length: truncate both lists to this many tokens (``None`` = no limit).

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` of equal length; the sequence starts with the BOS token when the
        tokenizer has one (as LLaVA's ``tokenizer_image_token`` does), ``<image>`` is one placeholder id. The ids
        are those of the whole rendered conversation string; the supervised tokens are the assistant answers with
        their template suffix (``</s>``, ``<|eot_id|>``, ...).
    """
    tmpl = get_template(template)
    text, spans = _render(_pieces(conversations, tmpl, tokenizer.eos_token or "", generation_prompt=False))
    ids, supervised = _encode(text, tokenizer, image_token_id(tokenizer), spans)
    input_ids = _bos(tokenizer) + ids
    labels = [IGNORE_INDEX] * (len(input_ids) - len(ids))
    labels += [tid if sup else IGNORE_INDEX for tid, sup in zip(ids, supervised)]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def system_token_count(tokenizer, template: str | Template) -> int:
    """How many tokens open every conversation of ``template`` (BOS and the system prompt): the same in each.

    A system prompt's trailing space may belong to the next token (``ĠUSER``); such a token is not counted."""
    tmpl = get_template(template)
    text = tmpl.system + (tmpl.first_prefix or tmpl.user_prefix)
    _, in_system = _encode(text, tokenizer, image_token_id(tokenizer), [(0, len(tmpl.system))])
    count = next((i for i, inside in enumerate(in_system) if not inside), len(in_system))
    return len(_bos(tokenizer)) + count


def build_prompt(question: str, template: str | Template, history: list[dict[str, Any]] | None = None) -> str:
    """The text a model continues to answer ``question`` (ends where the assistant's answer starts)."""
    tmpl = get_template(template)
    turns = list(history or []) + [{"from": "human", "value": question}]
    return "".join(text for text, _ in _pieces(turns, tmpl, "", generation_prompt=True))


def tokenize_prompt(question: str, tokenizer, template: str | Template,
                    history: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of :func:`build_prompt` (history answers end with the tokenizer's EOS, as in training)."""
    tmpl = get_template(template)
    turns = list(history or []) + [{"from": "human", "value": question}]
    text, _ = _render(_pieces(turns, tmpl, tokenizer.eos_token or "", generation_prompt=True))
    return _bos(tokenizer) + _encode(text, tokenizer, image_token_id(tokenizer))[0]


def chat_template_jinja(template: str | Template) -> str:
    """A transformers chat template (Jinja) that renders conversations exactly as ``template`` does.

    Messages are ``{"role": "user"|"assistant", "content": str | [{"type": "image"}, {"type": "text", ...}]}``;
    image parts render as ``<image>\\n`` before the text (LLaVA's ``preprocess_multimodal`` order), answers sit in
    ``{% generation %}`` blocks (``return_assistant_tokens_mask``), and the BOS token starts the string, so
    ``apply_chat_template`` + tokenization gives :func:`tokenize_prompt`'s ids (a processor then adds no BOS)."""
    tmpl = get_template(template)

    def lit(text: str) -> str:
        return "{{ " + repr(text) + " }}"

    # "{eos}" in a suffix is the tokenizer's EOS token, a template variable
    suffix = "{{ " + " + eos_token + ".join(repr(part) for part in tmpl.answer_suffix.split("{eos}")) + " }}"
    content = (
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
        "{%- else -%}{%- set ns = namespace(text='') -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{%- set ns.text = ns.text + '<image>\\n' -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
        "{%- endfor -%}{%- set text = ns.text -%}{%- endif -%}"
    )
    user_text = "{{ text }}" if tmpl.text_only_turns else "{{ '<image>' if '<image>' in text else '' }}"
    first = tmpl.first_prefix or tmpl.user_prefix
    return (
        "{{ bos_token if bos_token else '' }}" + (lit(tmpl.system) if tmpl.system else "")
        + "{%- for message in messages -%}" + content
        + "{%- if message['role'] == 'user' -%}"
        + "{%- if loop.first -%}" + lit(first) + "{%- else -%}" + lit(tmpl.user_prefix) + "{%- endif -%}"
        + user_text
        + "{%- elif message['role'] == 'assistant' -%}" + lit(tmpl.user_suffix)
        + "{% generation %}" + lit(tmpl.answer_prefix) + "{{ text }}" + suffix + "{% endgeneration %}"
        + "{%- else -%}{{ raise_exception('pathkit " + tmpl.name + " template: roles must be user and assistant') }}"
        + "{%- endif -%}{%- endfor -%}"
        + "{%- if add_generation_prompt -%}" + lit(tmpl.user_suffix) + "{%- endif -%}"
    )


def clean_answer(text: str, template: str | Template) -> str:
    """Cut a decoded answer at the template's stop strings and strip whitespace."""
    tmpl = get_template(template)
    text = text.lstrip()
    for stop in tmpl.stop_strings:
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    return text.strip()
