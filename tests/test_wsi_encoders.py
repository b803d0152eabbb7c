"""Encoder registry: tiny built/saved/loaded, local dirs of each transformers family, timm extra message."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from pathkit.io import PathkitError
from pathkit.models.encoders import CLIP_MEAN, CLIP_STD, build_tiny_encoder, load_encoder


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path / "cache"))


def _images(n=3, h=70, w=90, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_tiny_saved_and_loaded_matches_in_memory_model(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out = build_tiny_encoder(tmp_path / "tiny", seed=3)
    model, preprocess, dim = load_encoder(out)
    x = preprocess(_images())
    assert x.shape == (3, 3, 64, 64) and dim == 64
    # The same config and seed built in memory gives the same numbers as the copy read back from disk.
    cfg = CLIPVisionConfig(image_size=64, patch_size=8, hidden_size=64, intermediate_size=256,
                           num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(3)
    reference = CLIPVisionModel(cfg).eval()
    with torch.no_grad():
        pooled = model(x)
        tokens = model.forward_tokens(x)
        ref = reference(pixel_values=x, output_hidden_states=True)
    assert pooled.shape == (3, 64) and tokens.shape == (3, model.num_tokens, model.token_dim) == (3, 64, 64)
    torch.testing.assert_close(pooled, ref.pooler_output)
    torch.testing.assert_close(tokens, ref.hidden_states[-2][:, 1:])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_tokens(x, select_feature="cls_patch"), ref.hidden_states[-2])


def test_tiny_name_builds_once_under_cache(tmp_path):
    m1, _, _ = load_encoder("tiny")
    assert (tmp_path / "cache" / "encoders" / "tiny" / "config.json").is_file()
    m2, p, _ = load_encoder("tiny")
    x = p(_images(2))
    with torch.no_grad():
        torch.testing.assert_close(m1(x), m2(x))


def test_preprocess_matches_manual_normalisation():
    _, preprocess, _ = load_encoder("tiny")
    img = np.full((64, 64, 3), 200, np.uint8)
    x = preprocess([img])
    expected = (200 / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(x[0, :, 10, 10].numpy(), expected, rtol=1e-5)
    with pytest.raises(PathkitError, match="uint8"):
        preprocess([np.zeros((8, 8, 3), np.float32)])


def _tiny_kwargs():
    return dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2)


@pytest.mark.parametrize("family", ["clip_vision", "clip_full", "vit", "dinov2", "siglip"])
def test_local_directory_of_each_family_loads(tmp_path, family):
    import transformers as tf

    if family == "clip_vision":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**_tiny_kwargs()))
        dim = 32
    elif family == "clip_full":
        cfg = tf.CLIPConfig(vision_config=_tiny_kwargs(), projection_dim=16,
                            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2))
        model, dim = tf.CLIPModel(cfg), 16
    elif family == "vit":
        model, dim = tf.ViTModel(tf.ViTConfig(**_tiny_kwargs())), 32
    elif family == "dinov2":
        model, dim = tf.Dinov2Model(tf.Dinov2Config(**_tiny_kwargs())), 32
    else:
        model, dim = tf.SiglipVisionModel(tf.SiglipVisionConfig(**_tiny_kwargs())), 32
    model.save_pretrained(tmp_path / family)
    enc, preprocess, got_dim = load_encoder(str(tmp_path / family))
    x = preprocess(_images(2))
    with torch.no_grad():
        pooled, tokens = enc(x), enc.forward_tokens(x)
    assert got_dim == dim and pooled.shape == (2, dim)
    assert tokens.shape == (2, 16, 32) and enc.num_tokens == 16 and enc.image_size == 32
    if family == "clip_full":  # the pooled embedding is CLIP's projected image embedding
        model.eval()
        with torch.no_grad():
            ref = model.get_image_features(pixel_values=x)
        ref = getattr(ref, "pooler_output", ref)
        torch.testing.assert_close(pooled, ref)


@pytest.mark.parametrize("name", ["gigapath", "uni"])
def test_timm_names_without_timm_give_one_line_extra_message(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError, as on a machine without it
    with pytest.raises(PathkitError) as info:
        load_encoder(name)
    msg = str(info.value)
    assert "\n" not in msg and 'pip install "pathkit[timm]"' in msg and name in msg


def test_unknown_encoder_and_non_model_dir(tmp_path):
    with pytest.raises(PathkitError, match="not a local directory"):
        load_encoder("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PathkitError, match="config.json"):
        load_encoder(tmp_path / "empty")
