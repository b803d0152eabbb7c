"""LongNet dilated attention and the Prov-GigaPath slide encoder, in the order data flows.

Dilated attention (LongNet, arXiv 2307.02486) as torchscale / Prov-GigaPath compute it, so that Prov-GigaPath
slide-encoder weights give the same embeddings. For every branch (segment length ``w``, dilation ``r``):

1. ``w = min(w, N)``; the sequence is zero-padded to a multiple of ``w`` and cut into segments;
   inside a segment, positions are zero-padded to a multiple of ``r``.
2. Heads are split into ``r`` contiguous groups (heads zero-padded to a multiple of ``r``); head group ``g``
   keeps the positions ``p`` with ``p % r == g`` inside each segment.
3. Dense, non-causal softmax attention (scale ``1/sqrt(d)``) over the kept positions of each segment, the
   zero-padded keys INCLUDED (torchscale does not mask them; each adds ``exp(0)`` to the softmax denominator).
   ``mask_padding=True`` masks them instead.
4. Outputs go back to their positions; a (position, head) pair a branch does not cover gets weight zero.
   The branches are merged per position and head with weights ``softmax_b(LSE_b)`` (the log-sum-exp of each
   branch's scores), computed without gradient. This equals one softmax over the concatenated keys of all
   branches (a key seen by two branches counts twice) with the merge weights held constant in backward.

One deliberate divergence: when a branch spans several segments and ``w % r != 0``, torchscale lays its padded
segments end to end when scattering back, so outputs land on shifted positions. That is a bug, not the method:
pathkit keeps every output at its own position. For Prov-GigaPath's settings
(``w = [1024, 5792, 32768, 185363, 1048576]``, ``r = [1, 2, 4, 8, 16]``) the two agree for fewer than
185,363 tokens, i.e. for every realistic slide.

Two implementations live here:

- :func:`dilated_attention_reference`: explicit loops over branches, segments and heads, written from the
  spec above. Slow; it is the test oracle.
- :func:`dilated_attention`: the fast path. Each branch's dilated sub-sequences are gathered into contiguous
  memory with strided views (``view`` + ``diagonal``, no index tensors, no ``diag_embed``; an r = 1 branch is a
  pure view; dilated branches copy only their 1/r share, straight into a zero buffer when padding is needed),
  folded into the batch dimension, and run through one fused attention kernel that also returns the LSE
  (PyTorch's flash kernels behind ``scaled_dot_product_attention``, on CPU and GPU; flash-attn is never
  needed). Outputs are scattered back with ``index_add_`` (cached indices) into ONE accumulator, so memory
  stays linear in the sequence length and no per-branch dense intermediate is built. If a fused kernel is
  unavailable it falls back to the public ``scaled_dot_product_attention`` plus a chunked log-sum-exp pass
  (memory ``O(chunk * w/r)``).

Then the encoder: :class:`LongNetEncoder` is Prov-GigaPath's ``LongNetViT`` slide encoder (tile features
``in_dim -> dim``, fixed 2-D sin-cos positions from tile coordinates on the 256-px grid, a CLS token, pre-LN
transformer layers with torchscale's sub-LayerNorms, dilated attention), loadable from a Prov-GigaPath
``slide_encoder.pth`` through :meth:`LongNetEncoder.from_pretrained`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pathkit.config import LongNetConfig
from pathkit.io import PathkitError, atomic_path, write_json

# Lazy imports: safetensors (the model stack, seconds to import). They load inside the functions that need
# them, not when this module is imported.

# --------------------------------------------------------------------------------------------------------------
# Branch geometry


@dataclass(frozen=True)
class BranchGeometry:
    """Where the tokens of one (segment length, dilation) branch go, for a sequence of ``n`` tokens."""

    n: int  # sequence length
    heads: int  # real heads
    w: int  # effective segment length, min(w, n)
    r: int  # dilation
    segments: int  # ceil(n / w)
    padded_w: int  # segment length padded to a multiple of r
    group_heads: int  # heads per group, ceil(heads / r)

    @classmethod
    def of(cls, n: int, heads: int, segment_length: int, dilation: int) -> BranchGeometry:
        w = min(int(segment_length), n)
        r = int(dilation)
        return cls(n=n, heads=heads, w=w, r=r, segments=-(-n // w), padded_w=-(-w // r) * r,
                   group_heads=-(-heads // r))

    @property
    def padded_heads(self) -> int:
        return self.group_heads * self.r

    @property
    def rows(self) -> int:
        """Positions each head keeps per segment (the attention length of the branch)."""
        return self.padded_w // self.r

    @property
    def simple(self) -> bool:
        """Segments can be laid end to end without per-segment padding (one segment, or ``w % r == 0``)."""
        return self.segments == 1 or self.padded_w == self.w

    @property
    def all_real(self) -> bool:
        """No zero padding anywhere in the branch's gathered rows."""
        return self.n % self.w == 0 and self.padded_w == self.w

    @property
    def flat_length(self) -> int:
        """Length of the zero-padded sequence the branch reads (a prefix of the shared padded tensor)."""
        return self.segments * (self.padded_w if self.simple else self.w)

    def positions(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(segments, padded_heads, rows) tensors: the sequence position each gathered row holds, and
        whether it is a real token (False for zero padding)."""
        seg = torch.arange(self.segments, device=device).view(-1, 1, 1)
        head = torch.arange(self.padded_heads, device=device).view(1, -1, 1)
        row = torch.arange(self.rows, device=device).view(1, 1, -1)
        in_segment = row * self.r + head // self.group_heads  # position inside the (padded) segment
        position = seg * self.w + in_segment
        real = (in_segment < self.w) & (position < self.n)
        return position, real


# --------------------------------------------------------------------------------------------------------------
# Reference implementation (test oracle)


def dilated_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    mask_padding: bool = False,
) -> torch.Tensor:
    """Dilated attention with explicit loops over branches, segments and heads: the spec, spelled out.

    Args:
        q, k, v: (B, N, H, Dh).
        segment_lengths, dilation_rates: one (w, r) pair per branch.
        mask_padding: mask the zero-padded keys instead of letting them into the softmax (torchscale lets them in).

    Returns:
        (B, N, H, Dh).
    """
    B, N, H, D = q.shape
    scale = D**-0.5
    branch_outputs, branch_lses = [], []
    for w, r in zip(segment_lengths, dilation_rates):
        w = min(w, N)
        segments = math.ceil(N / w)
        padded_w = math.ceil(w / r) * r  # segment padded to a multiple of r
        group_heads = math.ceil(H / r)  # heads padded to a multiple of r, then cut into r groups
        out = q.new_zeros(B, N, H, D)
        lse = q.new_full((B, N, H), float("-inf"))
        for seg in range(segments):
            start = seg * w
            for h in range(H):
                group = h // group_heads
                local = list(range(group, padded_w, r))  # positions inside the padded segment
                real = [i < w and start + i < N for i in local]
                idx = [start + i if ok else 0 for i, ok in zip(local, real)]
                keep = torch.tensor(real, device=q.device)
                qs = q[:, idx, h] * keep[None, :, None]  # padded rows are zeros
                ks = k[:, idx, h] * keep[None, :, None]
                vs = v[:, idx, h] * keep[None, :, None]
                scores = qs @ ks.transpose(1, 2) * scale  # (B, rows, rows)
                if mask_padding:
                    scores = scores.masked_fill(~keep[None, None, :], float("-inf"))
                for row, (pos, ok) in enumerate(zip(idx, real)):
                    if not ok:
                        continue
                    s = scores[:, row]
                    out[:, pos, h] = (torch.softmax(s, dim=-1).unsqueeze(1) @ vs).squeeze(1)
                    lse[:, pos, h] = torch.logsumexp(s, dim=-1)
        branch_outputs.append(out)
        branch_lses.append(lse)
    return merge_branches(branch_outputs, branch_lses)


def merge_branches(outputs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Sum branch outputs (B, N, H, D) weighted by softmax over branches of their LSEs (B, N, H), no gradient
    through the weights; a (position, head) no branch covers (LSE -inf everywhere) gets zero."""
    with torch.no_grad():
        weights = merge_weights(torch.stack(lses))
    return sum(o * wt.unsqueeze(-1).to(o.dtype) for o, wt in zip(outputs, weights))


def merge_weights(lses: torch.Tensor) -> torch.Tensor:
    """softmax over dim 0 of stacked LSEs (float32), treating -inf as 'not covered' and all -inf as zeros."""
    lses = lses.to(torch.promote_types(lses.dtype, torch.float32))
    top = lses.max(dim=0).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(lses - top)
    total = e.sum(dim=0)
    return e / torch.where(total > 0, total, torch.ones_like(total))


# --------------------------------------------------------------------------------------------------------------
# Fast path


def dilated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    mask_padding: bool = False,
) -> torch.Tensor:
    """Dilated attention (torchscale / Prov-GigaPath semantics) on fused SDPA kernels; see the module docstring.

    Args:
        q, k, v: (B, N, H, Dh), same shape; any float dtype (bf16/fp16 on GPU use the flash kernel).
        segment_lengths: segment length of each branch (clipped to N).
        dilation_rates: dilation of each branch.
        mask_padding: mask zero-padded keys (default False = include them, as torchscale does).

    Returns:
        (B, N, H, Dh) in q's dtype.
    """
    if q.shape != k.shape or q.shape != v.shape or q.dim() != 4:
        raise ValueError(f"q, k, v must share one (B, N, H, Dh) shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if len(segment_lengths) != len(dilation_rates) or not segment_lengths:
        raise ValueError(f"need one segment length per dilation rate; got {list(segment_lengths)} and "
                         f"{list(dilation_rates)}")
    B, N, H, D = q.shape
    scale = D**-0.5
    geoms = [BranchGeometry.of(N, H, w, r) for w, r in zip(segment_lengths, dilation_rates)]

    sparse_out, out_index, sparse_lse, lse_index = [], [], [], []
    for g in geoms:
        qs, ks, vs = (_gather_branch(x, g) for x in (q, k, v))  # (B*segments, padded_heads, rows, D)
        flat, flat_rows_first, real = _branch_index(g, q.device)  # (segments, padded_heads, rows) each
        mask = None
        if mask_padding and not g.all_real:
            # Row 0 of a group is kept so no row is fully masked; a group whose row 0 is padding holds
            # padding only, and its outputs are thrown away.
            keep = real.clone()
            keep[..., 0] = True
            mask = keep.unsqueeze(2).repeat(B, 1, 1, 1)  # (B*segments, padded_heads, 1, rows)
        out, lse = attention_with_lse(qs, ks, vs, scale, mask)
        # Read the kernel's output in its memory order (flash kernels write (batch, row, head, D)): no copy.
        if out.transpose(1, 2).is_contiguous():
            sparse_out.append(out.transpose(1, 2).reshape(B, -1, D))
            out_index.append(flat_rows_first)
        else:
            sparse_out.append(out.reshape(B, -1, D))
            out_index.append(flat.reshape(-1))
        sparse_lse.append(lse.reshape(B, -1))
        lse_index.append(flat.reshape(-1))

    # Merge weights need every branch's LSE at every (position, head): a small (B, N*H) map per branch.
    with torch.no_grad():
        dense_lse = torch.stack([
            lse.new_full((B, N * H + 1), float("-inf")).index_copy_(1, idx, lse)
            for idx, lse in zip(lse_index, sparse_lse)
        ])
        weights = merge_weights(dense_lse)  # (branches, B, N*H + 1)

    out = q.new_zeros(B, N * H + 1, D)
    for o, idx, wt in zip(sparse_out, out_index, weights):
        out.index_add_(1, idx, o * wt[:, idx].unsqueeze(-1).to(o.dtype))
    return out[:, : N * H].view(B, N, H, D)


def _pad(x: torch.Tensor, length: int, heads: int) -> torch.Tensor:
    """Zero-pad (B, N, H, D) to (B, length, heads, D); returns x itself when nothing is missing."""
    _, n, h, _ = x.shape
    if length == n and heads == h:
        return x
    return F.pad(x, (0, 0, 0, heads - h, 0, length - n))


@functools.lru_cache(maxsize=64)
def _branch_index(g: BranchGeometry, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter indices of a branch, cached per geometry and device (they are the same for every layer):
    flat ``position * heads + head`` per gathered row (``n * heads`` for padding: a dump slot) in
    (segment, head, row) order, the same flattened in (segment, row, head) order, and the real-token mask."""
    with torch.inference_mode(False):  # cached tensors must stay usable by autograd later
        position, real = g.positions(device)
        head = torch.arange(g.padded_heads, device=device).view(1, -1, 1)
        flat = torch.where(real & (head < g.heads), position * g.heads + head, g.n * g.heads)
        return flat, flat.transpose(1, 2).reshape(-1), real


def _gather_branch(x: torch.Tensor, g: BranchGeometry) -> torch.Tensor:
    """(B, N, H, D) -> the branch's gathered rows (B*segments, padded_heads, rows, D), zeros where padded.

    Dilated branches (r > 1) whose heads split evenly are gathered straight into a zero buffer, so the
    sequence is never copied whole just to add a few padding tokens; otherwise (r == 1, uneven heads, several
    segments with w % r != 0) the sequence is zero-padded first (no copy when it needs no padding).
    """
    if g.r > 1 and g.heads % g.r == 0 and g.simple and g.flat_length != g.n:
        return _gather_into_zeros(x, g)
    return _gather(_pad(x, g.flat_length, g.padded_heads), g)


def _gather_into_zeros(x: torch.Tensor, g: BranchGeometry) -> torch.Tensor:
    """Strided-view gather of the real tokens into a zero buffer: whole segments, then the whole rows of the
    last segment, then the last partial row (fewer than r tokens, one per head group)."""
    B, N, _, D = x.shape
    r, hg, rows = g.r, g.group_heads, g.rows
    buf = x.new_zeros(B, g.segments, r, hg, rows, D)  # (B, S, group, head, row, D)
    full = N // g.w if g.w % r == 0 else 0  # segments with no padding at all
    if full:
        src = x[:, : full * g.w].reshape(B, full, rows, r, r, hg, D).diagonal(dim1=3, dim2=4)
        buf[:, :full] = src.permute(0, 1, 5, 3, 2, 4)  # (B, full, r, hg, rows, D)
    start = full * g.w
    m, t = (N - start) // r, (N - start) % r  # whole rows and leftover tokens of the partial segment
    if m:
        src = x[:, start : start + m * r].reshape(B, m, r, r, hg, D).diagonal(dim1=2, dim2=3)
        buf[:, full, :, :, :m] = src.permute(0, 4, 2, 1, 3)  # (B, r, hg, m, D)
    if t:
        tail = x[:, start + m * r : N].reshape(B, t, r, hg, D)[:, :, :t]  # token i belongs to group i
        buf[:, full, :t, :, m] = tail.diagonal(dim1=1, dim2=2).permute(0, 3, 1, 2)  # (B, t, hg, D)
    return buf.view(B * g.segments, g.padded_heads, rows, D)


def _gather(x: torch.Tensor, g: BranchGeometry) -> torch.Tensor:
    """(B, L >= flat_length, heads >= padded_heads, D) -> (B*segments, padded_heads, rows, D) for SDPA.

    Head group j keeps positions j, j+r, j+2r, ... of each segment: a diagonal of the (position % r, group)
    plane, taken as a strided view; the one copy is the final reshape into contiguous rows.
    """
    B, _, _, D = x.shape
    if g.simple:
        x = x[:, : g.flat_length, : g.padded_heads]
    else:  # several segments and w % r != 0: pad every segment to padded_w
        x = x[:, : g.segments * g.w, : g.padded_heads].reshape(B, g.segments, g.w, g.padded_heads, D)
        x = F.pad(x, (0, 0, 0, 0, 0, g.padded_w - g.w))
    if g.r == 1:  # a segment is already contiguous rows: (B, S, w, H, D) -> (B*S, H, w, D) as a view
        return x.reshape(B * g.segments, g.padded_w, g.padded_heads, D).transpose(1, 2)
    x = x.reshape(B, g.segments, g.rows, g.r, g.r, g.group_heads, D)  # (.., row, pos % r, group, head, D)
    x = x.diagonal(dim1=3, dim2=4)  # (B, S, rows, group_heads, D, r): group j at positions = j mod r
    x = x.permute(0, 1, 5, 3, 2, 4)  # (B, S, r, group_heads, rows, D)
    return x.reshape(B * g.segments, g.padded_heads, g.rows, D)


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention on (B, H, L, D) returning (output (B, H, L, D), LSE (B, H, L) float32, no gradient).

    ``keep`` (bool, broadcastable to (B, H, L, L)) marks keys that may be attended. Uses the fused kernels
    behind ``scaled_dot_product_attention`` that also return the LSE: CPU flash; on CUDA flash (fp16/bf16) or
    memory-efficient, or cuDNN when ``PATHKIT_LSE_BACKEND=cudnn``. Whatever a kernel refuses (shape, dtype,
    build) goes to the portable path: public ``scaled_dot_product_attention`` plus a chunked log-sum-exp pass
    (``PATHKIT_LSE_BACKEND=portable`` forces it).
    """
    backend = os.environ.get("PATHKIT_LSE_BACKEND", "auto")
    for kernel in _lse_kernels(q, keep, backend):
        try:
            out, lse = kernel(q, k, v, scale, keep)
            return out, lse.detach()
        except (RuntimeError, NotImplementedError):
            continue  # this kernel does not take these inputs: try the next one
    mask = None if keep is None else keep.expand(q.shape[0], q.shape[1], 1, k.shape[-2])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out, _chunked_lse(q, k, scale, mask)


def _lse_kernels(q: torch.Tensor, keep: torch.Tensor | None, backend: str) -> list:
    if backend == "portable":
        return []
    if q.device.type == "cpu":
        return [_cpu_flash] if q.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16) else []
    if q.device.type != "cuda" or keep is not None:
        return []  # masks on CUDA (mask_padding=True): the portable path
    kernels = []
    if backend == "cudnn":
        kernels.append(_cuda_cudnn)
    if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256:
        kernels.append(_cuda_flash)
    kernels.append(_cuda_efficient)
    return kernels


def _cpu_flash(q, k, v, scale, keep):
    bias = None if keep is None else _bias(keep, q.dtype)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias,
                                                                        scale=scale)


def _cuda_flash(q, k, v, scale, keep):
    res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
    return res[0], res[1]


def _cuda_efficient(q, k, v, scale, keep):
    res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)
    return res[0], res[1][..., : q.shape[-2]]  # its LSE is padded to a multiple of 32 rows


def _cuda_cudnn(q, k, v, scale, keep):
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=scale)
    lse = res[1]
    return res[0], (lse[..., 0] if lse.dim() == 4 else lse)[..., : q.shape[-2]]


def _bias(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, float("-inf"))


@torch.no_grad()
def _chunked_lse(q: torch.Tensor, k: torch.Tensor, scale: float, keep: torch.Tensor | None,
                 budget: int = 1 << 26) -> torch.Tensor:
    """log-sum-exp of scale * q k^T over keys, in query chunks of at most ``budget`` scores (float32)."""
    B, H, L, _ = q.shape
    Lk = k.shape[-2]
    chunk = max(1, budget // max(1, B * H * Lk))
    parts = []
    for start in range(0, L, chunk):
        s = torch.matmul(q[:, :, start : start + chunk].float(), k.float().transpose(-1, -2)) * scale
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf"))
        parts.append(torch.logsumexp(s, dim=-1))
    return torch.cat(parts, dim=-1)


# --------------------------------------------------------------------------------------------------------------
# Positions: Prov-GigaPath's fixed 2-D sin-cos embedding on the tile grid


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE's 1-D sin-cos embedding: (M,) positions -> (M, dim) = [sin(pos * omega), cos(pos * omega)]."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def grid_positions(coords: torch.Tensor, tile_size: int, ngrids: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-0 pixel coordinates (..., 2) as (x, y) -> grid (row, col) as Prov-GigaPath indexes its table.

    Prov-GigaPath looks up ``floor(x / 256) * ngrids + floor(y / 256)`` in a row-major ngrids x ngrids table,
    so the row is x // tile and the column y // tile (a y beyond the grid wraps into the next row, kept here).
    """
    cell = torch.floor(coords.double() / tile_size).long()
    flat = cell[..., 0] * ngrids + cell[..., 1]
    return flat // ngrids, flat % ngrids


def sincos_2d(dim: int, coords: torch.Tensor, tile_size: int = 256, ngrids: int = 1000) -> torch.Tensor:
    """(..., 2) tile coordinates -> (..., dim) float32: [embed(col) | embed(row)], each dim/2 wide (MAE layout)."""
    row, col = grid_positions(coords, tile_size, ngrids)
    emb = torch.cat([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], dim=1)
    return emb.float().reshape(*coords.shape[:-1], dim)


# --------------------------------------------------------------------------------------------------------------
# Encoder


class DilatedSelfAttention(nn.Module):
    """torchscale's DilatedAttention layer: q/k/v projections, dilated attention, sub-LayerNorm, output proj."""

    def __init__(self, dim: int, heads: int, segment_lengths: Sequence[int], dilation_rates: Sequence[int],
                 mask_padding: bool = False, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.segment_lengths = tuple(segment_lengths)
        self.dilation_rates = tuple(dilation_rates)
        self.mask_padding = mask_padding
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.inner_norm = nn.LayerNorm(dim, eps=eps)  # torchscale's subln "inner_attn_ln"
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q_proj(x).view(B, N, self.heads, C // self.heads)  # (B, N, H, Dh)
        k = self.k_proj(x).view(B, N, self.heads, C // self.heads)
        v = self.v_proj(x).view(B, N, self.heads, C // self.heads)
        y = dilated_attention(q, k, v, self.segment_lengths, self.dilation_rates, self.mask_padding)
        return self.out_proj(self.inner_norm(y.reshape(B, N, C)))


class FeedForward(nn.Module):
    """fc1 -> GELU -> sub-LayerNorm -> fc2 (torchscale's FeedForwardNetwork with subln)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.inner_norm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h.float()).type_as(h)
        return self.dropout(self.fc2(self.inner_norm(h)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability p (training only)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class LongNetLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: LongNetConfig, drop_path: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.attn = DilatedSelfAttention(cfg.dim, cfg.heads, cfg.segment_lengths, cfg.dilation_rates,
                                         cfg.mask_padding)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.ffn = FeedForward(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.dropout(self.attn(self.attn_norm(x))))
        return x + self.drop_path(self.ffn(self.ffn_norm(x)))


class LongNetEncoder(nn.Module):
    """Prov-GigaPath's slide encoder: tile features + tile coordinates -> contextual tile tokens and a CLS.

    ``forward(features (B, N, in_dim), coords (B, N, 2) level-0 px) -> (B, N + 1, dim)``, CLS first, after the
    output LayerNorm (Prov-GigaPath's ``norm``). :meth:`slide_embedding` gives the (B, dim) slide vector
    (CLS, or the mean of tile tokens when ``cfg.global_pool``), as ``LongNetViT`` returns it.
    """

    def __init__(self, cfg: LongNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LongNetConfig()
        self.tile_proj = nn.Linear(cfg.in_dim, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist() if cfg.drop_path > 0 else [0.0] * cfg.depth
        self.layers = nn.ModuleList(LongNetLayer(cfg, p) for p in rates)
        self.final_norm = nn.LayerNorm(cfg.dim, eps=1e-5)  # torchscale encoder's output LayerNorm
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)  # LongNetViT's norm before pooling
        self.dropout = nn.Dropout(cfg.dropout)
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Prov-GigaPath's initialisation: xavier-uniform linears, zero biases, CLS ~ N(0, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    def embed(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """(B, N, in_dim), (B, N, 2) -> (B, N + 1, dim): projected tiles + positions, CLS prepended."""
        if features.dim() != 3 or coords.shape != features.shape[:2] + (2,):
            raise ValueError(f"features must be (B, N, in_dim) and coords (B, N, 2); got {tuple(features.shape)} "
                             f"and {tuple(coords.shape)}")
        if features.shape[-1] != self.cfg.in_dim:
            raise ValueError(f"features have {features.shape[-1]} channels, the encoder expects "
                             f"in_dim={self.cfg.in_dim}")
        x = self.tile_proj(features)
        pos = sincos_2d(self.cfg.dim, coords, self.cfg.tile_size, self.cfg.slide_ngrids)
        x = x + pos.to(device=x.device, dtype=x.dtype)
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)  # the CLS position embedding is zero
        return torch.cat([cls, x], dim=1)

    def encoder_states(self, features: torch.Tensor, coords: torch.Tensor) -> list[torch.Tensor]:
        """The embedding and every layer's output, (B, N + 1, dim) each, before any final norm (torchscale's
        ``encoder_states``). Layers are checkpointed when ``gradient_checkpointing`` is on and training."""
        x = self.dropout(self.embed(features, coords))
        states = [x]
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            states.append(x)
        return states

    def forward(self, features: torch.Tensor, coords: torch.Tensor, all_layers: bool = False):
        """Tokens (B, N + 1, dim): ``norm(final_norm(last layer))``, CLS first.

        With ``all_layers``: a list with the embedding and every layer's output, each through ``norm`` only, as
        Prov-GigaPath's ``all_layer_embed=True`` sees them (torchscale's encoder_states skip the encoder's final
        LayerNorm, so Prov-GigaPath's pipeline ``last_layer_embed`` differs from its ``all_layer_embed=False``
        output; both are reproduced here)."""
        states = self.encoder_states(features, coords)
        if all_layers:
            return [self.norm(s) for s in states]
        return self.norm(self.final_norm(states[-1]))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N + 1, dim) un-normed tokens -> (B, dim): ``norm`` of the CLS, or ``norm`` of the tile mean."""
        if self.cfg.global_pool:
            return self.norm(x[:, 1:].mean(dim=1))
        return self.norm(x)[:, 0]

    def slide_embedding(self, features: torch.Tensor, coords: torch.Tensor, all_layers: bool = False):
        """(B, dim) slide vector as ``LongNetViT.forward`` returns it (CLS, or the tile mean with
        ``global_pool``); with ``all_layers`` the list Prov-GigaPath's pipeline returns as ``layer_{i}_embed``
        (its ``last_layer_embed`` is the last element)."""
        states = self.encoder_states(features, coords)
        if all_layers:
            return [self.pool(s) for s in states]
        return self.pool(self.final_norm(states[-1]))

    # ---------------------------------------------------------------------------------------------- checkpoints

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write ``config.json`` (LongNetConfig) and ``model.safetensors`` into ``out_dir``."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(out_dir / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "pathkit": "LongNetEncoder"})
        write_json(out_dir / "config.json", {"model_type": "pathkit-longnet", **self.cfg.to_dict()})
        return out_dir

    @classmethod
    def from_pretrained(cls, source: str | Path | dict[str, torch.Tensor],
                        cfg: LongNetConfig | None = None, weights_only: bool = True,
                        **overrides: Any) -> LongNetEncoder:
        """Load a pathkit checkpoint folder, a Prov-GigaPath ``slide_encoder.pth``, or a state dict of either.

        Prov-GigaPath key names (``patch_embed.proj``, ``encoder.layers.i.self_attn.q_proj``, ...) are mapped to
        pathkit's (:func:`gigapath_to_pathkit`). Width, depth, input and FFN sizes are read from the tensors;
        heads and branches come from ``cfg`` (default: Prov-GigaPath's 16 heads and five branches).
        ``overrides`` replace config fields (e.g. ``global_pool=True``, ``gradient_checkpointing=True``).
        A ``.pth`` is read with ``torch.load(weights_only=True)``; pass ``weights_only=False`` only for a file
        you trust that also pickles other Python objects.
        """
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():
                cfg_path = path / "config.json"
                if cfg_path.is_file() and cfg is None:
                    data = json.loads(cfg_path.read_text())
                    data.pop("model_type", None)
                    cfg = LongNetConfig.from_dict(data)
                weights = [path / "model.safetensors", path / "slide_encoder.pth"]
                found = [p for p in weights if p.is_file()]
                if not found:
                    raise PathkitError(f"{path}: no model.safetensors or slide_encoder.pth in this folder")
                path = found[0]
            if not path.is_file():
                raise PathkitError(f"{path}: LongNet checkpoint not found")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                try:
                    state = torch.load(path, map_location="cpu", weights_only=weights_only)
                except pickle.UnpicklingError as err:
                    raise PathkitError(f"{path}: holds more than tensors ({str(err).splitlines()[0][:120]}); "
                                       "pass weights_only=False if you trust the file") from err
        else:
            state = source
        if "model" in state and isinstance(state["model"], dict):  # Prov-GigaPath wraps it as {"model": ...}
            state = state["model"]
        state = gigapath_to_pathkit(state)
        cfg = _config_from_state(state, cfg or LongNetConfig()).replace(**overrides)
        model = cls(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise PathkitError(f"LongNet checkpoint does not match: missing {missing[:4]}, "
                               f"unexpected {unexpected[:4]}")
        return model


_GIGAPATH_KEYS = [  # Prov-GigaPath (LongNetViT + torchscale encoder) -> pathkit
    (r"^patch_embed\.proj\.", "tile_proj."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.inner_attn_ln\.", r"layers.\1.attn.inner_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"layers.\1.attn."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"layers.\1.ffn_norm."),
    (r"^encoder\.layers\.(\d+)\.ffn\.ffn_layernorm\.", r"layers.\1.ffn.inner_norm."),
    (r"^encoder\.layers\.(\d+)\.ffn\.", r"layers.\1.ffn."),
    (r"^encoder\.layer_norm\.", "final_norm."),
]


def gigapath_to_pathkit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Prov-GigaPath slide-encoder keys to pathkit's; pathkit keys pass through unchanged.

    Drops ``pos_embed`` (a fixed buffer, recomputed from coordinates) and a ``module.`` prefix (DDP).
    """
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key == "pos_embed":
            continue
        for pattern, repl in _GIGAPATH_KEYS:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _config_from_state(state: dict[str, torch.Tensor], cfg: LongNetConfig) -> LongNetConfig:
    """Read in_dim, dim, depth and mlp_ratio from the tensors; keep heads/branches/etc. from cfg."""
    if "tile_proj.weight" not in state:
        raise PathkitError("LongNet checkpoint: missing 'tile_proj.weight' (or Prov-GigaPath's "
                           "'patch_embed.proj.weight')")
    dim, in_dim = state["tile_proj.weight"].shape
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))), default=-1)
    hidden = state["layers.0.ffn.fc1.weight"].shape[0] if depth else int(dim * cfg.mlp_ratio)
    heads = cfg.heads if dim % cfg.heads == 0 else math.gcd(dim, cfg.heads)
    return cfg.replace(in_dim=int(in_dim), dim=int(dim), depth=int(depth), heads=heads, mlp_ratio=hidden / dim)
