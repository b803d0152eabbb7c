"""One GPU suite, for the day a GPU is lent: under 10 minutes on one H100/H200, every result in ``figures/``.

Steps, each with its own time budget inside a 570 s total (a step that runs out is stopped and recorded as such;
the suite goes on):

1. the GPU tests (``pytest -m gpu``: LongNet kernels on CUDA, ...);
2. LongNet dilated attention at 30k tokens against the torchscale-style baseline and the attention FLOP floor
   (``bench_longnet.py`` -> ``figures/longnet_cuda.json``);
3. tile extraction in tiles/s (``bench_wsi.py`` -> ``figures/bench_wsi_gpu.json``);
4. the VLM training step against transformers' LLaVA, with MFU (``bench_train.py`` -> ``figures/train_step_cuda.json``);
5. ``pathkit serve`` tokens/s at concurrency 1/8/32 against transformers' ``generate`` (``bench_serve.py`` ->
   ``figures/serve_cuda.json``).

Usage:  python benchmarks/gpu_suite.py [--only longnet,serve] [--budget 570]
Writes figures/gpu_suite.json: each step's command, exit status, seconds and output tail, and the device.
Exits 2 at once without a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# name -> (seconds, command); the budgets sum to 540 s, leaving the rest of 10 minutes for start-up
STEPS: dict[str, tuple[int, list[str]]] = {
    "gpu_tests": (90, [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/"]),
    "longnet": (120, [PY, "benchmarks/bench_longnet.py", "--device", "cuda", "--dtype", "bf16",
                      "--lengths", "8192", "30000", "--methods", "pathkit", "torchscale", "dense",
                      "--max-seconds-per-point", "20", "--out", "figures/longnet_cuda"]),
    "tiles": (120, [PY, "benchmarks/bench_wsi.py", "--device", "cuda", "--encoder", "vit-b16-random",
                    "--slides", "4", "--size", "16384", "--batch-size", "256", "--feature-workers", "8",
                    "--skip", "throughput", "iou", "--tag", "gpu"]),
    "train_step": (120, [PY, "benchmarks/bench_train.py", "--device", "cuda", "--preset", "gpu", "--batch", "32",
                         "--steps", "20", "--out", "figures/train_step_cuda"]),
    "serve": (90, [PY, "benchmarks/bench_serve.py", "--preset", "gpu", "--device", "cuda", "--requests", "64",
                   "--max-tokens", "64", "--out", "figures/serve_cuda"]),
}


def device_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {list(STEPS)}")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for the whole suite")
    args = parser.parse_args()
    name = device_name()
    if name is None:
        print("gpu_suite: no CUDA device; nothing run", file=sys.stderr)
        sys.exit(2)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        print(f"gpu_suite: unknown step(s) {unknown}; steps are {list(STEPS)}", file=sys.stderr)
        sys.exit(2)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    results = {}
    for step in chosen:
        budget, command = STEPS[step]
        left = args.budget - (time.monotonic() - start)
        if left < 20:
            results[step] = {"status": "not run: suite budget spent"}
            continue
        limit = min(budget, left)
        t0 = time.monotonic()
        print(f"== {step} (up to {limit:.0f} s): {' '.join(command[1:])}", flush=True)
        try:
            proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
            status, output = ("ok" if proc.returncode == 0 else f"exit {proc.returncode}"), proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            out = (err.stdout or b"") + (err.stderr or b"")
            status, output = f"stopped after {limit:.0f} s", out.decode(errors="replace") if isinstance(out, bytes) else out
        seconds = round(time.monotonic() - t0, 1)
        results[step] = {"status": status, "seconds": seconds, "command": command[1:], "output_tail": output[-3000:]}
        print(f"   {status} in {seconds} s", flush=True)
    record = {"device": name, "total_seconds": round(time.monotonic() - start, 1), "steps": results}
    out = REPO / "figures" / "gpu_suite.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"-> {out}")
    sys.exit(0 if all(r.get("status") == "ok" for r in results.values()) else 1)


if __name__ == "__main__":
    main()
