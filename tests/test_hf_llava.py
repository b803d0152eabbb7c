"""HF LLaVA out and in: ``pathkit export`` folders load in transformers unchanged and generate what pathkit
generates; HF LLaVA folders (pathkit's exports and ones transformers wrote, in both key layouts) load in pathkit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pathkit.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["Is there tumor in this image?", "Describe the tissue.", "What is the grade?"]


def _images() -> list[Image.Image]:
    """Sizes that exercise the resize: square at the tower size, and long sides whose scaled length has a
    fraction >= 0.5 (80x101 -> 64x80.8: transformers truncates to 80), portrait and landscape."""
    rng = np.random.default_rng(5)
    sizes = [(64, 64), (101, 80), (64, 97), (150, 90)]  # (width, height)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A tiny VLM with LoRA adapters and a connector that are not at their initial values (as after training),
    saved the way training saves it (adapters apart)."""
    from pathkit.config import Config
    from pathkit.models.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_config(Config.from_name("tiny").override({"llm.lora_r": 4}))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("connector."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.trained_parts |= {"lora", "connector"}
    return model.save_pretrained(tmp_path_factory.mktemp("trained") / "model")


@pytest.fixture(scope="module")
def ours(trained_dir):
    from pathkit.models.vlm import VisionLanguageModel

    return VisionLanguageModel.from_pretrained(trained_dir).eval()


@pytest.fixture(scope="module")
def exported(trained_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    result = _invoke(["export", str(trained_dir), "--format", "hf-llava", "--out", str(out)])
    assert "exported hf-llava" in result.output
    return out


@pytest.fixture(scope="module")
def hf(exported):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return AutoProcessor.from_pretrained(exported), LlavaForConditionalGeneration.from_pretrained(exported).eval()


def test_processor_and_model_load_unchanged_and_pixels_equal_pathkit(ours, hf):
    from transformers import LlavaProcessor

    processor, model = hf
    assert isinstance(processor, LlavaProcessor)
    assert type(processor.image_processor).__name__.startswith("CLIPImageProcessor")
    assert processor.chat_template and processor.tokenizer.chat_template
    for image in _images():
        theirs = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        assert torch.equal(theirs, ours.preprocess([image])), image.size
    assert model.config.image_token_index == ours.image_token_id


def test_merged_weights_give_pathkits_logits(ours, hf):
    from pathkit.models.conversation import tokenize_prompt
    from pathkit.models.hf_llava import expand_image_tokens

    _, model = hf
    ids = torch.tensor([tokenize_prompt("<image>\n" + QUESTIONS[0], ours.tokenizer, ours.template)])
    mask = torch.ones_like(ids)
    pixels = ours.preprocess(_images()[:1])
    with torch.no_grad():
        mine = ours(ids, mask, images=pixels).logits
        hf_ids, hf_mask, _ = expand_image_tokens(ids, mask, None, ours.image_token_id, ours.vision_tower.num_tokens)
        theirs = model(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=pixels).logits
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=1e-4)


def test_greedy_generation_through_the_hf_processor_equals_pathkit(ours, hf):
    from pathkit.models.conversation import tokenize_prompt
    from pathkit.models.hf_llava import expand_image_tokens

    processor, model = hf
    lengths = []
    for image, question in zip(_images(), QUESTIONS + QUESTIONS[:1]):
        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": question}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        prompt = torch.tensor([tokenize_prompt("<image>\n" + question, ours.tokenizer, ours.template)])
        mask = torch.ones_like(prompt)
        expanded, _, _ = expand_image_tokens(prompt, mask, None, ours.image_token_id, ours.vision_tower.num_tokens)
        assert inputs["input_ids"].tolist() == expanded.tolist()
        theirs = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        mine = ours.generate(prompt, mask, images=ours.preprocess([image]), max_new_tokens=12)[0]
        assert theirs.tolist() == mine[:len(theirs)].tolist()
        lengths.append(len(theirs))
        text = processor.decode(theirs, skip_special_tokens=True)
        assert ours.answer([question], images=[image], max_new_tokens=12)[0] == text.split("USER:")[0].strip()
    assert max(lengths) >= 3  # the comparison saw real continuations, not an immediate stop


def test_exported_folder_has_what_vllms_llava_loader_reads(exported, ours):
    """vLLM's ``LlavaForConditionalGeneration`` (vllm/model_executor/models/llava.py) reads: the LlavaConfig
    (architectures, text_config with its architecture, a CLIP vision_config, image_token_index,
    vision_feature_layer, vision_feature_select_strategy in default/full, projector_hidden_act), a
    LlavaProcessor through AutoProcessor (its image_token), a chat template for /v1/chat/completions, and
    pixel values of (3, image_size, image_size). It counts (image_size // patch_size)^2 + 1 - 1 visual tokens
    per image for the default strategy."""
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(exported)
    assert config.architectures == ["LlavaForConditionalGeneration"]
    assert config.model_type == "llava" and config.text_config.architectures == ["LlamaForCausalLM"]
    assert config.vision_config.model_type == "clip_vision_model"
    assert config.vision_feature_select_strategy == "default" and config.vision_feature_layer == -2
    assert config.projector_hidden_act == "gelu"
    raw = json.loads((exported / "config.json").read_text())
    assert raw["image_token_index"] == ours.image_token_id  # older vLLM reads the old key name
    processor = AutoProcessor.from_pretrained(exported)
    assert processor.image_token == "<image>"
    assert processor.tokenizer.convert_tokens_to_ids(processor.image_token) == config.image_token_index
    v = config.vision_config
    vllm_tokens = (v.image_size // v.patch_size) ** 2 + 1 - 1
    assert vllm_tokens == ours.vision_tower.num_tokens
    pixels = processor.image_processor(images=_images(), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[1:]) == (3, v.image_size, v.image_size)
    assert (exported / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (exported / "tokenizer_config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(exported / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    # the llava-hf names every vLLM version loads (newer ones also map transformers 5's model.* names)
    prefixes = ("language_model.model.", "language_model.lm_head.", "vision_tower.", "multi_modal_projector.")
    assert all(k.startswith(prefixes) for k in keys), sorted({k.split(".")[0] for k in keys})
    pp = json.loads((exported / "preprocessor_config.json").read_text())  # transformers 4.x / vLLM read this
    assert pp["image_processor_type"] == "CLIPImageProcessor" and pp["crop_size"]["height"] == v.image_size


def test_hf_folder_loads_as_a_pathkit_model_and_answers_the_same(exported, ours):
    from pathkit.models.vlm import VisionLanguageModel

    imported = VisionLanguageModel.from_pretrained(exported).eval()
    assert imported.template == ours.template and imported.image_token_id == ours.image_token_id
    images = _images()
    assert imported.answer(QUESTIONS, images=images[:3], max_new_tokens=10) == \
        ours.answer(QUESTIONS, images=images[:3], max_new_tokens=10)


def test_eval_answers_takes_an_hf_llava_folder(exported, trained_dir, tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = []
    for i, image in enumerate(_images()):
        image.save(tmp_path / "imgs" / f"{i}.png")
        rows.append({"question_id": f"q{i}", "image": f"imgs/{i}.png", "text": QUESTIONS[i % 3], "answer": "yes",
                     "answer_type": "CLOSED"})
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = {}
    for name, folder in (("hf", exported), ("pathkit", trained_dir)):
        out = tmp_path / f"{name}.jsonl"
        _invoke(["eval", "answers", str(folder), str(questions), "--out", str(out), "--max-new-tokens", "8"])
        texts[name] = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert texts["hf"] == texts["pathkit"] and len(texts["hf"]) == len(rows)


def _foreign_llava(folder: Path, module_names: bool) -> Path:
    """An LLaVA folder written by transformers itself (random weights, no pathkit files, no chat template).
    transformers saves llava-hf's names (``language_model.model.*``); ``module_names`` renames the weights to
    its in-memory module names (``model.language_model.*``), which other tools write."""
    from safetensors.torch import load_file, save_file
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from pathkit.models.llm import TINY_SPECS, prepare_tokenizer, tiny_llm_dir

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(tiny_llm_dir("tiny"))))
    text = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False, **TINY_SPECS["tiny"])
    vision = CLIPVisionConfig(image_size=48, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=2)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=36)
    torch.manual_seed(11)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 48},
                                                         crop_size={"height": 48, "width": 48}),
                   tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(folder)
    if module_names:
        renames = {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head.",
                   "vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."}
        state = load_file(str(folder / "model.safetensors"))
        renamed = {}
        for key, value in state.items():
            prefix = next(p for p in renames if key.startswith(p))
            renamed[renames[prefix] + key[len(prefix):]] = value
        save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("module_names", [False, True])
def test_an_llava_folder_transformers_wrote_gives_transformers_logits(tmp_path, module_names):
    from transformers import LlavaForConditionalGeneration

    from pathkit.models.conversation import tokenize_prompt
    from pathkit.models.hf_llava import expand_image_tokens
    from pathkit.models.vlm import VisionLanguageModel

    folder = _foreign_llava(tmp_path / "llava", module_names)
    theirs_model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    model = VisionLanguageModel.from_pretrained(folder).eval()
    assert model.template == "vicuna_v1" and model.vision_tower.num_tokens == 36
    ids = torch.tensor([tokenize_prompt("<image>\n" + QUESTIONS[1], model.tokenizer, model.template)])
    mask = torch.ones_like(ids)
    pixels = model.preprocess(_images()[1:3])[:1]
    with torch.no_grad():
        mine = model(ids, mask, images=pixels).logits
        hf_ids, hf_mask, _ = expand_image_tokens(ids, mask, None, model.image_token_id, 36)
        theirs = theirs_model(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=pixels).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_training_starts_from_an_hf_llava_folder(exported, ours):
    """``--set encoder.name=DIR --set llm.name=DIR``: the towers and the projector come from the folder, and
    a training step runs on them (stage 1 is then not needed)."""
    from pathkit.config import Config
    from pathkit.models.conversation import tokenize_conversation
    from pathkit.models.vlm import VisionLanguageModel

    cfg = Config.from_name("tiny").override({"encoder.name": str(exported), "llm.name": str(exported)})
    model = VisionLanguageModel.from_config(cfg)
    for (name, a), b in zip(model.connector.state_dict().items(), ours.connector.state_dict().values()):
        assert torch.equal(a, b), name
    model.apply_freeze({"llm": False})
    tokens = tokenize_conversation([{"from": "human", "value": "<image>\nIs there tumor?"},
                                    {"from": "gpt", "value": "yes"}], model.tokenizer, model.template)
    ids, labels = torch.tensor([tokens["input_ids"]]), torch.tensor([tokens["labels"]])
    loss = model(ids, torch.ones_like(ids), labels, images=model.preprocess(_images()[:1])).loss
    loss.backward()
    assert torch.isfinite(loss) and model.connector[0].weight.grad.abs().sum() > 0


def test_what_llavas_layout_cannot_hold_exports_as_a_pathkit_folder(tmp_path):
    from pathkit.config import Config
    from pathkit.models.vlm import VisionLanguageModel

    model = VisionLanguageModel.from_config(Config.from_name("tiny").override({"connector.type": "scale_invariant"}))
    source = model.save_pretrained(tmp_path / "pa")
    out = tmp_path / "out"
    result = _invoke(["export", str(source), "--format", "hf-llava", "--out", str(out)])
    assert "exported as a pathkit folder, not hf-llava: connector 'scale_invariant'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert VisionLanguageModel.from_pretrained(out).cfg.connector.type == "scale_invariant"


def test_bad_export_requests_are_one_line_errors(tmp_path, trained_dir):
    from pathkit.io import PathkitError
    from pathkit.models.vlm import VisionLanguageModel
    from pathkit.serve.export import export_model

    with pytest.raises(PathkitError, match="--format 'gguf'"):
        export_model(trained_dir, tmp_path / "x", "gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PathkitError, match="nor an HF LLaVA folder"):
        VisionLanguageModel.from_pretrained(tmp_path / "empty")
