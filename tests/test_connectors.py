"""Connectors: grid selection against hand-computed cases, tiling, fixed token counts, masking, pooling."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from pathkit.config import ConnectorConfig
from pathkit.io import PathkitError
from pathkit.models.connectors import (
    PA_LLAVA_GRIDS,
    MLPProjector,
    ScaleInvariantConnector,
    TokenPool,
    build_connector,
    candidate_grids,
    select_best_resolution,
    tile_image,
)


def _image(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, (height, width, 3), dtype=np.uint8)


def test_grid_selection_hand_computed():
    grids = candidate_grids(8)
    assert grids == list(PA_LLAVA_GRIDS)
    res = [(c * 224, r * 224) for c, r in grids]
    # 1000 x 200 (5:1): (5,1) = 1120 x 224 holds all 200,000 pixels with 50,880 wasted; (6,1) wastes 101,056.
    assert select_best_resolution((1000, 200), res) == (1120, 224)
    assert select_best_resolution((200, 1000), res) == (224, 1120)
    # 500 x 500: no candidate holds it whole; (2,2) keeps 448*448 pixels with no waste.
    assert select_best_resolution((500, 500), res) == (448, 448)
    # 448 x 224: (2,2) and (4,1) tie on pixels and waste; the first candidate in the list wins, as in LLaVA-1.6.
    assert select_best_resolution((448, 224), res) == (448, 448)


def test_tile_image_pads_with_black_and_orders_tiles_row_major():
    # 300 x 100 with 64 px tiles: (4,2) = 256 x 128 keeps 256 x 85 px (more than any other grid),
    # pasted at y = (128 - 85) // 2 = 21 on black.
    views, grid = tile_image(_image(300, 100), 64)
    assert grid == (4, 2)
    assert len(views) == 1 + 8 and all(v.size == (64, 64) for v in views)
    top_left = np.asarray(views[1])
    assert (top_left[:21] == 0).all() and (top_left[21:] > 0).any()
    bottom_left = np.asarray(views[5])
    assert (bottom_left[106 - 64:] == 0).all()  # image rows end at 21 + 85 = 106 on the canvas
    assert np.asarray(views[0]).shape == (64, 64, 3)  # the global view: the whole image squashed to one tile


@pytest.mark.parametrize("size", [(64, 64), (300, 100), (100, 300), (640, 64), (130, 250), (1000, 900)])
def test_scale_invariant_output_count_is_fixed(size):
    torch.manual_seed(0)
    connector = ScaleInvariantConnector(in_dim=32, out_dim=48, num_tokens=16, layers=2).eval()
    views, _ = tile_image(_image(*size), 32)
    tokens = torch.randn(len(views), 64, 32)  # (views, T, D): stands in for the encoder's patch tokens
    out = connector.forward_views([tokens])
    assert out.shape == (1, 16, 48)
    assert 4 <= len(views) - 1 <= 8


def test_scale_invariant_masks_padded_tiles():
    torch.manual_seed(0)
    connector = ScaleInvariantConnector(in_dim=32, out_dim=48, num_tokens=64, layers=2).eval()
    few, many = torch.randn(1 + 4, 64, 32), torch.randn(1 + 8, 64, 32)
    alone = connector.forward_views([few])
    batched = connector.forward_views([few, many])
    assert alone.shape == (1, 64, 48)  # queries = all 64 global tokens when num_tokens >= T
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    # and the tiles matter: different tiles -> different output
    other = connector.forward_views([torch.cat([few[:1], torch.randn(4, 64, 32)])])
    assert (other - alone).abs().max() > 1e-3


def test_scale_invariant_residual_layernorm_projection_structure():
    connector = ScaleInvariantConnector(in_dim=32, out_dim=48, num_tokens=8, layers=3)
    assert len(connector.layers) == 3 and connector.norm.eps == 1e-12
    assert isinstance(connector.projector[0], nn.Linear) and len(connector.projector) == 1
    assert not any(isinstance(m, nn.GELU) for m in connector.layers.modules())  # no feed-forward blocks


def test_token_pool_fixed_count_and_average():
    pool = TokenPool(in_dim=4, out_dim=6, num_tokens=16)
    for n in (16, 100, 1001):
        assert pool(torch.randn(1, n, 4)).shape == (1, 16, 6)
    x = torch.randn(1, 32, 4)
    torch.testing.assert_close(pool.pool(x), x.view(1, 16, 2, 4).mean(2))
    assert pool(torch.randn(1, 5, 4)).shape == (1, 5, 6)  # fewer tokens than the target: kept as they are


def test_build_connector_registry():
    linear = build_connector(ConnectorConfig(type="linear"), 8, 16)
    assert isinstance(linear, MLPProjector) and len(linear) == 1
    mlp = build_connector(ConnectorConfig(type="mlp2x_gelu"), 8, 16)
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Linear] and mlp[0].in_features == 8
    deep = build_connector(SimpleNamespace(type="mlp3x_gelu"), 8, 16)
    assert sum(isinstance(m, nn.Linear) for m in deep) == 3
    assert build_connector(ConnectorConfig(type="identity"), 16, 16)(torch.ones(2, 3, 16)).shape == (2, 3, 16)
    with pytest.raises(PathkitError, match="identity"):
        build_connector(ConnectorConfig(type="identity"), 8, 16)
    with pytest.raises(PathkitError, match="unknown"):
        build_connector(SimpleNamespace(type="mlp_relu"), 8, 16)
    pool = build_connector(ConnectorConfig(type="pool", num_tokens=4), 8, 16)
    assert pool(torch.randn(1, 50, 8)).shape == (1, 4, 16)
    si = build_connector(ConnectorConfig(type="scale_invariant", num_tokens=4, qformer_layers=1), 64, 16)
    assert isinstance(si, ScaleInvariantConnector) and si.needs_tiles
