"""Benchmark: ``pathkit serve`` at concurrency 1, 8 and 32 against transformers' ``generate``, one request at a time.

One process: a VLM of the chosen preset (random weights) is exported to an HF LLaVA folder; the baseline loads
that folder with ``AutoProcessor`` + ``LlavaForConditionalGeneration`` and answers the requests one after
another (``generate``, greedy, KV cache); then ``pathkit serve``'s app runs under uvicorn on 127.0.0.1 in a
thread of this process and the official ``openai`` client sends the same requests from 1, 8 and 32 threads.
Both decode greedily to the same ``max_tokens`` with the same stop tokens, so they produce the same tokens (the
script checks the answers agree). Reported: completion tokens/s, requests/s, and the ratio to the baseline.

Usage:
    .venv/bin/python benchmarks/bench_serve.py                        # tiny preset, CPU
    python benchmarks/bench_serve.py --preset gpu --device cuda --requests 64
Writes figures/serve.json and figures/serve.png (``--out`` to change the stem).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.config import Config  # noqa: E402
from pathkit.models.hf_llava import export_hf_llava  # noqa: E402
from pathkit.models.vlm import VisionLanguageModel  # noqa: E402
from pathkit.provenance import machine_record  # noqa: E402
from pathkit.serve.engine import Engine, ServedModel  # noqa: E402
from pathkit.serve.server import ServerSettings, create_app  # noqa: E402

QUESTIONS = ("Describe the tissue in this image.", "Is there tumor in this image?", "What is the grade?",
             "Which cells are shown?")


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def baseline(folder: Path, requests: list, max_tokens: int, device: str) -> dict:
    """transformers: processor + generate per request, one at a time."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder).to(device).eval()
    answers, tokens = [], 0
    start = time.perf_counter()
    for image, question in requests:
        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": question}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        stops = set(model.generation_config.eos_token_id or [])
        n = next((i for i, t in enumerate(new) if t in stops), len(new))
        tokens += n
        answers.append(processor.decode(new[:n], skip_special_tokens=True).strip())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds,
            "requests_per_s": len(requests) / seconds, "answers": answers}


def served(url: str, requests: list, max_tokens: int, concurrency: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0, timeout=3600)

    def ask(item):
        image_url, question = item
        reply = client.chat.completions.create(
            model="bench", temperature=0, max_tokens=max_tokens,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                   {"type": "text", "text": question}]}])
        return reply.choices[0].message.content, reply.usage.completion_tokens

    items = [(_data_url(image), q) for image, q in requests]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(ask, items))
    seconds = time.perf_counter() - start
    tokens = sum(n for _, n in results)
    return {"seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds,
            "requests_per_s": len(requests) / seconds, "answers": [a for a, _ in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "gpu"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--out", default=str(REPO / "figures" / "serve"))
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.concurrency.split(",")]

    rng = np.random.default_rng(0)
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.from_name(args.preset)
        model = VisionLanguageModel.from_config(cfg).eval()
        size = model.vision_tower.image_size
        requests = [(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                     QUESTIONS[i % len(QUESTIONS)]) for i in range(args.requests)]
        folder = export_hf_llava(model, Path(tmp) / "hf")
        del model
        base = baseline(folder, requests, args.max_tokens, args.device)
        print(f"transformers generate, one at a time: {base['tokens_per_s']:.1f} tokens/s, "
              f"{base['requests_per_s']:.2f} requests/s", flush=True)

        import uvicorn

        engine = Engine(ServedModel(folder, device=args.device), max_batch=max(levels))
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(engine, ServerSettings(model_id="bench")),
                                               host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        runs = {}
        try:
            served(url, requests[:2], args.max_tokens, 1)  # warm-up
            for c in levels:
                runs[c] = served(url, requests, args.max_tokens, c)
                print(f"pathkit serve, concurrency {c}: {runs[c]['tokens_per_s']:.1f} tokens/s, "
                      f"{runs[c]['requests_per_s']:.2f} requests/s "
                      f"({runs[c]['tokens_per_s'] / base['tokens_per_s']:.2f}x transformers)", flush=True)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            engine.close()
    agree = {c: sum(a == b for a, b in zip(r["answers"], base["answers"])) / len(requests) for c, r in runs.items()}
    result = {
        "preset": args.preset, "device": args.device, "requests": args.requests, "max_tokens": args.max_tokens,
        "baseline": {k: v for k, v in base.items() if k != "answers"},
        "serve": {str(c): {k: v for k, v in r.items() if k != "answers"} for c, r in runs.items()},
        "tokens_per_s_ratio_over_baseline": {str(c): r["tokens_per_s"] / base["tokens_per_s"]
                                             for c, r in runs.items()},
        "answers_equal_to_baseline_fraction": {str(c): a for c, a in agree.items()},
        "batching": "static: requests arriving together share one KV-cached batch (up to --max-batch)",
        "machine": {**machine_record(), "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "load_average_1min": os.getloadavg()[0]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"tokens_per_s_ratio_over_baseline": result["tokens_per_s_ratio_over_baseline"],
                      "answers_equal_to_baseline_fraction": result["answers_equal_to_baseline_fraction"]}, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["transformers\n1 at a time"] + [f"serve\nconcurrency {c}" for c in runs]
    values = [base["tokens_per_s"]] + [r["tokens_per_s"] for r in runs.values()]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar(names, values, color=["tab:gray"] + ["tab:blue"] * len(runs))
    ax.set_ylabel("completion tokens / s")
    ax.set_title(f"{args.preset} VLM, {args.device}, {args.requests} requests x {args.max_tokens} tokens max")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
