"""Connectors: how visual tokens become language-model input embeddings.

``linear``           LLaVA-1.0 / LLaVA-Med v1.0: one Linear(D -> H).
``mlp2x_gelu``       LLaVA-1.5: Linear(D -> H), GELU, Linear(H -> H); ``mlpNx_gelu`` (regex ``mlp(\\d+)x_gelu``)
                     stacks N linear layers.
``identity``         no projection (D must equal H).
``pool``             WSI-LLaVA: adaptive average pooling of a slide's tokens to a fixed count (576 there), then
                     ``mlp2x_gelu``.
``scale_invariant``  PA-LLaVA's ``qformer_mlp``: native-resolution tiles on a grid chosen from the image's aspect
                     (LLaVA-1.6's ``select_best_resolution`` over PA-LLaVA's candidate grids) plus a global view;
                     a query transformer whose queries are the global view's tokens cross-attends over all tile
                     tokens (padded tiles masked); residual + LayerNorm + Linear. The number of output tokens is
                     fixed whatever the image size.

``tile_image`` (the tiling the collator runs on each image) lives here too, beside the connector that needs it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pathkit.io import PathkitError

# PA-LLaVA's candidate grids (cols, rows) of tiles; every grid has 4 to 8 tiles.
PA_LLAVA_GRIDS: tuple[tuple[int, int], ...] = (
    (1, 4), (2, 2), (4, 1), (1, 5), (5, 1), (1, 6), (2, 3), (3, 2), (6, 1), (1, 7), (7, 1), (1, 8), (2, 4),
    (4, 2), (8, 1),
)


# --------------------------------------------------------------------------------------------------- tiling


def select_best_resolution(original_size: tuple[int, int],
                           possible_resolutions: list[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-1.6: the (width, height) that keeps the most image pixels, then wastes the fewest canvas pixels."""
    original_width, original_height = original_size
    best_fit = None
    max_effective_resolution = 0
    min_wasted_resolution = float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective_resolution = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted_resolution = (width * height) - effective_resolution
        if effective_resolution > max_effective_resolution or (
                effective_resolution == max_effective_resolution and wasted_resolution < min_wasted_resolution):
            max_effective_resolution = effective_resolution
            min_wasted_resolution = wasted_resolution
            best_fit = (width, height)
    assert best_fit is not None
    return best_fit


def candidate_grids(max_tiles: int, grids: tuple[tuple[int, int], ...] = PA_LLAVA_GRIDS
                    ) -> list[tuple[int, int]]:
    """PA-LLaVA's grids with at most ``max_tiles`` tiles; falls back to every grid up to ``max_tiles``."""
    chosen = [g for g in grids if g[0] * g[1] <= max_tiles]
    if not chosen:
        chosen = [(c, r) for r in range(1, max_tiles + 1) for c in range(1, max_tiles + 1) if c * r <= max_tiles]
    return chosen


def _to_pil(image: Any):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise PathkitError(f"image: expected an RGB uint8 array (H, W, 3), got {array.dtype} {array.shape}")
    return Image.fromarray(array[..., :3])


def tile_image(image: Any, tile_size: int, grids: list[tuple[int, int]] | None = None, max_tiles: int = 8):
    """Cut an image into native-resolution tiles on the best grid, plus one global view (PA-LLaVA / LLaVA-1.6).

    The image is resized with its aspect kept to fit the chosen canvas (cols*tile, rows*tile), pasted in the
    centre of a black canvas, and cut into tiles row by row. The global view is the whole image resized to
    tile x tile.

    Args:
        image: PIL image or uint8 array (H, W, 3).
        tile_size: tile edge in pixels (the encoder's input size; 224 in PA-LLaVA).
        grids: candidate (cols, rows) grids; default PA-LLaVA's, limited to ``max_tiles``.

    Returns:
        ``(views, grid)``: ``views`` a list of PIL images, global view first then the tiles; ``grid`` (cols, rows).
    """
    pil = _to_pil(image)
    grids = list(grids) if grids is not None else candidate_grids(max_tiles)
    resolutions = [(c * tile_size, r * tile_size) for c, r in grids]
    width, height = select_best_resolution(pil.size, resolutions)
    grid = grids[resolutions.index((width, height))]
    scale = min(width / pil.width, height / pil.height)
    new_w, new_h = max(1, int(round(pil.width * scale))), max(1, int(round(pil.height * scale)))
    new_w, new_h = min(new_w, width), min(new_h, height)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(pil.resize((new_w, new_h), Image.BICUBIC), ((width - new_w) // 2, (height - new_h) // 2))
    tiles = [canvas.crop((x, y, x + tile_size, y + tile_size))
             for y in range(0, height, tile_size) for x in range(0, width, tile_size)]
    global_view = pil.resize((tile_size, tile_size), Image.BICUBIC)
    return [global_view] + tiles, grid


# --------------------------------------------------------------------------------------------------- projectors


class MLPProjector(nn.Sequential):
    """LLaVA's ``mlpNx_gelu``: N linear layers with GELU between them (N=1 is ``linear``)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2):
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        super().__init__(*layers)
        self.num_tokens = None  # keeps the token count of its input


class IdentityProjector(nn.Module):
    """LLaVA's ``identity`` projector."""

    num_tokens = None

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        if in_dim != out_dim:
            raise PathkitError(f"connector.type='identity': vision dim {in_dim} != LLM hidden size {out_dim}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TokenPool(nn.Module):
    """WSI-LLaVA's pooling: adaptive average pooling over the token axis to ``num_tokens``, then a projector."""

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int, depth: int = 2):
        super().__init__()
        self.num_tokens = num_tokens
        self.projector = MLPProjector(in_dim, out_dim, depth)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, min(N, num_tokens), D)
        count = min(self.num_tokens, tokens.shape[1])
        return F.adaptive_avg_pool1d(tokens.transpose(1, 2), count).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, num_tokens, H)
        return self.projector(self.pool(tokens))


class QueryLayer(nn.Module):
    """One Q-Former layer of PA-LLaVA (BERT post-LN): self-attention over the queries, then cross-attention to
    the tile tokens; the feed-forward block is removed, as PA-LLaVA removes it."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_norm = nn.LayerNorm(dim, eps=1e-12)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        # queries (B, Q, D); keys (B, K, D); key_padding (B, K) True where a key is padding
        x = self.self_norm(queries + self.self_attn(queries, queries, queries, need_weights=False)[0])
        attended = self.cross_attn(x, keys, keys, key_padding_mask=key_padding, need_weights=False)[0]
        return self.cross_norm(x + attended)


class ScaleInvariantConnector(nn.Module):
    """PA-LLaVA's scale-invariant connector (``qformer_mlp``): a fixed number of tokens for any image size.

    Queries are the global view's tokens (adaptively pooled to ``num_tokens`` when the encoder gives more);
    keys/values are all tile tokens of the image. Output: LayerNorm(Q-Former(queries) + queries) -> Linear.
    """

    needs_tiles = True

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int, layers: int = 2, heads: int | None = None,
                 projector_depth: int = 1):
        super().__init__()
        heads = heads or max(1, in_dim // 64)
        while in_dim % heads:
            heads -= 1
        self.num_tokens = num_tokens
        self.layers = nn.ModuleList(QueryLayer(in_dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(in_dim, eps=1e-12)
        self.projector = MLPProjector(in_dim, out_dim, projector_depth)

    def queries(self, global_tokens: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, Q, D)
        if global_tokens.shape[1] <= self.num_tokens:
            return global_tokens
        return F.adaptive_avg_pool1d(global_tokens.transpose(1, 2), self.num_tokens).transpose(1, 2)

    def forward(self, global_tokens: torch.Tensor, tile_tokens: torch.Tensor,
                tile_mask: torch.Tensor | None = None) -> torch.Tensor:
        """global_tokens (B, T, D); tile_tokens (B, K, D); tile_mask (B, K) True = a real tile token.
        Returns (B, Q, H) with Q = min(num_tokens, T)."""
        queries = self.queries(global_tokens)
        padding = None if tile_mask is None else ~tile_mask.bool()
        x = queries
        for layer in self.layers:
            x = layer(x, tile_tokens, padding)
        return self.projector(self.norm(x + queries))

    def forward_views(self, view_tokens: list[torch.Tensor]) -> torch.Tensor:
        """Per image a (1 + tiles, T, D) tensor of view tokens (global view first) -> (B, Q, H).

        Images with fewer tiles are padded to the batch's largest tile count and the padding is masked."""
        most = max(v.shape[0] - 1 for v in view_tokens)
        if most < 1:
            raise PathkitError("scale_invariant connector: every image needs a global view and at least one tile")
        tokens_per_view, dim = view_tokens[0].shape[1:]
        keys = view_tokens[0].new_zeros(len(view_tokens), most * tokens_per_view, dim)
        mask = torch.zeros(len(view_tokens), most * tokens_per_view, dtype=torch.bool, device=keys.device)
        for i, views in enumerate(view_tokens):
            n = (views.shape[0] - 1) * tokens_per_view
            keys[i, :n] = views[1:].reshape(n, dim)
            mask[i, :n] = True
        global_tokens = torch.stack([v[0] for v in view_tokens])
        return self(global_tokens, keys, mask)


# --------------------------------------------------------------------------------------------------- registry


def build_connector(cfg, in_dim: int, out_dim: int) -> nn.Module:
    """The connector named by ``cfg.type`` (a :class:`pathkit.config.ConnectorConfig`), mapping D -> H."""
    kind = cfg.type
    if kind == "linear":
        return MLPProjector(in_dim, out_dim, depth=1)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match:
        return MLPProjector(in_dim, out_dim, depth=int(match.group(1)))
    if kind == "identity":
        return IdentityProjector(in_dim, out_dim)
    if kind == "pool":
        return TokenPool(in_dim, out_dim, cfg.num_tokens)
    if kind == "scale_invariant":
        return ScaleInvariantConnector(in_dim, out_dim, cfg.num_tokens, layers=cfg.qformer_layers)
    raise PathkitError(f"connector.type={kind!r}: unknown (linear, mlpNx_gelu, identity, pool, scale_invariant)")
