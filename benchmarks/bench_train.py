"""Benchmark: the Lightning training step of pathkit's VLM vs transformers' LlavaForConditionalGeneration.

Both run through the *same* Lightning Trainer settings (precision, AdamW, gradient clipping) on the same batches, one
after the other in one process: pathkit through :class:`pathkit.train.vlm_module.VLMModule` (the module every recipe
stage uses: freeze policy, param groups, cosine schedule, throughput logging), transformers through a minimal
LightningModule around ``LlavaForConditionalGeneration`` holding copies of the same weights
(``pathkit.models.hf_llava.to_hf_llava``). The stage is LLaVA's instruction tuning: projector + whole LLM train, vision
tower frozen. Reported per model: median step time, samples/s, tokens/s (text + visual tokens the LLM processes) and
model FLOPs utilisation ``MFU = 6 * trainable_llm_params * tokens / step_time / peak`` (the vision tower's forward is
left out, as nanoGPT/litgpt do). Peak: the GPU's dense bf16 peak from a table (H100/H200 989 TFLOPS), on CPU the
measured fp32 matmul rate of this machine.

Usage:
    .venv/bin/python benchmarks/bench_train.py                                   # tiny preset, CPU, ~1-2 min
    python benchmarks/bench_train.py --device cuda --preset gpu --batch 32 --steps 30   # one GPU, bf16-mixed
Writes figures/train_step.json and figures/train_step.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402

from pathkit.config import Config  # noqa: E402
from pathkit.models.conversation import tokenize_conversation  # noqa: E402
from pathkit.models.hf_llava import expand_image_tokens, to_hf_llava  # noqa: E402
from pathkit.models.vlm import VisionLanguageModel  # noqa: E402
from pathkit.provenance import machine_record  # noqa: E402
from pathkit.train.data import pad_collate  # noqa: E402
from pathkit.train.recipes import Stage  # noqa: E402
from pathkit.train.vlm_module import VLMModule  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}
WORDS = ("tumor stroma lymphocytes necrosis gland adipose nuclei dense sparse grade mitoses pleomorphic cells "
         "tissue shows with many few large small round irregular pink purple").split()


def make_batches(model, n_batches: int, batch: int, answer_words: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    collate = pad_collate(model.tokenizer.pad_token_id)
    size = model.vision_tower.image_size
    out = []
    for _ in range(n_batches):
        items = []
        for _ in range(batch):
            answer = " ".join(rng.choice(WORDS, size=answer_words)) + "."
            conv = [{"from": "human", "value": "<image>\nDescribe the tissue in this image."},
                    {"from": "gpt", "value": answer}]
            tok = tokenize_conversation(conv, model.tokenizer, model.template)
            image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            items.append({"input_ids": torch.tensor(tok["input_ids"]), "labels": torch.tensor(tok["labels"]),
                          "image": model.prepare_images([image])[0]})
        out.append(collate(items))
    return out


class HFLlavaModule(L.LightningModule):
    """transformers' LLaVA in the same Lightning loop (AdamW, same lr); inputs use its expanded <image> ids."""

    def __init__(self, model, lr: float):
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch["hf_ids"], attention_mask=batch["hf_mask"], labels=batch["hf_labels"],
                          pixel_values=batch["images"]).loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.lr,
                                 weight_decay=0.0)


class StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def _sync(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(trainer)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(trainer)
        self.times.append(time.perf_counter() - self._t0)


def fit(module, batches, device: str, precision: str, steps: int) -> list[float]:
    timer = StepTimer()
    trainer = L.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, max_steps=steps,
                        precision=precision, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, loader)
    return timer.times


def cpu_peak_flops(threads: int) -> float:
    """Measured fp32 matmul FLOP/s of this CPU (the denominator of CPU MFU)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    n = 20
    for _ in range(n):
        a @ b
    return 2 * 1024**3 * n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "gpu"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--answer-words", type=int, default=40)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "figures" / "train_step"))
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    precision = "bf16-mixed" if args.device.startswith("cuda") else "32-true"

    cfg = Config.from_name(args.preset).override({"llm.lora_r": 0, "connector.type": "mlp2x_gelu"})
    torch.manual_seed(0)
    ours = VisionLanguageModel.from_config(cfg)
    theirs = to_hf_llava(ours)  # copies of the same weights, before any step
    theirs.model.vision_tower.requires_grad_(False)
    stage = Stage(name="instruct", trainable={"connector": True, "llm": True}, lr=2e-5, warmup_ratio=0.0)
    module = VLMModule(ours, stage, total_steps=args.steps)
    batches = make_batches(ours, args.steps, args.batch, args.answer_words)
    visual = ours.vision_tower.num_tokens
    for b in batches:
        b["hf_ids"], b["hf_mask"], b["hf_labels"] = expand_image_tokens(b["input_ids"], b["attention_mask"],
                                                                        b["labels"], ours.image_token_id, visual)
    tokens_per_batch = statistics.mean(int(b["hf_mask"].sum()) for b in batches)
    llm_params = sum(p.numel() for p in ours.llm.parameters()) + sum(p.numel() for p in ours.connector.parameters())

    results = {}
    for name, mod in (("pathkit", module), ("transformers", HFLlavaModule(theirs, lr=2e-5))):
        times = fit(mod, batches, args.device, precision, args.steps)[args.warmup:]
        step = statistics.median(times)
        results[name] = {"step_s": step, "samples_per_s": args.batch / step, "tokens_per_s": tokens_per_batch / step,
                         "steps_timed": len(times)}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    if args.device.startswith("cuda"):
        peak = next((v for k, v in PEAK_BF16.items() if k in device_name), None)
        peak_note = "dense bf16 peak from the datasheet"
    else:
        peak = cpu_peak_flops(args.threads)
        peak_note = f"measured fp32 matmul rate, {args.threads} threads"
    for r in results.values():
        r["model_tflops_per_s"] = 6 * llm_params * r["tokens_per_s"] / 1e12
        r["mfu"] = 6 * llm_params * r["tokens_per_s"] / peak if peak else None
    ratio = results["transformers"]["step_s"] / results["pathkit"]["step_s"]
    report = {
        "benchmark": "train_step", "preset": args.preset, "device": args.device, "device_name": device_name,
        "precision": precision, "batch": args.batch, "tokens_per_batch": tokens_per_batch,
        "visual_tokens_per_image": visual, "llm_plus_projector_params": llm_params,
        "peak_flops": peak, "peak_note": peak_note, "results": results,
        "speedup_pathkit_vs_transformers": ratio,
        "machine": {**machine_record(), "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average": os.getloadavg()},
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("device_name", "precision", "speedup_pathkit_vs_transformers")}))
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.2f}%" if r["mfu"] is not None else "n/a"
        print(f"{name:>12}: {r['step_s'] * 1e3:8.1f} ms/step  {r['samples_per_s']:8.1f} samples/s  "
              f"{r['tokens_per_s']:9.0f} tokens/s  MFU {mfu}")


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "tokens_per_s", "tokens/s"), (axes[1], "mfu", "MFU")):
        values = [report["results"][n][key] or 0.0 for n in names]
        ax.bar(names, values, color=["tab:blue", "tab:orange"])
        ax.set_title(label)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"LLaVA training step, {report['preset']} preset, {report['device_name']} ({report['precision']}); "
                 f"pathkit {report['speedup_pathkit_vs_transformers']:.2f}x", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
