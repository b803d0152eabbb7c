"""Paper shapes on a CPU: each recipe's paper-preset architecture at its real widths, random weights, one
optimiser step per stage on data in the users' formats. Catches what only real sizes break (token counts,
projector widths, position limits, dtype and memory surprises) without downloading a weight.

Built from configs (nothing downloads): the vision towers at full depth (CLIP ViT-L/14-336: 577 tokens of
1024-d; QuiltNet's ViT-B/32 and PA-LLaVA's PLIP-style ViT-B/16 at 224), Prov-GigaPath's LongNet (12 layers,
768 wide) over 1536-d tile features, and each LLM at its real width and vocabulary with ``--llm-layers`` layers
(default 2; Vicuna-7B and Llama-3-8B are 4096 wide, Qwen2-7B 3584). Data: a LLaVA JSON file with PNG images, and
for WSI-LLaVA an HDF5 feature file in pathkit's (CLAM-compatible) layout, read back through pathkit's loaders.

For every stage it prints the visual and text token counts, the parameter counts (built, and extrapolated to
the real depth), the measured step time and peak RSS, and an estimate of the memory per GPU of the real model at
the recipe's paper settings (bf16 weights; grads + AdamW fp32 states for what trains; activations with
gradient checkpointing), unsharded and with ZeRO-3 over 8 GPUs. The CPU step runs in float32; a stage whose
float32 step would not fit in the memory this machine has free runs in bfloat16 (``--dtype auto``, the papers'
training dtype), and one that fits in neither is skipped with the numbers that say so. Contrastive stages run
the tower being aligned with a CLIP loss against random text embeddings (the text tower is not the point here).

Usage (minutes per recipe on a CPU; an 8B-class LLM with 2 layers needs ~12-28 GiB for its full fine-tuning
stage in float32, half that in bfloat16, so keep it out of the default test run):
    .venv/bin/python benchmarks/paper_shapes.py                          # all recipes
    .venv/bin/python benchmarks/paper_shapes.py --recipes wsi_llava,pa_llava --llm-layers 1
Writes figures/paper_shapes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.config import Config  # noqa: E402
from pathkit.provenance import machine_record  # noqa: E402
from pathkit.train.recipes import get_recipe  # noqa: E402

# Published architectures (config.json of each checkpoint), built here with random weights.
VISION_SPECS = {
    "openai/clip-vit-large-patch14-336": dict(image_size=336, patch_size=14, hidden_size=1024,
                                              intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    "wisdomik/QuiltNet-B-32": dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                                   num_hidden_layers=12, num_attention_heads=12),
    "openai/clip-vit-base-patch16": dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                                         num_hidden_layers=12, num_attention_heads=12),
}
LLM_SPECS = {
    "lmsys/vicuna-7b-v1.5": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                                           num_key_value_heads=32, vocab_size=32000, num_hidden_layers=32,
                                           max_position_embeddings=4096, rms_norm_eps=1e-5)),
    "meta-llama/Meta-Llama-3-8B-Instruct": ("llama", dict(hidden_size=4096, intermediate_size=14336,
                                                          num_attention_heads=32, num_key_value_heads=8,
                                                          vocab_size=128256, num_hidden_layers=32,
                                                          max_position_embeddings=8192, rope_theta=500000.0)),
    "Qwen/Qwen2-7B": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                                    num_key_value_heads=4, vocab_size=152064, num_hidden_layers=28,
                                    max_position_embeddings=32768, rope_theta=1000000.0)),
}
GIB = 2**30


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def available_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / GIB


def build_llm(name: str, layers: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    family, spec = LLM_SPECS[name]
    spec = {**spec, "num_hidden_layers": layers}
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**spec, **ids))
    return Qwen2ForCausalLM(Qwen2Config(**spec, **ids))


def build_model(cfg: Config, vision: str, llm_layers: int):
    """A VisionLanguageModel of the paper preset's shapes, assembled in memory from configs."""
    from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

    from pathkit.models.connectors import build_connector
    from pathkit.models.encoders import HFVisionEncoder, ImagePreprocess
    from pathkit.models.llm import prepare_tokenizer, tiny_llm_dir
    from pathkit.models.longnet import LongNetEncoder
    from pathkit.models.vlm import VisionLanguageModel

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(tiny_llm_dir("tiny"))))  # ids < every vocab
    llm = build_llm(cfg.llm.name, llm_layers, tokenizer)
    hidden = llm.config.hidden_size
    tower = preprocess = slide = None
    if vision == "image":
        spec = VISION_SPECS[cfg.encoder.name]
        backbone = CLIPVisionModel(CLIPVisionConfig(**spec)).eval()
        tower = HFVisionEncoder(backbone, "clip", spec["image_size"], spec["patch_size"], spec["hidden_size"],
                                spec["hidden_size"], 1)
        preprocess = ImagePreprocess(spec["image_size"])
        in_dim = tower.token_dim
    else:
        slide = LongNetEncoder(cfg.longnet)
        in_dim = cfg.longnet.dim
    connector = build_connector(cfg.connector, in_dim, hidden)
    model = VisionLanguageModel(cfg, llm, tokenizer, connector, vision=vision, vision_tower=tower,
                                preprocess=preprocess, slide_encoder=slide, llm_source=cfg.llm.name)
    if cfg.llm.lora_r > 0:
        model.add_lora()
    return model


def write_user_data(folder: Path, model, vision: str, n_tiles: int) -> Path:
    """A LLaVA JSON file (+ PNG images, or an HDF5 feature file) as users hand them to ``pathkit train``."""
    from PIL import Image

    from pathkit.io import write_json
    from pathkit.wsi.features import write_features

    rng = np.random.default_rng(0)
    records = []
    for i in range(2):
        if vision == "image":
            size = model.preprocess.size
            name = f"img{i}.png"
            Image.fromarray(rng.integers(0, 256, (size + 37 * i, size, 3), dtype=np.uint8)).save(folder / name)
        else:
            name = f"slide{i}.h5"
            side = int(np.ceil(np.sqrt(n_tiles)))
            coords = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n_tiles] * 256
            feats = rng.standard_normal((n_tiles, model.cfg.longnet.in_dim)).astype(np.float32)
            write_features(folder / name, coords, {"mpp": 0.5, "patch_size": 256, "patch_size_level0": 256,
                                                   "level": 0, "slide": f"slide{i}.svs", "encoder": "gigapath"},
                           features=feats)
        records.append({"id": f"r{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the tissue and give the diagnosis."},
            {"from": "gpt", "value": "Sheets of pleomorphic tumour cells with frequent mitoses and necrosis; "
                                     "the features are those of a high-grade carcinoma."}]})
    write_json(folder / "train.json", records)
    return folder / "train.json"


def estimate_memory(model, cfg: Config, stage, real_layers: int, built_layers: int, tokens: int) -> dict:
    """GiB per GPU of the real-depth model at the stage's paper batch size (bf16-mixed AdamW)."""
    per_layer = {"total": 0, "trainable": 0}
    other = {"total": 0, "trainable": 0}
    for name, p in model.named_parameters():
        bucket = per_layer if ".layers." in name and name.startswith("llm.") else other
        bucket["total"] += p.numel()
        bucket["trainable"] += p.numel() if p.requires_grad else 0
    scale = real_layers / built_layers
    total = other["total"] + per_layer["total"] * scale
    trainable = other["trainable"] + per_layer["trainable"] * scale
    weights = 2 * total  # bf16
    states = (2 + 4 + 4 + 4) * trainable  # bf16 grad, fp32 master, Adam m and v
    hidden = model.llm.config.hidden_size
    batch = stage.batch_size
    activations = 2 * batch * tokens * hidden * real_layers + 34 * batch * tokens * hidden  # checkpointed + 1 layer
    unsharded = (weights + states + activations) / GIB
    zero3 = ((weights + states) / 8 + activations) / GIB
    return {"params_real_depth": int(total), "trainable_real_depth": int(trainable),
            "per_gpu_gib_unsharded": round(unsharded, 1), "per_gpu_gib_zero3_8gpus": round(zero3, 1),
            "batch_per_gpu": batch}


def weights_gib(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / GIB


def step_needs_gib(model, trainable: int, dtype: torch.dtype) -> float:
    """Memory one CPU optimiser step takes: weights, then grads and both AdamW states (all in the weights'
    dtype) for what trains, plus ~3 GiB of activations and logits over a 150k vocabulary."""
    size = torch.finfo(dtype).bits // 8
    return (size * sum(p.numel() for p in model.parameters()) + 3 * size * trainable) / GIB + 3.0


def contrastive_step(model, vision: str, batch: dict) -> float:
    """One CLIP-loss step of the tower a contrastive stage aligns (text side: random embeddings)."""
    import torch.nn.functional as F

    if vision == "image":
        pixels = batch["images"] if isinstance(batch["images"], torch.Tensor) else torch.stack(batch["images"])
        pixels = pixels[:, 0] if pixels.dim() == 5 else pixels  # tiled connectors: the global view
        emb = model.vision_tower(pixels)
    else:
        emb = torch.stack([model.slide_encoder(f[None], c[None])[0, 0]
                           for f, c in zip(batch["slide_features"], batch["slide_coords"])])
    text = torch.randn(emb.shape[0], emb.shape[1])
    logits = F.normalize(emb, dim=-1) @ F.normalize(text, dim=-1).T * 100
    target = torch.arange(emb.shape[0])
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    loss.backward()
    return float(loss.detach())


def run_recipe(name: str, llm_layers: int, n_tiles: int, max_gib: float, dtype: str) -> dict:
    from PIL import Image

    from pathkit.train.data import ConversationDataset, FeatureLoader, pad_collate
    from pathkit.train.records import read_training_file

    recipe = get_recipe(name, "paper")
    cfg = Config.from_name("paper").override(recipe.config)
    t0 = time.perf_counter()
    model = build_model(cfg, recipe.vision, llm_layers)
    build_s = time.perf_counter() - t0
    real_layers = LLM_SPECS[cfg.llm.name][1]["num_hidden_layers"]
    out = {"recipe": name, "llm": cfg.llm.name, "llm_hidden": model.llm.config.hidden_size,
           "llm_vocab": model.llm.config.vocab_size, "llm_layers_built": llm_layers,
           "llm_layers_real": real_layers, "build_s": round(build_s, 1), "stages": []}
    if dtype == "bfloat16":
        model.to(torch.bfloat16)
    if recipe.vision == "image":
        out["encoder"] = cfg.encoder.name
        out["encoder_tokens_with_cls"] = model.vision_tower.num_tokens + 1
        out["encoder_width"] = model.vision_tower.token_dim
    else:
        out["longnet"] = {"depth": cfg.longnet.depth, "dim": cfg.longnet.dim, "in_dim": cfg.longnet.in_dim,
                          "tiles": n_tiles}
    with tempfile.TemporaryDirectory() as tmp:
        train_json = write_user_data(Path(tmp), model, recipe.vision, n_tiles)
        records = read_training_file(train_json)  # validated, image paths made absolute
        for stage in recipe.stages:
            template = stage.data.template or cfg.llm.chat_template
            load_image = None
            if recipe.vision == "image":
                def load_image(path):
                    with Image.open(path) as im:
                        return model.prepare_images([im.convert("RGB")])[0]
            data = ConversationDataset(records, model.tokenizer, template, cfg.llm.max_length,
                                       load_image=load_image, load_features=FeatureLoader(),
                                       visual_token_count=model.visual_token_count)
            batch = pad_collate(model.tokenizer.pad_token_id)([data[i] for i in range(len(data))])
            policy = {p: not stage.trainable.get(p, False) for p in ("vision", "slide_encoder", "connector",
                                                                       "llm", "lora")}
            model.apply_freeze(policy)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            row = {"stage": stage.name, "kind": stage.kind, "trains": list(stage.trainable_parts),
                   "trainable_params_built": trainable, "text_tokens": int(batch["attention_mask"][0].sum())}
            with torch.no_grad():
                if recipe.vision == "image":
                    visual = model.visual_tokens(images=batch["images"][:1])
                else:
                    visual = model.visual_tokens(slide_features=batch["slide_features"][:1],
                                                 slide_coords=batch["slide_coords"][:1])
            row["visual_tokens"] = int(visual[0].shape[0])
            row["sequence_tokens"] = row["text_tokens"] - 1 + row["visual_tokens"]
            row["memory_estimate"] = estimate_memory(model, cfg, stage, real_layers, llm_layers,
                                                     row["sequence_tokens"])
            # the weights already held count towards the need but not against what is free
            budget = min(max_gib, 0.85 * available_gib() + weights_gib(model))
            row["cpu_step_needs_gib"] = round(step_needs_gib(model, trainable, torch.float32), 1)
            if stage.kind != "contrastive" and dtype == "auto" and row["cpu_step_needs_gib"] > budget:
                # The papers train in bf16; on a CPU with bf16 kernels the same step fits in half the memory.
                model.to(torch.bfloat16)
            row["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
            budget = min(max_gib, 0.85 * available_gib() + weights_gib(model))
            need = step_needs_gib(model, trainable, next(model.parameters()).dtype)
            row["cpu_step_needs_gib_at_dtype"] = round(need, 1)
            if stage.kind != "contrastive" and need > budget:
                row["skipped"] = f"needs ~{need:.1f} GiB in {row['dtype']}, {available_gib():.1f} GiB free"
            else:
                optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=stage.lr)
                t0 = time.perf_counter()
                if stage.kind == "contrastive":
                    row["loss"] = contrastive_step(model, recipe.vision, batch)
                else:
                    loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                 images=batch.get("images"), slide_features=batch.get("slide_features"),
                                 slide_coords=batch.get("slide_coords")).loss
                    loss.backward()
                    row["loss"] = float(loss.detach())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del optimizer
                row["step_s"] = round(time.perf_counter() - t0, 1)
            row["peak_rss_gib"] = round(rss_gib(), 1)
            out["stages"].append(row)
            est = row["memory_estimate"]
            print(f"{name}/{stage.name}: visual {row['visual_tokens']} + text {row['text_tokens']} tokens; "
                  f"trainable {trainable / 1e6:.1f}M (built); real model {est['params_real_depth'] / 1e9:.2f}B "
                  f"params, {est['trainable_real_depth'] / 1e6:.0f}M trainable; per GPU ~"
                  f"{est['per_gpu_gib_unsharded']} GiB (ZeRO-3 x8: {est['per_gpu_gib_zero3_8gpus']}) at batch "
                  f"{est['batch_per_gpu']}; " + (row.get("skipped") or f"step {row['step_s']} s, loss "
                                                 f"{row['loss']:.3f}"), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="quilt_llava,pa_llava,wsi_llava,huatuo_vision")
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=2048, help="tiles per slide for WSI-LLaVA")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-gib", type=float, default=24.0, help="skip a stage whose CPU step needs more")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="auto: float32, or bfloat16 (as the papers train) for a stage that would not fit")
    parser.add_argument("--out", default=str(REPO / "figures" / "paper_shapes"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for name in args.recipes.split(","):
        results.append(run_recipe(name.strip(), args.llm_layers, args.tiles, args.max_gib, args.dtype))
    record = {"results": results, "machine": {**machine_record(), "platform": platform.platform(), "cpus": os.cpu_count(),
                                              "torch": torch.__version__, "threads": torch.get_num_threads(),
                                              "memory_available_gib_at_end": round(available_gib(), 1)}}
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
