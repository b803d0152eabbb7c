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

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pathkit.models.longnet import attention_with_lse  # noqa: E402

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
