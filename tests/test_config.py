"""Configs: presets are data, YAML round-trips, bad values name field and value, no torch on import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pathkit.config import PRESETS, Config, ConfigError, LongNetConfig, TrainConfig, load_config, parse_set


@pytest.mark.parametrize("name", PRESETS)
def test_preset_yaml_round_trip(name, tmp_path):
    cfg = Config.from_name(name)
    path = tmp_path / f"{name}.yaml"
    cfg.to_yaml(path)
    again = Config.from_yaml(path)
    assert again == cfg
    assert again.preset == name


def test_presets_differ_in_scale():
    tiny, gpu, paper = (Config.from_name(n) for n in PRESETS)
    assert tiny.encoder.name == "tiny" and tiny.llm.name == "tiny"
    assert paper.llm.name == "lmsys/vicuna-7b-v1.5"
    assert paper.encoder.name == "openai/clip-vit-large-patch14-336"
    # LLaVA-1.5 / Quilt LoRA recipe: r 128, alpha 256 (its learning rates are the paper recipes' stage fields)
    assert (paper.llm.lora_r, paper.llm.lora_alpha) == (128, 256)
    # Prov-GigaPath slide encoder settings
    assert paper.longnet.segment_lengths == (1024, 5792, 32768, 185363, 1048576)
    assert paper.longnet.dilation_rates == (1, 2, 4, 8, 16)
    assert (paper.longnet.depth, paper.longnet.dim, paper.longnet.heads) == (12, 768, 16)
    assert (paper.wsi.patch_size, paper.wsi.mpp) == (256, 0.5)
    assert tiny.synthetic.tile_size < gpu.synthetic.tile_size <= paper.synthetic.tile_size


def test_bad_value_names_field_and_value():
    with pytest.raises(ConfigError, match=r"TrainConfig\.precision='fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match=r"LongNetConfig\.dim=100.*heads=16"):
        LongNetConfig(dim=100)
    with pytest.raises(ConfigError, match=r"Config\.preset='huge'"):
        Config.from_name("huge")


def test_override_and_parse_set():
    cfg = load_config("tiny", parse_set(["train.num_workers=2", "llm.lora_r=8", "longnet.dilation_rates=[1, 2]",
                                         "longnet.segment_lengths=[64, 128]"]))
    assert cfg.train.num_workers == 2 and cfg.llm.lora_r == 8
    assert cfg.longnet.dilation_rates == (1, 2) and cfg.longnet.segment_lengths == (64, 128)
    with pytest.raises(ConfigError, match="unknown field 'nope'"):
        Config.from_name("tiny").override({"train.nope": 1})
    with pytest.raises(ConfigError, match=r"TrainConfig\.num_workers='many': not an integer"):
        Config.from_name("tiny").override({"train.num_workers": "many"})
    with pytest.raises(ConfigError, match=r"EncoderConfig\.image_size='big': not an integer"):
        Config.from_name("tiny").override({"encoder.image_size": "big"})
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set(["train.lr"])


def test_yaml_unknown_field_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("preset: tiny\ntrain:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="TrainConfig: unknown field.*learning_rate"):
        Config.from_yaml(path)


def test_config_import_does_not_import_torch():
    code = "import sys, pathkit, pathkit.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_config_bad_set_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pathkit.cli", "config", "tiny", "--set", "clip.init_temperature=abc"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: ConfigError: CLIPConfig.init_temperature='abc': not a number"]
