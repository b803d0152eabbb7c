"""Prompt parity: pathkit's token ids and labels equal LLaVA's own preprocessing and HF chat templates.

The references are re-implemented here from the seeds' code, not imported from pathkit:
LLaVA's ``tokenizer_image_token``, ``preprocess_plain`` and ``preprocess_v1`` (``llava/train/train.py``) with the
``conv_vicuna_v1`` prompt (``llava/conversation.py``, separator style TWO), and, for llama3 / huatuo / qwen2,
chat templates written the way those models' tokenizers ship them, rendered by transformers'
``apply_chat_template`` (labels from its ``return_assistant_tokens_mask``).

Two tokenizers: pathkit's tiny byte-level BPE, and a SentencePiece-style (Metaspace, "▁") BPE trained here
offline. Both add BOS when asked for special tokens, as Llama's do: LLaVA's code relies on it.
"""

from __future__ import annotations

import string

import pytest

from pathkit.models.conversation import (
    IGNORE_INDEX,
    LLAMA3_SYSTEM,
    QWEN2_SYSTEM,
    VICUNA_SYSTEM,
    chat_template_jinja,
    tokenize_conversation,
    tokenize_prompt,
)

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>"]


def _add_bos_post_processor(tok):
    from tokenizers.processors import TemplateProcessing

    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)])
    return tok


@pytest.fixture(scope="module")
def tile_records(tmp_path_factory):
    """The tutorial's LLaVA JSON of a small synthetic tile folder: captions and multi-round QA."""
    from pathkit.config import Config
    from pathkit.io import read_json
    from pathkit.synthetic.tiles import ensure_tile_dataset

    cfg = Config.from_name("tiny").synthetic
    cfg.tiles_per_class = 4
    ds = ensure_tile_dataset(tmp_path_factory.mktemp("tiles"), cfg, seed=0, progress=False)
    records = read_json(ds.paths["train_llava"]) + read_json(ds.paths["heldout_llava"])
    assert {r.get("kind") for r in records} >= {"caption", "qa"}
    assert any(len(r["conversations"]) >= 8 for r in records)  # rounds after the first have no <image>
    return records


@pytest.fixture(scope="module")
def tiny_bpe():
    from transformers import AutoTokenizer

    from pathkit.models.llm import prepare_tokenizer, tiny_llm_dir

    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(tiny_llm_dir("tiny"))))
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS}, replace_extra_special_tokens=False)
    return _add_bos_post_processor(tok)


@pytest.fixture(scope="module")
def spm(tile_records):
    """A SentencePiece-style tokenizer: Metaspace pre-tokenizer ("▁" for spaces, prepended to every chunk, as
    the legacy Llama/Vicuna tokenizer that LLaVA trains with does), BPE trained on the tile conversations."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pathkit.models.llm import SPECIAL_TOKENS

    specials = list(SPECIAL_TOKENS) + QWEN_SPECIALS
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    corpus = [t["value"] for r in tile_records for t in r["conversations"]]
    corpus += [VICUNA_SYSTEM + " USER: ASSISTANT:", LLAMA3_SYSTEM, QWEN2_SYSTEM, "system user assistant"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=list(string.printable) + ["▁"])
    tok.train_from_iterator(corpus * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=specials[4:])
    return _add_bos_post_processor(fast)


@pytest.fixture(scope="module", params=["tiny_bpe", "spm"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------------ LLaVA's preprocessing, re-implemented

def llava_tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """LLaVA's ``tokenizer_image_token``: tokenize the chunks between ``<image>`` (each with BOS, dropped after
    the first) and put the image index between them (here the tokenizer's ``<image>`` id)."""
    image_index = tokenizer.convert_tokens_to_ids("<image>")
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separated = [x for chunk in chunks for x in (chunk, [image_index] * (offset + 1))][:-1]
    for x in separated:
        ids.extend(x[offset:])
    return ids


def vicuna_v1_prompt(turns: list[dict]) -> str:
    """``conv_vicuna_v1.get_prompt()`` (separator style TWO: sep " ", sep2 "</s>")."""
    seps = [" ", "</s>"]
    text = VICUNA_SYSTEM + seps[0]
    for i, turn in enumerate(turns):
        role = "USER" if turn["from"] == "human" else "ASSISTANT"
        if turn["value"] is not None:
            text += role + ": " + turn["value"] + seps[i % 2]
        else:
            text += role + ":"
    return text


def llava_preprocess_v1(turns: list[dict], tokenizer) -> tuple[list[int], list[int], bool]:
    """``preprocess_v1`` with an image, for a legacy tokenizer; returns (ids, labels, mismatch warning fired)."""
    conversation = vicuna_v1_prompt(turns)
    ids = llava_tokenizer_image_token(conversation, tokenizer)
    labels = list(ids)
    total_len = len(ids)  # no padding in a single example
    sep = " " + "ASSISTANT" + ": "
    cur_len = 1
    labels[:cur_len] = [IGNORE_INDEX] * cur_len
    for rou in conversation.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(llava_tokenizer_image_token(rou, tokenizer))
        instruction_len = len(llava_tokenizer_image_token(parts[0], tokenizer)) - 2
        labels[cur_len:cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += round_len
    labels[cur_len:] = [IGNORE_INDEX] * (len(labels) - cur_len)
    mismatch = cur_len != total_len
    if mismatch:
        labels = [IGNORE_INDEX] * len(labels)
    return ids, labels, mismatch


def llava_preprocess_plain(turns: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """``preprocess_plain``: ``<image>`` + caption + ``conv_llava_plain.sep`` ("\\n"); the image is masked."""
    assert len(turns) == 2 and "<image>" in turns[0]["value"]
    ids = llava_tokenizer_image_token("<image>" + turns[1]["value"] + "\n", tokenizer)
    masked = len(llava_tokenizer_image_token("<image>", tokenizer))
    return ids, [IGNORE_INDEX] * masked + ids[masked:]


def test_vicuna_v1_equals_llava_preprocess_v1(tokenizer, tile_records):
    fired = 0
    for rec in tile_records:
        ids, labels, mismatch = llava_preprocess_v1(rec["conversations"], tokenizer)
        fired += mismatch
        ours = tokenize_conversation(rec["conversations"], tokenizer, "vicuna_v1")
        assert ours["input_ids"] == ids, rec["id"]
        assert ours["labels"] == labels, rec["id"]
    assert fired == 0, f"LLaVA's tokenization mismatch check fired on {fired} of {len(tile_records)} records"


def test_plain_equals_llava_preprocess_plain(tokenizer, tile_records):
    captions = [r for r in tile_records if r.get("kind") == "caption"]
    assert captions
    for rec in captions:
        ids, labels = llava_preprocess_plain(rec["conversations"], tokenizer)
        ours = tokenize_conversation(rec["conversations"], tokenizer, "plain")
        assert (ours["input_ids"], ours["labels"]) == (ids, labels), rec["id"]


def test_vicuna_generation_prompt_is_llava_eval_prompt(tokenizer, tile_records):
    """``model_vqa``: the question turn plus ``ASSISTANT`` with no message, tokenized by tokenizer_image_token."""
    for rec in tile_records[:20]:
        question = rec["conversations"][0]["value"]
        want = llava_tokenizer_image_token(
            vicuna_v1_prompt([{"from": "human", "value": question}, {"from": "gpt", "value": None}]), tokenizer)
        assert tokenize_prompt(question, tokenizer, "vicuna_v1") == want


def test_issue_example_user_is_one_token_after_the_system_prompt(tiny_bpe):
    """The system prompt and ``USER:`` are tokenized together: ``ĠUSER``, not ``Ġ`` + ``USER``."""
    tokens = tiny_bpe.convert_ids_to_tokens(tokenize_prompt("<image>\nIs there tumor?", tiny_bpe, "vicuna_v1"))
    assert "ĠUSER" in tokens and "USER" not in tokens


# ------------------------------------------------------------------ the other seeds' chat templates

# Written as those models' tokenizers ship them (generation blocks added for the assistant mask). pathkit's
# sequences start with the tokenizer's BOS, as LLaVA's do; Qwen2's tokenizer has none, these test ones have.
SEED_TEMPLATES = {
    # Meta-Llama-3-Instruct (PA-LLaVA's xtuner llama3_chat writes the same strings), with pathkit's system text
    "llama3": (
        "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYSTEM + "<|eot_id|>"
        "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim }}<|eot_id|>"
        "{% endgeneration %}{% else %}{{ message['content'] | trim }}<|eot_id|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
    # HuatuoGPT-Vision: "<|user|>\n{q}\n<|assistant|>\n{a} \n" (+ EOS, pathkit's addition)
    "huatuo": (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "<|user|>\n{{ message['content'] }}\n<|assistant|>\n"
        "{% else %}{% generation %}{{ message['content'] }} \n{{ eos_token }}{% endgeneration %}{% endif %}"
        "{% endfor %}"),
    # Qwen2-Instruct's template (default system message)
    "qwen2": (
        "{{ bos_token }}{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "<|im_start|>system\n" + QWEN2_SYSTEM + "<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n{% if message['role'] == 'assistant' %}{% generation %}"
        "{{ message['content'] }}<|im_end|>\n{% endgeneration %}{% else %}{{ message['content'] }}<|im_end|>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
}


def _messages(conversations: list[dict]) -> list[dict]:
    return [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
            for t in conversations]


def _hf(tokenizer, messages, chat_template, **kwargs):
    return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=True, return_dict=True,
                                         **kwargs)


@pytest.mark.parametrize("template", sorted(SEED_TEMPLATES))
def test_chat_templates_equal_the_seed_models_templates(tokenizer, tile_records, template):
    for rec in tile_records[::3]:
        out = _hf(tokenizer, _messages(rec["conversations"]), SEED_TEMPLATES[template],
                  return_assistant_tokens_mask=True)
        ids = list(out["input_ids"])
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, out["assistant_masks"])]
        ours = tokenize_conversation(rec["conversations"], tokenizer, template)
        assert ours["input_ids"] == ids, (template, rec["id"])
        assert ours["labels"] == labels, (template, rec["id"])
        prompt = _hf(tokenizer, _messages(rec["conversations"][:1]), SEED_TEMPLATES[template],
                     add_generation_prompt=True)["input_ids"]
        assert tokenize_prompt(rec["conversations"][0]["value"], tokenizer, template) == list(prompt)


# ------------------------------------------------------------------ pathkit's exported chat templates

@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "llama3", "huatuo", "qwen2"])
def test_exported_chat_template_reproduces_training_and_prompts(tokenizer, tile_records, template):
    """``chat_template_jinja`` through transformers gives pathkit's ids, labels and generation prompts,
    with the image as a content part (``{"type": "image"}``) as processors take it."""
    records = [r for r in tile_records if r.get("kind") == "caption"] if template == "plain" else tile_records
    jinja = chat_template_jinja(template)
    for rec in records[::4]:
        conv = rec["conversations"]
        ours = tokenize_conversation(conv, tokenizer, template)
        out = _hf(tokenizer, _messages(conv), jinja, return_assistant_tokens_mask=True)
        assert list(out["input_ids"]) == ours["input_ids"], (template, rec["id"])
        assert [t if m else IGNORE_INDEX for t, m in zip(out["input_ids"], out["assistant_masks"])] \
            == ours["labels"], (template, rec["id"])
        history, question = conv[:-2], conv[-2]["value"]
        parts = [{"role": "user", "content": [{"type": "image"},
                                              {"type": "text", "text": question.replace("<image>\n", "")}]}]
        if "<image>" not in question:
            parts = [{"role": "user", "content": [{"type": "text", "text": question}]}]
        prompt = _hf(tokenizer, _messages(history) + parts, jinja, add_generation_prompt=True)["input_ids"]
        assert list(prompt) == tokenize_prompt(question, tokenizer, template, history=history), (template, rec["id"])
