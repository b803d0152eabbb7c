"""Benchmark: pathkit's dilated attention vs dense SDPA vs a torchscale-style implementation.

Measures forward and forward+backward time and peak memory against sequence length, with Prov-GigaPath's
settings (16 heads of 48 = width 768, w = [1024, 5792, 32768, 185363, 1048576], r = [1, 2, 4, 8, 16]).

- ``pathkit``: :func:`pathkit.models.longnet.dilated_attention` (strided-view gather, fused SDPA kernels that
  return the LSE, ``index_add`` scatter into one accumulator).
- ``torchscale``: the same math moved the way torchscale's ``DilatedAttention`` moves it (pad + rearrange +
  ``diagonal`` gather, ``diag_embed`` scatter into an r-times-larger tensor per branch, -1e8 fill for uncovered
  LSEs), written below with plain torch ops. It calls the same LSE-returning attention kernel as pathkit, so the
  comparison isolates the data movement (torchscale itself needs flash-attn, which pathkit never does).
- ``dense``: ``torch.nn.functional.scaled_dot_product_attention`` over the whole sequence (quadratic).
- ``kernels`` (default on CUDA): only the per-branch attention kernels on inputs gathered beforehand, the time
  no implementation of these semantics on these kernels can beat; ``kernel_time_fraction`` = kernels / pathkit.

The attention FLOP floor: per branch (w, r) and head, N/r queries each see min(w, N)/r keys, and attention costs
2 matmuls of 2 FLOPs per multiply-add: ``4 * N * min(w, N) * Dh / r**2`` per head per branch, summed over heads
and branches (padding excluded, so the floor is a lower bound). Backward costs 2.5x forward (FlashAttention-2
convention: 5 matmuls instead of 2), so forward+backward = 3.5x. ``floor_tflops`` = floor FLOPs / time; on a GPU
it is also given as a fraction of the device's dense bf16 peak and of the TFLOP/s dense SDPA itself reaches at the
longest length it fits (the practical roofline of the same kernels).

Usage:
    .venv/bin/python benchmarks/bench_longnet.py                       # CPU, fp32, 1k..16k (a few minutes)
    python benchmarks/bench_longnet.py --device cuda --dtype bf16      # GPU, 1k..100k, Prov-GigaPath settings
Writes figures/longnet.json and figures/longnet.png (``--out`` to change the stem).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.models.longnet import (  # noqa: E402
    BranchGeometry,
    _gather_branch,
    attention_with_lse,
    dilated_attention,
)
from pathkit.provenance import machine_record  # noqa: E402

GIGAPATH_SEGMENTS = (1024, 5792, 32768, 185363, 1048576)
GIGAPATH_DILATIONS = (1, 2, 4, 8, 16)


# ----------------------------------------------------------------------------------------------------------------
# torchscale-style baseline (the data movement of torchscale/component/dilated_attention.py, in plain torch)


def torchscale_style_attention(q, k, v, segment_lengths, dilation_rates):
    """Dilated attention moved the torchscale way; (B, N, H, D) in and out. Reproduces torchscale's shifted
    scatter when a branch spans several segments and w % r != 0 (pathkit does not)."""
    B, N, H, D = q.shape
    scale = D**-0.5
    outs, lses = [], []
    for sl, r in zip(segment_lengths, dilation_rates):
        qs, ks, vs = (_ts_gather(x, sl, r) for x in (q, k, v))  # (B*n, H, l, D)
        o, lse = attention_with_lse(qs, ks, vs, scale)
        o, lse = _ts_sparse_to_dense(o.transpose(1, 2), lse, r, H)  # (B*n, H, g, D), (B*n, H, g, 1)
        n = o.shape[0] // B
        o = o.reshape(B, n, H, -1, D).permute(0, 2, 1, 3, 4).reshape(B, H, -1, D)[:, :, :N]
        lse = lse.reshape(B, n, H, -1, 1).permute(0, 2, 1, 3, 4).reshape(B, H, -1, 1)[:, :, :N]
        outs.append(o)
        lses.append(lse)
    with torch.no_grad():
        top = torch.stack(lses).max(0).values
        ws = [torch.exp(lse - top) for lse in lses]
        total = torch.stack(ws).sum(0)
        ws = [w / total for w in ws]
    out = 0
    for o, w in zip(outs, ws):
        out = out + o * w.type_as(o)
    return out.transpose(1, 2)  # (B, N, H, D)


def _ts_gather(x, sl, r):
    B, N, H, D = x.shape
    sl = min(sl, N)
    x = F.pad(x, (0, 0, 0, 0, 0, (-N) % sl))
    x = x.reshape(-1, sl, H, D)  # '(b n) g h d'
    x = F.pad(x, (0, 0, 0, (-H) % r, 0, (-sl) % r))  # dense_to_sparse padding
    b, L, Hp, _ = x.shape
    x = x.reshape(b, L // r, r, r, Hp // r, D).permute(0, 1, 4, 5, 2, 3)  # 'b l h d r1 r2'
    x = torch.diagonal(x, dim1=4, dim2=5)  # 'b l h d r'
    x = x.permute(0, 1, 4, 2, 3).reshape(b, L // r, Hp, D)[:, :, :H]  # 'b l (r h) d'
    return x.transpose(1, 2).contiguous()


def _ts_sparse_to_dense(out, lse, r, H):
    b, rows, _, D = out.shape
    hp = (-H) % r
    if hp:
        out = F.pad(out, (0, 0, 0, hp))
        lse = F.pad(lse, (0, 0, 0, hp), value=-1e8)
    Hp = H + hp
    out = out.reshape(b, rows, r, Hp // r, D).permute(0, 1, 3, 4, 2)  # 'b l h d r'
    out = torch.diag_embed(out, dim1=4, dim2=5)  # r-times larger
    out = out.permute(0, 5, 2, 1, 4, 3).reshape(b, Hp, rows * r, D)  # 'b (r2 h) (l r1) d'
    lse = lse.reshape(b, r, Hp // r, rows).permute(0, 3, 2, 1)  # 'b l h r'
    lse = torch.diag_embed(lse, dim1=3, dim2=4)
    lse = lse.masked_fill(lse == 0, -1e8)
    lse = lse.permute(0, 4, 2, 1, 3).reshape(b, Hp, rows * r, 1)
    return out[:, :H], lse[:, :H]


# ----------------------------------------------------------------------------------------------------------------
# Measurement


def attention_floor_flops(n: int, heads: int, head_dim: int, segments, dilations) -> float:
    """Forward FLOPs the method cannot avoid: per branch and head 4 * N * min(w, N) * Dh / r**2."""
    return float(sum(4.0 * n * min(w, n) * head_dim * heads / r**2 for w, r in zip(segments, dilations)))


def dense_flops(n: int, heads: int, head_dim: int) -> float:
    return 4.0 * n * n * head_dim * heads


BACKWARD_FACTOR = 3.5  # forward + backward = 1 + 2.5 forward (FlashAttention-2 convention)

PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10": 125.0, "L4": 121.0}  # dense tensor-core bf16


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in device_name:
            return value
    return None


class CpuPeakMemory:
    """Peak resident memory above the starting point, sampled every millisecond from /proc/self/statm.

    The benchmark re-executes itself with MALLOC_MMAP_THRESHOLD_=65536 so that large tensors are unmapped when
    freed and the resident size follows live memory."""

    def __init__(self):
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def used(self) -> int:
        return self.peak - self.start


def kernels_only(q, k, v, segments, dilations):
    """Only the attention kernels of every branch, on inputs gathered beforehand (outside the timing when
    measured): the time no implementation of these semantics on these kernels can beat."""
    D = q.shape[-1]
    outs = []
    for qs, ks, vs in _gathered_cache(q, k, v, tuple(segments), tuple(dilations)):
        outs.append(attention_with_lse(qs, ks, vs, D**-0.5)[0])
    return outs


_GATHERED: dict = {}


def _gathered_cache(q, k, v, segments, dilations):
    key = (id(q), id(k), id(v), segments, dilations)
    if key not in _GATHERED:
        _GATHERED.clear()
        B, N, H, D = q.shape
        geoms = [BranchGeometry.of(N, H, w, r) for w, r in zip(segments, dilations)]
        with torch.no_grad():
            _GATHERED[key] = [
                tuple(_gather_branch(x, g).contiguous().requires_grad_(x.requires_grad)
                      for x in (q, k, v))
                for g in geoms]
    return _GATHERED[key]


METHODS = {
    "pathkit": lambda q, k, v, s, d: dilated_attention(q, k, v, s, d),
    "torchscale": torchscale_style_attention,
    "dense": lambda q, k, v, s, d: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2),
    "kernels": kernels_only,
}


def measure(method: str, n: int, mode: str, args) -> dict:
    """Time (median of repeats) and peak memory of one (method, length, mode) point; OOM is recorded."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    fn = METHODS[method]
    heads, dh = args.heads, args.head_dim
    gen = torch.Generator(device="cpu").manual_seed(0)
    row = {"method": method, "n": n, "mode": mode}
    try:
        q, k, v = (torch.randn(1, n, heads, dh, generator=gen).to(device, dtype).requires_grad_(mode == "fwd+bwd")
                   for _ in range(3))
        grad = torch.randn(1, n, heads, dh, generator=gen).to(device, dtype) if mode == "fwd+bwd" else None

        if method == "kernels":
            _gathered_cache(q, k, v, tuple(args.segments), tuple(args.dilations))  # gather outside the timing

        def step():
            if mode == "fwd":
                with torch.no_grad():
                    return fn(q, k, v, args.segments, args.dilations)
            out = fn(q, k, v, args.segments, args.dilations)
            if isinstance(out, list):  # kernels only: backward through each branch's kernel
                torch.autograd.backward(out, [torch.ones_like(o) for o in out])
            else:
                out.backward(grad)
            q.grad = k.grad = v.grad = None
            return out

        if device.type == "cuda" or n <= 4096:
            step()  # warm-up (kernel selection, allocator); a long CPU point is its own warm-up
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        times = []
        with CpuPeakMemory() if device.type == "cpu" else contextlib.nullcontext() as mem:
            for _ in range(args.repeats):
                _sync(device)
                t0 = time.perf_counter()
                step()
                _sync(device)
                times.append(time.perf_counter() - t0)
                if sum(times) > args.max_seconds_per_point:
                    break
        row["seconds"] = float(sorted(times)[len(times) // 2])
        row["repeats"] = len(times)
        row["peak_bytes"] = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else mem.used
    except (torch.OutOfMemoryError, MemoryError) as err:
        row.update(oom=True, error=type(err).__name__)
    except RuntimeError as err:
        if "out of memory" not in str(err).lower():
            raise
        row.update(oom=True, error=str(err).splitlines()[0][:200])
    finally:
        q = k = v = grad = None  # noqa: F841
        _GATHERED.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "seconds" in row:
        factor = BACKWARD_FACTOR if mode == "fwd+bwd" else 1.0
        floor = dense_flops(n, heads, dh) if method == "dense" else attention_floor_flops(
            n, heads, dh, args.segments, args.dilations)
        row["floor_flops"] = floor * factor
        row["floor_tflops_per_s"] = floor * factor / row["seconds"] / 1e12
    return row


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_agreement(args) -> float:
    """pathkit vs torchscale-style on the device at a small length (the shifted-scatter case cannot occur)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    gen = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(1, 3000, args.heads, args.head_dim, generator=gen).to(device, dtype) for _ in range(3))
    with torch.no_grad():
        a = dilated_attention(q, k, v, args.segments, args.dilations)
        b = torchscale_style_attention(q, k, v, args.segments, args.dilations)
    return float((a.float() - b.float()).abs().max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="default 1k..16k on CPU, 1k..100k (with 30k) on CUDA")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=48)
    parser.add_argument("--segments", type=int, nargs="+", default=list(GIGAPATH_SEGMENTS))
    parser.add_argument("--dilations", type=int, nargs="+", default=list(GIGAPATH_DILATIONS))
    parser.add_argument("--methods", nargs="+", default=None, choices=tuple(METHODS),
                        help="default: pathkit torchscale dense (+ kernels on CUDA)")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=("fwd", "fwd+bwd"))
    parser.add_argument("--dense-max", type=int, default=None,
                        help="longest length for dense SDPA (default 8192 on CPU, 100000 on CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per point (median)")
    parser.add_argument("--max-seconds-per-point", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(REPO / "figures" / "longnet"), help="output stem (.json, .png)")
    args = parser.parse_args(argv)
    if args.device == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # see CpuPeakMemory
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])], env=env)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.lengths = args.lengths or ([1024, 2048, 4096, 8192, 16384, 30000, 65536, 100000] if cuda
                                    else [1024, 2048, 4096, 8192, 16384])
    args.dense_max = args.dense_max or (100000 if cuda else 8192)
    args.repeats = args.repeats or (10 if cuda else 1)
    args.methods = args.methods or (["pathkit", "torchscale", "dense", "kernels"] if cuda
                                    else ["pathkit", "torchscale", "dense"])
    if args.threads:
        torch.set_num_threads(args.threads)
    if len(args.segments) != len(args.dilations):
        parser.error("--segments and --dilations need the same count")

    device_name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    machine = {**machine_record(), "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
               "device_name": device_name, "dtype": args.dtype,
               "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(json.dumps(machine))
    agreement = check_agreement(args)
    print(f"pathkit vs torchscale-style at N=3000: max abs difference {agreement:.2e}")

    rows = []
    for n in args.lengths:
        for mode in args.modes:
            for method in args.methods:
                if method == "dense" and n > args.dense_max:
                    continue
                row = measure(method, n, mode, args)
                rows.append(row)
                if row.get("oom"):
                    print(f"N={n:>7} {mode:<8} {method:<10} OOM")
                else:
                    print(f"N={n:>7} {mode:<8} {method:<10} {row['seconds'] * 1e3:10.2f} ms "
                          f"{row['peak_bytes'] / 2**20:10.1f} MiB {row['floor_tflops_per_s']:8.3f} TFLOP/s (floor)")
            by = {r["method"]: r for r in rows if r["n"] == n and r["mode"] == mode and "seconds" in r}
            if "pathkit" in by:
                ratios = {m: by[m]["seconds"] / by["pathkit"]["seconds"] for m in by if m != "pathkit"}
                print(f"N={n:>7} {mode:<8} speed-up of pathkit: "
                      + ", ".join(f"vs {m} {x:.2f}x" for m, x in ratios.items()))

    summary = summarise(rows, machine)
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    with open(out.with_suffix(".json"), "w") as fh:
        json.dump({"machine": machine, "settings": settings, "agreement_max_abs": agreement,
                   "floor": "per branch (w, r) and head: 4 * N * min(w, N) * Dh / r^2 FLOPs forward (dense: "
                            "4 * N^2 * Dh), x3.5 for forward+backward",
                   "results": rows, "summary": summary}, fh, indent=1)
    plot(rows, machine, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def summarise(rows, machine) -> dict:
    """Speed-ups, memory growth (bytes per token) and floor fractions, per mode."""
    ok = [r for r in rows if "seconds" in r]
    peak = peak_tflops(machine["device_name"]) if machine["device"] == "cuda" else None
    out = {"peak_bf16_tflops": peak}
    for mode in sorted({r["mode"] for r in ok}):
        rs = [r for r in ok if r["mode"] == mode]
        pk = {r["n"]: r for r in rs if r["method"] == "pathkit"}
        ts = {r["n"]: r for r in rs if r["method"] == "torchscale"}
        dense = {r["n"]: r for r in rs if r["method"] == "dense"}
        dense_best = max((r["floor_tflops_per_s"] for r in dense.values()), default=None)
        m = {"speedup_vs_torchscale": {n: ts[n]["seconds"] / pk[n]["seconds"] for n in pk if n in ts},
             "speedup_vs_dense": {n: dense[n]["seconds"] / pk[n]["seconds"] for n in pk if n in dense},
             "pathkit_bytes_per_token": {n: pk[n]["peak_bytes"] / n for n in pk},
             "torchscale_bytes_per_token": {n: ts[n]["peak_bytes"] / n for n in ts},
             "pathkit_floor_tflops": {n: pk[n]["floor_tflops_per_s"] for n in pk},
             "dense_sdpa_best_tflops": dense_best}
        kern = {r["n"]: r for r in rs if r["method"] == "kernels"}
        if kern:
            m["kernel_time_fraction"] = {n: kern[n]["seconds"] / pk[n]["seconds"] for n in pk if n in kern}
        if dense_best:
            m["pathkit_fraction_of_dense_sdpa_throughput"] = {n: pk[n]["floor_tflops_per_s"] / dense_best for n in pk}
        if peak:
            m["pathkit_fraction_of_peak"] = {n: pk[n]["floor_tflops_per_s"] / peak for n in pk}
        out[mode] = m
    return out


def plot(rows, machine, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "seconds" in r]
    modes = sorted({r["mode"] for r in ok}, key=lambda m: m != "fwd")
    fig, axes = plt.subplots(2, max(2, len(modes)), figsize=(6 * max(2, len(modes)), 8.5), squeeze=False)
    colors = {"pathkit": "tab:blue", "torchscale": "tab:orange", "dense": "tab:gray", "kernels": "tab:green"}
    for j, mode in enumerate(modes):
        for method in METHODS:
            rs = sorted((r for r in ok if r["mode"] == mode and r["method"] == method), key=lambda r: r["n"])
            if not rs:
                continue
            ns = [r["n"] for r in rs]
            axes[0, j].plot(ns, [r["seconds"] * 1e3 for r in rs], "o-", color=colors[method], label=method)
            axes[1, j].plot(ns, [r["peak_bytes"] / 2**20 for r in rs], "o-", color=colors[method], label=method)
            ooms = [r["n"] for r in rows if r["mode"] == mode and r["method"] == method and r.get("oom")]
            for n in ooms:
                axes[0, j].axvline(n, color=colors[method], ls=":", lw=1)
        axes[0, j].set_title(f"{mode}: time ({machine['device_name']}, {machine['dtype']})", fontsize=10)
        axes[0, j].set_ylabel("ms")
        axes[1, j].set_title(f"{mode}: peak memory above inputs", fontsize=10)
        axes[1, j].set_ylabel("MiB")
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("sequence length (tokens)")
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("LongNet dilated attention, Prov-GigaPath settings (16 heads x 48, r = 1..16): pathkit vs "
                 "torchscale-style vs dense SDPA", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
