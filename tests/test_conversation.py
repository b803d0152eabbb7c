"""Chat templates and label masks: exact token positions against hand-computed expectations."""

from __future__ import annotations

import string

import pytest

from pathkit.io import PathkitError
from pathkit.models.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    VICUNA_SYSTEM,
    build_prompt,
    clean_answer,
    tokenize_conversation,
    tokenize_prompt,
)

SPECIALS = ["<image>", "<|user|>", "<|assistant|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


@pytest.fixture(scope="module")
def char_tokenizer():
    """One token per character (plus whole special tokens): token positions are character positions."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(set(string.printable)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=SPECIALS)


CONV = [
    {"from": "human", "value": "<image>\nHi?"},
    {"from": "gpt", "value": "Yes."},
    {"from": "human", "value": "Why?"},
    {"from": "gpt", "value": "Dense."},
]


def _tokens(pieces: list[str | list[str]]) -> list[str]:
    """Expected tokens: strings are split into characters, lists are whole special tokens."""
    out: list[str] = []
    for p in pieces:
        out += p if isinstance(p, list) else list(p)
    return out


def _check(tok, template, pieces, supervised):
    """pieces: expected token pieces; supervised: indices of the pieces whose tokens carry labels."""
    r = tokenize_conversation(CONV, tok, template)
    expected = _tokens(pieces)
    assert tok.convert_ids_to_tokens(r["input_ids"]) == expected
    mask = []
    for i, p in enumerate(pieces):
        mask += [i in supervised] * len(_tokens([p]))
    want = [tid if m else IGNORE_INDEX for tid, m in zip(r["input_ids"], mask)]
    assert r["labels"] == want
    return r


def test_vicuna_v1_label_positions(char_tokenizer):
    pieces = [["<s>"], VICUNA_SYSTEM + " USER: ", ["<image>"], "\nHi? ASSISTANT:", " Yes.", ["</s>"],
              "USER: Why? ASSISTANT:", " Dense.", ["</s>"]]
    r = _check(char_tokenizer, "vicuna_v1", pieces, supervised={4, 5, 7, 8})
    # hand count: the first supervised token is the space after "ASSISTANT:" of turn 1
    first = 1 + len(VICUNA_SYSTEM + " USER: ") + 1 + len("\nHi? ASSISTANT:")
    assert r["labels"][first - 1] == IGNORE_INDEX and r["labels"][first] == r["input_ids"][first]
    assert sum(label != IGNORE_INDEX for label in r["labels"]) == len(" Yes.") + 1 + len(" Dense.") + 1


def test_huatuo_label_positions(char_tokenizer):
    pieces = [["<s>"], ["<|user|>"], "\n", ["<image>"], "\nHi?\n", ["<|assistant|>"], "\n", "Yes. \n", ["</s>"],
              ["<|user|>"], "\nWhy?\n", ["<|assistant|>"], "\n", "Dense. \n", ["</s>"]]
    r = _check(char_tokenizer, "huatuo", pieces, supervised={7, 8, 13, 14})
    assert [i for i, lab in enumerate(r["labels"]) if lab != IGNORE_INDEX][:6] == list(range(11, 17))


def test_llama3_label_positions(char_tokenizer):
    from pathkit.models.conversation import LLAMA3_SYSTEM

    head = lambda role: [["<|start_header_id|>"], role, ["<|end_header_id|>"], "\n\n"]  # noqa: E731
    pieces = [["<s>"], *head("system"), LLAMA3_SYSTEM, ["<|eot_id|>"], *head("user"), ["<image>"], "\nHi?",
              ["<|eot_id|>"], *head("assistant"), "Yes.", ["<|eot_id|>"], *head("user"), "Why?", ["<|eot_id|>"],
              *head("assistant"), "Dense.", ["<|eot_id|>"]]
    sup = {i for i, p in enumerate(pieces) if p in ("Yes.", "Dense.")}
    sup |= {i + 1 for i in sup}
    _check(char_tokenizer, "llama3", pieces, supervised=sup)


def test_plain_supervises_only_the_caption(char_tokenizer):
    conv = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "Tumor."}]
    r = tokenize_conversation(conv, char_tokenizer, "plain")
    assert char_tokenizer.convert_ids_to_tokens(r["input_ids"]) == ["<s>", "<image>"] + list("Tumor.\n")
    assert r["labels"][:2] == [IGNORE_INDEX] * 2 and r["labels"][2:] == r["input_ids"][2:]


def test_prompt_matches_training_prefix(char_tokenizer):
    for template in ("vicuna_v1", "llama3", "huatuo", "plain"):
        r = tokenize_conversation(CONV[:2], char_tokenizer, template)
        prompt = tokenize_prompt(CONV[0]["value"], char_tokenizer, template)
        first = next(i for i, lab in enumerate(r["labels"]) if lab != IGNORE_INDEX)
        assert r["input_ids"][:first] == prompt, template
    assert build_prompt("Hi?", "huatuo") == "<|user|>\nHi?\n<|assistant|>\n"
    assert build_prompt("Hi?", "vicuna_v1").endswith("USER: Hi? ASSISTANT:")


def test_image_token_is_one_id_and_truncation(char_tokenizer):
    r = tokenize_conversation(CONV, char_tokenizer, "huatuo", max_length=7)
    image_id = char_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert len(r["input_ids"]) == len(r["labels"]) == 7
    assert r["input_ids"].count(image_id) == 1


def test_bad_conversations_name_the_turn(char_tokenizer):
    with pytest.raises(PathkitError, match="turn 1"):
        tokenize_conversation([CONV[0], {"from": "robot", "value": "x"}], char_tokenizer, "vicuna_v1")
    with pytest.raises(PathkitError, match="turn 1.*expected a gpt turn"):
        tokenize_conversation([CONV[0], CONV[0]], char_tokenizer, "vicuna_v1")
    with pytest.raises(PathkitError, match="chat template"):
        tokenize_conversation(CONV, char_tokenizer, "chatml")


def test_clean_answer_cuts_at_stop_strings():
    assert clean_answer(" Yes. USER: more", "vicuna_v1") == "Yes."
    assert clean_answer("Tumor.\nextra", "plain") == "Tumor."
    assert clean_answer("Yes.<|eot_id|>junk", "llama3") == "Yes."
