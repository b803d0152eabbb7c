"""Benchmark: one training step of pathkit's VisionLanguageModel vs transformers' LlavaForConditionalGeneration.

Both models hold the same weights (``pathkit.models.hf_llava.to_hf_llava``): the same CLIP-style vision tower
(frozen, penultimate layer, CLS dropped), ``mlp2x_gelu`` projector and causal LM (trained in full, as LLaVA's
stage 2). The batch is the same; pathkit takes one ``<image>`` id per image and splices, transformers takes the
``<image>`` id repeated once per visual token. Steps are interleaved (ours, theirs, ours, ...) so both see the same
machine load; the median step time, samples/s, tokens/s and (on CUDA) peak memory are reported, plus the
splice itself: vectorised ``splice`` vs the per-row loop ``splice_reference``.

Usage:
    .venv/bin/python benchmarks/bench_vlm_step.py                                  # tiny preset, CPU, fp32
    python benchmarks/bench_vlm_step.py --preset gpu --device cuda --dtype bf16 --batch 32
Writes figures/vlm_step.json and figures/vlm_step.png (``--out`` to change the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.config import Config  # noqa: E402
from pathkit.models.conversation import IGNORE_INDEX, tokenize_conversation  # noqa: E402
from pathkit.models.hf_llava import expand_image_tokens, to_hf_llava  # noqa: E402
from pathkit.models.vlm import VisionLanguageModel  # noqa: E402
from pathkit.provenance import machine_record  # noqa: E402

WORDS = ("tumor stroma lymphocytes necrosis gland adipose nuclei dense sparse grade mitoses pleomorphic cells "
         "tissue shows with many few large small round irregular pink purple").split()


def make_batch(model, batch: int, answer_words: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        answer = " ".join(rng.choice(WORDS, size=answer_words)) + "."
        conv = [{"from": "human", "value": "<image>\nDescribe the tissue in this image."},
                {"from": "gpt", "value": answer}]
        rows.append(tokenize_conversation(conv, model.tokenizer, model.template))
    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((batch, longest), model.tokenizer.pad_token_id)
    labels = torch.full((batch, longest), IGNORE_INDEX)
    mask = torch.zeros(batch, longest, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    size = model.vision_tower.image_size
    images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
    return ids, mask, labels, model.prepare_images(images)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "gpu"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--answer-words", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids spinning on a busy machine)")
    parser.add_argument("--out", default=str(REPO / "figures" / "vlm_step"))
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    cfg = Config.from_name(args.preset).override({"llm.lora_r": 0, "connector.type": "mlp2x_gelu"})
    torch.manual_seed(0)
    ours = VisionLanguageModel.from_config(cfg)
    ours.apply_freeze({"vision": True, "llm": False, "connector": False})
    theirs = to_hf_llava(ours)
    theirs.model.vision_tower.requires_grad_(False)
    ours.to(args.device).train()
    theirs.to(args.device).train()
    ids, mask, labels, pixels = (t.to(args.device) for t in make_batch(ours, args.batch, args.answer_words))
    hf_ids, hf_mask, hf_labels = expand_image_tokens(ids, mask, labels, ours.image_token_id,
                                                     ours.vision_tower.num_tokens)
    tokens = int(hf_mask.sum())
    autocast = (torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16)
                if args.dtype == "bf16" else nullcontext())
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-5)

    def step_ours():
        with autocast:
            loss = ours(ids, mask, labels, images=pixels).loss
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss

    def step_theirs():
        with autocast:
            loss = theirs(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=pixels, labels=hf_labels).loss
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        return loss

    with torch.no_grad():  # same weights -> same loss before any step
        first = (ours(ids, mask, labels, images=pixels).loss.item(),
                 theirs(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=pixels, labels=hf_labels).loss.item())
    times: dict[str, list[float]] = {"pathkit": [], "transformers": []}
    peak: dict[str, float] = {}
    for i in range(args.warmup + args.steps):
        for name, fn in (("pathkit", step_ours), ("transformers", step_theirs)):
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            t0 = time.perf_counter()
            fn()
            sync(args.device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            if args.device.startswith("cuda"):
                peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)

    # the splice alone (forward, no grad), vectorised vs the per-row loop
    with torch.no_grad():
        feats = ours.visual_tokens(pixels)
        splice_times = {}
        for name, fn in (("vectorised", ours.splice), ("loop_reference", ours.splice_reference)):
            samples = []
            for _ in range(max(3, args.steps)):
                sync(args.device)
                t0 = time.perf_counter()
                fn(ids, mask, labels, feats)
                sync(args.device)
                samples.append(time.perf_counter() - t0)
            splice_times[name] = statistics.median(samples)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "preset": args.preset, "device": args.device, "dtype": args.dtype, "batch": args.batch,
        "tokens_per_step": tokens, "visual_tokens_per_image": ours.vision_tower.num_tokens,
        "llm_hidden": ours.llm.config.hidden_size, "llm_layers": ours.llm.config.num_hidden_layers,
        "initial_loss": {"pathkit": first[0], "transformers": first[1]},
        "median_step_s": med,
        "samples_per_s": {k: args.batch / v for k, v in med.items()},
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "speed_ratio_pathkit_over_transformers": med["transformers"] / med["pathkit"],
        "peak_memory_gib": peak or None,
        "splice_median_s": splice_times,
        "splice_speedup": splice_times["loop_reference"] / splice_times["vectorised"],
        "machine": {**machine_record(), "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_step_s", "tokens_per_s", "speed_ratio_pathkit_over_transformers",
                                             "splice_speedup", "initial_loss")}, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(times)
    axes[0].boxplot([[1e3 * t for t in times[n]] for n in names], tick_labels=names)
    axes[0].set_ylabel("training step (ms)")
    axes[0].set_title(f"{args.preset} preset, batch {args.batch}, {args.device} {args.dtype}")
    axes[1].bar(list(splice_times), [1e3 * v for v in splice_times.values()], color=["tab:blue", "tab:gray"])
    axes[1].set_ylabel("splice (ms)")
    axes[1].set_title("<image> expansion: vectorised vs loop")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
