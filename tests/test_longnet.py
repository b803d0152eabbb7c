"""LongNet dilated attention and the Prov-GigaPath slide encoder, checked against independent references:
the loop reference written from the spec, dense SDPA, a torchscale-style implementation (benchmarks/), numbers
computed by hand, and a functional re-implementation of Prov-GigaPath's layer stack from its own key names."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathkit.config import LongNetConfig
from pathkit.io import PathkitError
from pathkit.models.longnet import (
    LongNetEncoder,
    dilated_attention,
    dilated_attention_reference,
    gigapath_to_pathkit,
    sincos_2d,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _bench():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_longnet.py"
    spec = importlib.util.spec_from_file_location("bench_longnet", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _qkv(B, N, H, D, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, N, H, D, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


# lengths and head counts that do and do not divide the segment lengths and dilations
CASES = [
    ((1, 7, 3, 4), (4, 8, 16), (1, 2, 4)),
    ((2, 13, 4, 8), (4, 8, 16), (1, 2, 4)),
    ((1, 33, 5, 4), (3, 5), (2, 3)),
    ((2, 20, 2, 6), (6,), (4,)),
    ((1, 50, 6, 8), (5, 7, 9), (1, 3, 2)),
    ((1, 41, 16, 4), (1024, 5792, 32768, 185363, 1048576), (1, 2, 4, 8, 16)),  # Prov-GigaPath's branches
    ((2, 64, 4, 8), (16, 32), (2, 4)),  # everything divides
]


@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize("shape,segments,dilations", CASES)
def test_fast_path_matches_loop_reference(shape, segments, dilations, mask_padding):
    q, k, v = _qkv(*shape)
    fast = dilated_attention(q, k, v, segments, dilations, mask_padding)
    ref = dilated_attention_reference(q, k, v, segments, dilations, mask_padding)
    assert fast.shape == q.shape
    assert (fast - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mask_padding", [False, True])
def test_portable_lse_path_matches_reference(monkeypatch, mask_padding):
    # public SDPA + chunked log-sum-exp: what runs where no fused kernel returns the LSE
    monkeypatch.setenv("PATHKIT_LSE_BACKEND", "portable")
    q, k, v = _qkv(2, 29, 5, 4, grad=True)
    segments, dilations = (4, 9, 64), (1, 2, 4)
    fast = dilated_attention(q, k, v, segments, dilations, mask_padding)
    ref = dilated_attention_reference(q, k, v, segments, dilations, mask_padding)
    assert (fast - ref).abs().max().item() <= 1e-5
    ga = torch.autograd.grad(fast.sum(), (q, k, v))
    gb = torch.autograd.grad(ref.sum(), (q, k, v))
    assert max((a - b).abs().max().item() for a, b in zip(ga, gb)) <= 1e-5


def test_cached_indices_from_inference_mode_still_train():
    q, k, v = _qkv(1, 19, 3, 4)
    with torch.inference_mode():
        dilated_attention(q, k, v, [5, 19], [1, 2])  # fills the index cache inside inference mode
    q.requires_grad_(True)
    dilated_attention(q, k, v, [5, 19], [1, 2]).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_one_dense_branch_is_dense_sdpa():
    q, k, v = _qkv(2, 37, 4, 8)
    out = dilated_attention(q, k, v, [1000], [1])
    dense = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    assert (out - dense).abs().max().item() <= 1e-5


@pytest.mark.parametrize("heads", [5, 4])  # 4: dilated branches gather straight into a zero buffer
def test_gradients_match_reference_autograd(heads):
    q, k, v = _qkv(2, 23, heads, 4, grad=True)
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    segments, dilations = (4, 8, 64), (1, 2, 4)
    upstream = torch.randn(2, 23, heads, 4, generator=torch.Generator().manual_seed(1))
    fast = torch.autograd.grad(dilated_attention(q, k, v, segments, dilations), (q, k, v), upstream)
    ref = torch.autograd.grad(dilated_attention_reference(qr, kr, vr, segments, dilations), (qr, kr, vr),
                              upstream.double())
    for a, b in zip(fast, ref):
        assert a.abs().sum() > 0
        assert (a.double() - b).abs().max().item() <= 1e-5


def test_padded_zero_keys_counted_vs_masked_by_hand():
    # N=3, one head of width 1, two branches: (w=3, r=1) covers all three tokens; (w=2, r=1) has segments
    # [0, 1] and [2, pad]. Token 2 in the second branch sees k2 and a zero key (score 0, value 0).
    q = torch.tensor([0.5, -1.0, 1.0]).view(1, 3, 1, 1)
    k = torch.tensor([1.0, 2.0, 1.5]).view(1, 3, 1, 1)
    v = torch.tensor([2.0, -1.0, 3.0]).view(1, 3, 1, 1)
    a = 1.0 * 1.5  # q2 . k2 (scale 1/sqrt(1) = 1)
    s_full = np.array([1.0 * 1.0, 1.0 * 2.0, a])  # token 2 against all keys
    lse_full = np.log(np.exp(s_full).sum())
    o_full = (np.exp(s_full) * np.array([2.0, -1.0, 3.0])).sum() / np.exp(s_full).sum()

    lse_incl = np.log(np.exp(a) + 1.0)  # the zero key adds exp(0)
    o_incl = 3.0 * np.exp(a) / (np.exp(a) + 1.0)
    w_full, w_incl = np.exp(lse_full), np.exp(lse_incl)
    expected_incl = (w_full * o_full + w_incl * o_incl) / (w_full + w_incl)

    lse_mask, o_mask = a, 3.0  # only k2 left
    w_mask = np.exp(lse_mask)
    expected_mask = (w_full * o_full + w_mask * o_mask) / (w_full + w_mask)

    for fn in (dilated_attention, dilated_attention_reference):
        incl = fn(q, k, v, [3, 2], [1, 1], mask_padding=False)[0, 2, 0, 0].item()
        mask = fn(q, k, v, [3, 2], [1, 1], mask_padding=True)[0, 2, 0, 0].item()
        assert incl == pytest.approx(expected_incl, abs=1e-6)
        assert mask == pytest.approx(expected_mask, abs=1e-6)
        assert abs(incl - mask) > 0.05


def test_head_groups_take_their_own_offsets():
    # One branch (w=N, r=2), two heads: head 0 sees even positions only, head 1 odd ones. Changing an odd
    # position's key must leave head 0 untouched and change head 1.
    q, k, v = _qkv(1, 8, 2, 4)
    base = dilated_attention(q, k, v, [8], [2])
    k2 = k.clone()
    k2[0, 3] += 5.0
    moved = dilated_attention(q, k2, v, [8], [2])
    assert torch.equal(base[:, :, 0], moved[:, :, 0])
    assert (base[:, 1::2, 1] - moved[:, 1::2, 1]).abs().max() > 1e-3


def test_torchscale_style_agrees_and_its_shifted_scatter_is_not_reproduced():
    ts = _bench().torchscale_style_attention
    q, k, v = _qkv(2, 37, 6, 8, dtype=torch.float64)
    for segments, dilations in [((8, 16, 64), (1, 2, 4)), ((1024, 5792, 32768), (1, 2, 4))]:
        assert (dilated_attention(q, k, v, segments, dilations)
                - ts(q, k, v, segments, dilations)).abs().max() < 1e-12
    # Two segments of 5 with r=2: torchscale lays padded segments (length 6) end to end, so the second
    # segment's outputs land one position late. pathkit follows the spec (the loop reference) instead.
    q, k, v = _qkv(1, 10, 2, 4, dtype=torch.float64)
    ours = dilated_attention(q, k, v, [5], [2])
    assert (ours - dilated_attention_reference(q, k, v, [5], [2])).abs().max() < 1e-12
    assert (ours - ts(q, k, v, [5], [2])).abs().max() > 0.1


def test_bad_shapes_raise_one_line():
    q, k, v = _qkv(1, 8, 2, 4)
    with pytest.raises(ValueError, match="one segment length per dilation"):
        dilated_attention(q, k, v, [4, 8], [1])
    with pytest.raises(ValueError, match=r"\(B, N, H, Dh\)"):
        dilated_attention(q, k[:, :4], v, [4], [1])


# ------------------------------------------------------------------------------------------------- encoder

TINY = LongNetConfig(in_dim=12, dim=16, depth=2, heads=4, segment_lengths=(4, 8, 32), dilation_rates=(1, 2, 4))


def _slide(n=11, in_dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, n, in_dim, generator=g)
    coords = torch.stack([torch.randint(0, 20, (n,), generator=g), torch.randint(0, 20, (n,), generator=g)], -1)
    return feats, (coords * 256 + 17).unsqueeze(0).float()


def test_sincos_positions_match_mae_table_lookup():
    # Prov-GigaPath: a (G*G + 1, D) numpy table (MAE's get_2d_sincos_pos_embed, CLS row 0), looked up at
    # floor(x / 256) * G + floor(y / 256) + 1. Re-derived here in numpy.
    D, G = 16, 7

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=float) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(G, dtype=np.float32), np.arange(G, dtype=np.float32))
    table = np.concatenate([one_d(D // 2, gw), one_d(D // 2, gh)], axis=1)
    table = np.concatenate([np.zeros([1, D]), table]).astype(np.float32)
    coords = torch.tensor([[0, 0], [300, 10], [256 * 3 + 5, 256 * 6], [256 * 6, 255]], dtype=torch.float32)
    idx = (np.floor(coords.numpy() / 256.0) @ np.array([G, 1])).astype(int) + 1
    ours = sincos_2d(D, coords, tile_size=256, ngrids=G).numpy()
    np.testing.assert_allclose(ours, table[idx], atol=1e-6)


def test_encoder_shapes_and_positions_matter():
    enc = LongNetEncoder(TINY).eval()
    feats, coords = _slide()
    with torch.no_grad():
        tokens = enc(feats, coords)
        assert tokens.shape == (1, 12, 16)
        assert enc.slide_embedding(feats, coords).shape == (1, 16)
        torch.testing.assert_close(enc.slide_embedding(feats, coords), tokens[:, 0])
        moved = enc(feats, coords + 256.0 * 3)
    assert (tokens - moved).abs().max() > 1e-3
    layers = enc(feats, coords, all_layers=True)
    assert len(layers) == TINY.depth + 1
    torch.testing.assert_close(enc.norm(enc.final_norm(enc.encoder_states(feats, coords)[-1])), tokens)
    with pytest.raises(ValueError, match="in_dim=12"):
        enc(torch.zeros(1, 3, 5), torch.zeros(1, 3, 2))


GIGAPATH_NAMES = {  # pathkit module inside a layer -> Prov-GigaPath's (torchscale EncoderLayer) name
    "attn_norm": "self_attn_layer_norm",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.inner_norm": "self_attn.inner_attn_ln",
    "attn.out_proj": "self_attn.out_proj",
    "ffn_norm": "final_layer_norm",
    "ffn.fc1": "ffn.fc1",
    "ffn.inner_norm": "ffn.ffn_layernorm",
    "ffn.fc2": "ffn.fc2",
}


def _to_gigapath(state):
    """pathkit names -> Prov-GigaPath names, written out explicitly (independent of the loader's regexes)."""
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module == "tile_proj":
            key = f"patch_embed.proj.{leaf}"
        elif module == "final_norm":
            key = f"encoder.layer_norm.{leaf}"
        elif module.startswith("layers."):
            _, i, inner = module.split(".", 2)
            key = f"encoder.layers.{i}.{GIGAPATH_NAMES[inner]}.{leaf}"
        out[key] = value.clone()
    return out


def _gigapath_forward(sd, feats, coords, heads, segments, dilations, tile=256, ngrids=1000, all_layers=False):
    """Prov-GigaPath's LongNetViT forward (global_pool=False) from its own key names, functionally; with
    all_layers, its ``all_layer_embed=True`` list (torchscale's encoder_states: no encoder.layer_norm)."""
    D = sd["patch_embed.proj.weight"].shape[0]
    x = F.linear(feats, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"])
    x = x + sincos_2d(D, coords, tile, ngrids)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))

    def ln(t, name, eps=1e-5):
        return F.layer_norm(t, (t.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps)

    def lin(t, name):
        return F.linear(t, sd[name + ".weight"], sd[name + ".bias"])

    B, N, _ = x.shape
    states = [x]
    for i in range(depth):
        p = f"encoder.layers.{i}."
        h = ln(x, p + "self_attn_layer_norm")
        q, k, v = (lin(h, p + f"self_attn.{n}_proj").view(B, N, heads, D // heads) for n in "qkv")
        a = dilated_attention_reference(q, k, v, segments, dilations).reshape(B, N, D)
        x = x + lin(ln(a, p + "self_attn.inner_attn_ln"), p + "self_attn.out_proj")
        h = F.gelu(lin(ln(x, p + "final_layer_norm"), p + "ffn.fc1"))
        x = x + lin(ln(h, p + "ffn.ffn_layernorm"), p + "ffn.fc2")
        states.append(x)
    if all_layers:
        return [ln(s, "norm", eps=1e-6)[:, 0] for s in states]
    x = ln(x, "encoder.layer_norm")
    return ln(x, "norm", eps=1e-6)[:, 0]


def test_loads_prov_gigapath_state_dict_and_matches_its_layer_stack(tmp_path):
    source = LongNetEncoder(TINY)
    with torch.no_grad():  # make every norm non-trivial so a wrong mapping shows
        for name, p in source.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    giga = _to_gigapath(source.state_dict())
    assert "encoder.layers.1.self_attn.inner_attn_ln.weight" in giga and "patch_embed.proj.weight" in giga
    torch.save({"model": giga}, tmp_path / "slide_encoder.pth")

    loaded = LongNetEncoder.from_pretrained(tmp_path / "slide_encoder.pth", cfg=TINY).eval()
    from_dict = LongNetEncoder.from_pretrained(giga, cfg=TINY).eval()
    feats, coords = _slide(n=13)
    with torch.no_grad():
        expected = _gigapath_forward(giga, feats, coords, 4, TINY.segment_lengths, TINY.dilation_rates)
        for model in (loaded, from_dict):
            assert model.cfg.depth == 2 and model.cfg.in_dim == 12 and model.cfg.mlp_ratio == 4.0
            torch.testing.assert_close(model.slide_embedding(feats, coords), expected, atol=1e-5, rtol=1e-5)
        every = _gigapath_forward(giga, feats, coords, 4, TINY.segment_lengths, TINY.dilation_rates,
                                  all_layers=True)
        ours = loaded.slide_embedding(feats, coords, all_layers=True)
        assert len(ours) == len(every) == TINY.depth + 1
        for a, b in zip(ours, every):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert (ours[-1] - expected).abs().max() > 1e-4  # the pipeline's last_layer_embed skips layer_norm

    broken = dict(giga)
    broken.pop("encoder.layers.0.ffn.fc2.weight")
    with pytest.raises(PathkitError, match="missing"):
        LongNetEncoder.from_pretrained(broken, cfg=TINY)
    assert set(gigapath_to_pathkit(giga)) == set(source.state_dict())


def test_pathkit_checkpoint_round_trip_and_global_pool(tmp_path):
    enc = LongNetEncoder(TINY).eval()
    enc.save_pretrained(tmp_path / "ln")
    back = LongNetEncoder.from_pretrained(tmp_path / "ln").eval()
    assert back.cfg == enc.cfg
    feats, coords = _slide()
    with torch.no_grad():
        assert torch.equal(enc(feats, coords), back(feats, coords))
        pooled = LongNetEncoder.from_pretrained(tmp_path / "ln", global_pool=True).eval()
        x = pooled.final_norm(pooled.layers[1](pooled.layers[0](pooled.embed(feats, coords))))
        torch.testing.assert_close(pooled.slide_embedding(feats, coords), pooled.norm(x[:, 1:].mean(1)))
    with pytest.raises(PathkitError, match="no model.safetensors"):
        LongNetEncoder.from_pretrained(tmp_path)


def test_gradient_checkpointing_gives_the_same_gradients():
    feats, coords = _slide()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = LongNetEncoder(TINY.replace(gradient_checkpointing=ckpt)).train()
        enc(feats, coords).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_prov_gigapath_geometry_defaults():
    cfg = LongNetConfig()
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.in_dim) == (768, 12, 16, 1536)
    # get_optimal_segment_length(262144, 256): 5 log-spaced powers of two from 1024 to 1024**2
    lengths = np.power(2, np.linspace(np.log2(1024), int(np.log2((262144 // 256) ** 2)), 5)).astype(int)
    assert tuple(int(x) for x in lengths) == cfg.segment_lengths
    assert math.prod(cfg.dilation_rates) == 1024


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_kernels_match_reference(dtype):
    q, k, v = _qkv(2, 301, 16, 48, dtype=torch.float64)
    segments, dilations = (64, 128, 1024, 185363), (1, 2, 4, 8)
    ref = dilated_attention_reference(q, k, v, segments, dilations)
    qc, kc, vc = (x.to("cuda", dtype).requires_grad_() for x in (q, k, v))
    out = dilated_attention(qc, kc, vc, segments, dilations)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (out.double().cpu() - ref).abs().max().item() <= tol
    out.float().pow(2).sum().backward()
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in (qc, kc, vc))
    ts = _bench().torchscale_style_attention
    with torch.no_grad():
        assert (ts(qc, kc, vc, segments, dilations).float() - out.float()).abs().max().item() <= tol


@pytest.mark.gpu
def test_cuda_encoder_bf16_autocast_matches_fp32():
    enc = LongNetEncoder(TINY).cuda().eval()
    feats, coords = _slide(n=40)
    feats, coords = feats.cuda(), coords.cuda()
    with torch.no_grad():
        full = enc.slide_embedding(feats, coords)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = enc.slide_embedding(feats, coords)
    assert (full - half.float()).abs().max().item() < 0.1
