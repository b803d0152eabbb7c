"""The vision-language model: splicing vs a hand-built reference, count check, freeze, LoRA, save/load, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathkit.config import Config
from pathkit.io import PathkitError
from pathkit.models.conversation import IGNORE_INDEX, tokenize_conversation
from pathkit.models.vlm import PARTS, VisionLanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**overrides) -> Config:
    return Config.from_name("tiny").override(overrides) if overrides else Config.from_name("tiny")


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


def _batch(model, convs):
    rows = [tokenize_conversation(c, model.tokenizer, model.template) for c in convs]
    longest = max(len(r["input_ids"]) for r in rows)
    pad = model.tokenizer.pad_token_id
    ids = torch.full((len(rows), longest), pad)
    labels = torch.full((len(rows), longest), IGNORE_INDEX)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return ids, mask, labels


def _conv(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def _perturb(model, parts=("connector", "lora"), seed: int = 0) -> None:
    """Move trainable weights away from their init (LoRA's B starts at zero, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in parts:
            for _, p in model.part_parameters(part):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VisionLanguageModel.from_config(_cfg()).eval()


def test_tiny_llm_builds_and_loads_from_disk_offline(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    from pathkit.models.llm import load_llm

    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    llm, tok = load_llm("tiny")
    folder = tmp_path / "llm" / "tiny"
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert (folder / "tokenizer.json").exists()
    assert isinstance(llm, LlamaForCausalLM) and 64 <= llm.config.hidden_size <= 128
    assert 2 <= llm.config.num_hidden_layers <= 4
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert len(tok.tokenize("<image>")) == 1 and len(tok.tokenize("tumor")) == 1
    text = "Is there necrosis in this image? Yes, 12 mitoses."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    again, _ = load_llm(str(folder))  # a local folder goes through the same from_pretrained
    for (n, a), (_, b) in zip(llm.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_tiny_llm_is_deterministic_across_caches(tmp_path, model):
    from pathkit.models.llm import build_tiny_llm, load_llm

    build_tiny_llm(tmp_path / "other")
    other, _ = load_llm(tmp_path / "other")
    base = model.llm
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), other.state_dict().values()))


def test_splice_matches_hand_built_embeddings(model):
    ids, mask, labels = _batch(model, [_conv("Is there tumor?", "Yes.")])
    pixels = model.prepare_images(_images(1))
    out = model(ids, mask, labels, images=pixels)
    # reference: cut the sequence at the <image> id and insert the projected tokens by hand
    emb = model.llm.get_input_embeddings()
    pos = int((ids[0] == model.image_token_id).nonzero())
    with torch.no_grad():
        tokens = model.vision_tower.forward_tokens(pixels, select_layer=-2, select_feature="patch")
        visual = model.connector(tokens)[0]
        ref_embeds = torch.cat([emb(ids[0, :pos]), visual, emb(ids[0, pos + 1:])])[None]
        ref = model.llm(inputs_embeds=ref_embeds).logits
    assert visual.shape[0] == model.vision_tower.num_tokens  # LLaVA: CLS dropped
    assert out.logits.shape == ref.shape
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    # loss = mean cross-entropy over the supervised tokens, shifted by one
    ref_labels = torch.cat([labels[0, :pos], torch.full((visual.shape[0],), IGNORE_INDEX), labels[0, pos + 1:]])
    ce = torch.nn.functional.cross_entropy(ref[0, :-1], ref_labels[1:], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ce)


def test_padding_does_not_change_logits(model):
    convs = [_conv("Is there tumor?", "Yes."), _conv("Describe the tissue in this image at length.", "Stroma.")]
    ids, mask, labels = _batch(model, convs)
    pixels = model.prepare_images(_images(2))
    both = model(ids, mask, labels, images=pixels).logits
    for i in range(2):
        n = int(mask[i].sum())
        alone = model(ids[i:i + 1, :n], mask[i:i + 1, :n], images=pixels[i:i + 1]).logits
        torch.testing.assert_close(both[i, :alone.shape[1]], alone[0], atol=1e-5, rtol=1e-5)


def test_image_token_count_check_names_both_counts(model):
    conv = [{"from": "human", "value": "<image>\n<image>\nCompare."}, {"from": "gpt", "value": "Same."}]
    ids, mask, labels = _batch(model, [conv])
    with pytest.raises(PathkitError, match=r"tokens in input_ids \(2\).*number of images \(1\)"):
        model(ids, mask, labels, images=model.prepare_images(_images(1)))
    out = model(ids, mask, labels, images=model.prepare_images(_images(2)))  # two images: fine
    assert out.logits.shape[1] == ids.shape[1] - 2 + 2 * model.vision_tower.num_tokens
    with pytest.raises(PathkitError, match=r"\(1\).*\(0\)"):
        model(*_batch(model, [_conv("Q?", "A.")])[:2])


def test_freeze_policy_freezes_exactly_the_named_parts():
    m = VisionLanguageModel.from_config(_cfg(**{"llm.lora_r": 4}))
    names = {part: {n for n, _ in m.part_parameters(part)} for part in PARTS}
    assert set().union(*names.values()) == {n for n, _ in m.named_parameters()}  # a partition
    assert all("lora_" in n for n in names["lora"]) and names["lora"]
    assert all(n.startswith("vision_tower.") for n in names["vision"])
    assert m.trainable_parts() == ["connector", "lora"]  # default: LLaVA-style, pretrained weights frozen
    for policy in ({"vision": True, "llm": False, "connector": True, "lora": True},
                   {"vision": False, "llm": True, "connector": False, "lora": True},
                   {"vision": True, "llm": True, "connector": True, "lora": False}):
        m.apply_freeze(policy)
        for name, p in m.named_parameters():
            part = next(k for k, v in names.items() if name in v)
            assert p.requires_grad == (not policy[part]), (name, policy)
    m.apply_freeze({"connector": False})  # a part not named keeps its state
    assert m.trainable_parts() == ["connector", "lora"]
    groups = m.param_groups({"connector": 2e-5, "lora": 2e-4})
    assert [(g["name"], g["lr"]) for g in groups] == [("connector", 2e-5), ("lora", 2e-4)]
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in m.parameters())
    with pytest.raises(PathkitError, match="model part 'projector'"):
        m.apply_freeze({"projector": True})


def _logits(m, seed=1):
    ids, mask, _ = _batch(m, [_conv("Is there tumor?", "Yes, dense nuclei."), _conv("Grade?", "High.")])
    with torch.no_grad():
        return m.eval()(ids, mask, images=m.prepare_images(_images(2, seed))).logits


def test_save_load_identical_logits_with_lora(tmp_path):
    m = VisionLanguageModel.from_config(_cfg(**{"llm.lora_r": 4}))
    _perturb(m)
    before = _logits(m)
    m.save_pretrained(tmp_path / "vlm")
    assert (tmp_path / "vlm" / "adapter").is_dir() and not (tmp_path / "vlm" / "llm").exists()
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "vlm")
    assert loaded.has_lora and loaded.trainable_parts() == m.trainable_parts()
    torch.testing.assert_close(_logits(loaded), before, atol=0, rtol=0)
    questions, images = ["Is there tumor?", "Grade?"], _images(2, seed=2)  # peft's generate path, both models
    assert loaded.answer(questions, images=images, max_new_tokens=6) == m.answer(questions, images=images,
                                                                                max_new_tokens=6)


def test_save_load_after_full_llm_training(tmp_path):
    m = VisionLanguageModel.from_config(_cfg())
    m.apply_freeze({"llm": False})
    _perturb(m, parts=("connector", "llm"))
    before = _logits(m)
    m.save_pretrained(tmp_path / "vlm")
    assert (tmp_path / "vlm" / "llm" / "model.safetensors").exists()
    torch.testing.assert_close(_logits(VisionLanguageModel.from_pretrained(tmp_path / "vlm")), before,
                               atol=0, rtol=0)


def test_lora_merge_keeps_logits(tmp_path):
    m = VisionLanguageModel.from_config(_cfg(**{"llm.lora_r": 4}))
    _perturb(m)
    before = _logits(m)
    m.save_pretrained(tmp_path / "merged", merge=True)  # merges a copy
    assert m.has_lora
    merged_dir = VisionLanguageModel.from_pretrained(tmp_path / "merged")
    assert not merged_dir.has_lora
    torch.testing.assert_close(_logits(merged_dir), before, atol=1e-5, rtol=1e-5)
    m.merge_lora()
    assert not m.has_lora
    torch.testing.assert_close(_logits(m), before, atol=1e-5, rtol=1e-5)


def test_generate_with_kv_cache_equals_greedy_without_cache(model):
    _perturb(model, parts=("connector",), seed=3)
    ids_list = [[model.tokenizer.bos_token_id] + model.tokenizer(q, add_special_tokens=False)["input_ids"]
                for q in ("<image>\nIs there tumor?", "<image>\nDescribe this tissue section in detail please.")]
    ids, mask = model._batch_prompts(ids_list)  # left padded, different lengths
    pixels = model.prepare_images(_images(2, seed=5))
    cached = model.generate(ids, mask, images=pixels, max_new_tokens=12)
    reference = model.generate_reference(ids, mask, images=pixels, max_new_tokens=12)
    assert cached.shape[1] >= 1
    torch.testing.assert_close(cached, reference[:, :cached.shape[1]], atol=0, rtol=0)
    # batched answers equal one-at-a-time answers (left padding and positions are right)
    questions = ["Is there tumor?", "Describe this tissue section in detail please."]
    batched = model.answer(questions, images=_images(2, seed=5), max_new_tokens=8)
    single = [model.answer([q], images=[im], max_new_tokens=8)[0] for q, im in zip(questions, _images(2, seed=5))]
    assert batched == single


def test_scale_invariant_vlm_fixed_tokens_for_any_image_size():
    cfg = _cfg(**{"connector.type": "scale_invariant", "connector.num_tokens": 16})
    m = VisionLanguageModel.from_config(cfg).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((64, 64), (50, 300), (400, 90))]
    views = m.prepare_images(images)
    assert [v.shape[1:] for v in views] == [(3, 64, 64)] * 3 and len({v.shape[0] for v in views}) > 1
    tokens = m.encode_images(views)
    assert [t.shape for t in tokens] == [(16, m.llm.config.hidden_size)] * 3
    ids, mask, labels = _batch(m, [_conv("Q?", "A.")] * 3)
    assert torch.isfinite(m(ids, mask, labels, images=views).loss)
    from_arrays = m.answer(["Q?"] * 3, images=images, max_new_tokens=4)  # tiled inside answer()
    assert from_arrays == m.answer(["Q?"] * 3, images=views, max_new_tokens=4)


def test_slide_features_through_pooling():
    cfg = _cfg(**{"connector.type": "pool", "connector.num_tokens": 8, "longnet.in_dim": 32})
    m = VisionLanguageModel.from_config(cfg, vision="slide", slide_encoder=False).eval()
    feats = [torch.randn(100, 32), torch.randn(37, 32)]
    tokens = m.encode_slides(feats)
    assert [t.shape[0] for t in tokens] == [8, 8]
    ids, mask, labels = _batch(m, [_conv("Diagnosis?", "Tumor."), _conv("Diagnosis?", "Normal.")])
    assert torch.isfinite(m(ids, mask, labels, slide_features=feats).loss)
    assert len(m.answer(["Diagnosis?"], slide_features=feats[:1], max_new_tokens=3)) == 1
    with pytest.raises(PathkitError, match=r"\(2\).*\(1\)"):
        m(ids, mask, labels, slide_features=feats[:1])


def test_gradient_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    m = VisionLanguageModel.from_config(_cfg(**{"llm.lora_r": 4}))
    ids, mask, labels = _batch(m, [_conv("Is there tumor?", "Yes.")])
    pixels = m.prepare_images(_images(1))
    m.train()
    loss = m(ids, mask, labels, images=pixels).loss
    loss.backward()
    grads = [p.grad.clone() for _, p in m.part_parameters("connector")]
    m.zero_grad()
    m.enable_gradient_checkpointing()
    loss2 = m(ids, mask, labels, images=pixels).loss
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    for g, (_, p) in zip(grads, m.part_parameters("connector")):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)


def test_tiny_vlm_overfits_a_few_image_caption_pairs():
    torch.manual_seed(0)
    cfg = _cfg(**{"llm.chat_template": "plain"})
    m = VisionLanguageModel.from_config(cfg)
    m.apply_freeze({"vision": True, "llm": False, "connector": False})
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 220)]
    captions = ["Dense tumor with many mitoses.", "Loose pink stroma.", "Sheets of lymphocytes.", "Adipose tissue."]
    images = [np.full((64, 64, 3), c, dtype=np.uint8) for c in colours]
    ids, mask, labels = _batch(m, [_conv("", c) for c in captions])
    pixels = m.prepare_images(images)
    opt = torch.optim.AdamW(m.param_groups({"default": 3e-3}))
    m.train()
    losses = []
    for _ in range(40):
        loss = m(ids, mask, labels, images=pixels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    assert m.answer([""] * 4, images=images, max_new_tokens=12) == captions


def test_slide_features_through_longnet(tmp_path):
    from pathkit.models.longnet import LongNetEncoder

    small = {"longnet.in_dim": 32, "longnet.dim": 32, "longnet.depth": 1, "longnet.heads": 2,
             "longnet.segment_lengths": [16, 64], "longnet.dilation_rates": [1, 2]}
    cfg = _cfg(**{"connector.type": "pool", "connector.num_tokens": 8, **small})
    pretrained = LongNetEncoder(cfg.longnet).save_pretrained(tmp_path / "slide_encoder")
    m = VisionLanguageModel.from_config(cfg, vision="slide", slide_encoder=pretrained).eval()
    feats = [torch.randn(50, 32), torch.randn(20, 32)]
    coords = [torch.randint(0, 4096, (50, 2)), torch.randint(0, 4096, (20, 2))]
    assert [t.shape[0] for t in m.encode_slides(feats, coords)] == [8, 8]
    ids, mask, labels = _batch(m, [_conv("Diagnosis?", "Tumor."), _conv("Diagnosis?", "Normal.")])
    before = m(ids, mask, labels, slide_features=list(zip(feats, coords))).logits  # (features, coords) pairs
    with pytest.raises(PathkitError, match="slide_coords"):
        m(ids, mask, labels, slide_features=feats)
    m.save_pretrained(tmp_path / "vlm")
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "vlm").eval()
    after = loaded(ids, mask, labels, slide_features=feats, slide_coords=coords).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_same_logits_as_transformers_llava(model):
    """A peer implementation: transformers' LlavaForConditionalGeneration with the same weights."""
    from pathkit.models.hf_llava import expand_image_tokens, to_hf_llava

    hf = to_hf_llava(model)
    convs = [_conv("Is there tumor?", "Yes."), _conv("Describe the tissue in this image at length.", "Stroma.")]
    ids, mask, labels = _batch(model, convs)
    pixels = model.prepare_images(_images(2, seed=7))
    with torch.no_grad():
        ours = model(ids, mask, labels, images=pixels)
        hf_ids, hf_mask, hf_labels = expand_image_tokens(ids, mask, labels, model.image_token_id,
                                                         model.vision_tower.num_tokens)
        theirs = hf(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=pixels, labels=hf_labels)
    assert theirs.logits.shape == ours.logits.shape
    valid = hf_mask.bool()
    torch.testing.assert_close(ours.logits[valid], theirs.logits[valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("max_length", [None, 10, 20])
def test_vectorised_splice_equals_loop_reference(model, padding_side, max_length):
    g = torch.Generator().manual_seed(0)
    hidden = model.llm.config.hidden_size
    img = model.image_token_id
    # rows with 0, 1 and 2 images, padded on both sides, images of different token counts
    ids = torch.randint(10, 200, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, -4:] = 0
    ids[1, 4] = img
    ids[2, 0], ids[2, 6] = img, img
    labels = torch.where(torch.rand(ids.shape, generator=g) > 0.5, ids, torch.full_like(ids, IGNORE_INDEX))
    features = [torch.randn(n, hidden, generator=g, requires_grad=True) for n in (5, 16, 3)]
    fast = model.splice(ids, mask, labels, features, padding_side=padding_side, max_length=max_length)
    ref = model.splice_reference(ids, mask, labels, features, padding_side=padding_side, max_length=max_length)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    fast[0].sum().backward()
    assert all(f.grad is not None for f in features)


def test_bad_inputs_give_one_line_errors(tmp_path, model):
    from pathkit.models.connectors import tile_image
    from pathkit.models.llm import load_llm

    with pytest.raises(PathkitError, match="nonexistent-llm: LLM folder not found"):
        load_llm(str(tmp_path / "nonexistent-llm"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(PathkitError, match="must be a folder"):
        load_llm(tmp_path / "weights.bin")
    with pytest.raises(PathkitError, match="not a pathkit model folder"):
        VisionLanguageModel.from_pretrained(tmp_path)
    with pytest.raises(PathkitError, match="unexpected shape"):
        model.encode_images(torch.zeros(2, 3))
    with pytest.raises(PathkitError, match="uint8"):
        tile_image(np.zeros((10, 10)), 8)
    with pytest.raises(PathkitError, match="unknown part"):
        model.param_groups({"projector": 1e-3})
    with pytest.raises(PathkitError) as info:
        model(torch.tensor([[model.image_token_id]]))
    assert "\n" not in str(info.value)
