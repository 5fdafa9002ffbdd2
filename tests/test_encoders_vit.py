"""ViT-family encoders: ViT3D (M3D-CLIP / SegVol), HSENet 2E3, RefSAM3D adapter encoder.

Full-size models are built on the meta device (no memory, shapes only); behaviour is checked on
the tiny ``*_test`` variants; one real full-size forward runs on the published input size.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from LaMed.models.convert import load_converted
from LaMed.models.encoders import create_encoder, list_encoders
from LaMed.models.encoders.base import VisionEncoder
from LaMed.models.encoders.e2e3 import SliceEncoder2D, mask_ratio_schedule
from LaMed.models.encoders.layers import SelfAttention
from LaMed.models.encoders.vit3d import ViT3D

TINY_INPUT = (2, 1, 16, 64, 64)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_encoder(name, **kw)


def published_vit_layout(hidden=768, mlp=3072, layers=12, patch_dim=1024, tokens=2048, cls=True) -> dict:
    """Key -> shape of MONAI 1.3's ViT, written from BAAI-DCAI/M3D (arXiv 2404.00578)."""
    keys = {}
    if cls:
        keys["cls_token"] = (1, 1, hidden)
    keys["patch_embedding.position_embeddings"] = (1, tokens, hidden)
    keys["patch_embedding.patch_embeddings.1.weight"] = (hidden, patch_dim)
    keys["patch_embedding.patch_embeddings.1.bias"] = (hidden,)
    for i in range(layers):
        b = f"blocks.{i}."
        keys.update(
            {
                b + "norm1.weight": (hidden,),
                b + "norm1.bias": (hidden,),
                b + "attn.qkv.weight": (3 * hidden, hidden),
                b + "attn.out_proj.weight": (hidden, hidden),
                b + "attn.out_proj.bias": (hidden,),
                b + "norm2.weight": (hidden,),
                b + "norm2.bias": (hidden,),
                b + "mlp.linear1.weight": (mlp, hidden),
                b + "mlp.linear1.bias": (mlp,),
                b + "mlp.linear2.weight": (hidden, mlp),
                b + "mlp.linear2.bias": (hidden,),
            }
        )
    keys["norm.weight"] = (hidden,)
    keys["norm.bias"] = (hidden,)
    return keys


def hsenet_2e3_extra_layout(hidden=768, slice_dim=768) -> dict:
    """The 12 tensors HSENet's stage-2 tower adds (YanzhaoShi/HSENet, arXiv 2506.09634)."""
    keys = {}
    for name, fan_in in (("Wq", hidden), ("Wk", slice_dim), ("Wv", slice_dim), ("output_linear", hidden)):
        keys[f"slice_guided_attention.{name}.weight"] = (hidden, fan_in)
        keys[f"slice_guided_attention.{name}.bias"] = (hidden,)
    keys["slice_guided_attention.norm.weight"] = (hidden,)
    keys["slice_guided_attention.norm.bias"] = (hidden,)
    keys["patch_score_proj.weight"] = (1, hidden)
    keys["patch_score_proj.bias"] = (1,)
    return keys


def random_sd(layout: dict, device="cpu", seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in layout.items()}
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in layout.items()}


# ---- registry, parameter counts, shapes on the published input size -------------------------------
def test_variants_registered():
    names = set(list_encoders())
    assert {
        "vit3d_base",
        "vit3d_base_segvol",
        "vit3d_test",
        "vit3d_2e3_base",
        "vit3d_2e3_test",
        "sam3d_adapter_base",
        "sam3d_adapter_test",
    } <= names
    for n in ("vit3d_test", "vit3d_2e3_test", "sam3d_adapter_test"):
        assert isinstance(create_encoder(n), VisionEncoder)


def test_vit3d_parameter_counts_match_published():
    assert n_params(meta("vit3d_base")) == 87_389_184  # BAAI-DCAI/M3D, arXiv 2404.00578, with CLS
    assert n_params(meta("vit3d_base_segvol")) == 87_388_416  # without CLS
    assert len(meta("vit3d_base").state_dict()) == 138 and len(meta("vit3d_base_segvol").state_dict()) == 137


def test_e2e3_parameter_count():
    # ViT3D-B + Wq/Wk/Wv/output_linear (768x768 + 768 each) + LayerNorm(768) + Linear(768 -> 1).
    expected = 87_389_184 + 4 * (768 * 768 + 768) + 2 * 768 + (768 + 1)
    m = meta("vit3d_2e3_base")
    assert n_params(m) == expected == 89_753_857
    assert len(m.state_dict()) == 150  # "138 and 150" in HSENet's eval comments


def test_sam3d_parameter_count_by_hand():
    c, mlp, r, k, o = 768, 3072, 64, 3, 256
    backbone = (c * 1 * 4 * 16 * 16 + c) + 2048 * c  # conv patch embedding + position table
    block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * mlp + mlp) + (mlp * c + c)
    adapter = (c * r + r) + 2 * r + (r * 3 * r + 3 * r) + (r * r + r) + (r * k**3 + r) + (r * c + c)
    neck = c * o + 2 * o + o * o * 27 + 2 * o
    m = meta("sam3d_adapter_base")
    assert n_params(m) == backbone + 12 * (block + adapter) + neck
    assert sum(p.numel() for p in m.adapter_parameters()) == 12 * adapter


def test_shapes_on_published_input_meta():
    x = torch.empty(1, 1, 32, 256, 256, device="meta")
    vit = meta("vit3d_base")
    assert vit.grid_size == (8, 16, 16) and vit.num_tokens == 2049 and vit.hidden_size == 768
    assert vit(x).shape == (1, 2048, 768)  # LaMed tower: patch tokens of the last layer
    assert vit.forward_features(x).shape == (1, 2049, 768)
    assert [t.shape for t in vit.forward_intermediates(x, [3, -1])] == [(1, 768, 8, 16, 16)] * 2
    seg = meta("vit3d_base_segvol")
    assert seg.num_tokens == 2048 and seg.forward_features(x).shape == (1, 2048, 768)
    e23 = meta("vit3d_2e3_base")
    assert e23(x, slice_features=torch.empty(1, 32, 768, device="meta")).shape == (1, 2048, 768)
    sam = meta("sam3d_adapter_base")
    neck, stages = sam(x)
    assert neck.shape == (1, 256, 8, 16, 16) and sam.hidden_size == 256
    assert [s.shape for s in stages] == [(1, 768, 8, 16, 16)] * 4


def test_input_size_comes_from_config():
    m = create_encoder("vit3d_test", img_size=(8, 32, 48), patch_size=(2, 8, 16))
    assert m.grid_size == (4, 4, 3)
    assert m(torch.rand(1, 1, 8, 32, 48)).shape == (1, 48, 96)
    with pytest.raises(ValueError, match="img_size"):
        m(torch.rand(1, 1, 16, 64, 64))
    with pytest.raises(ValueError, match="not divisible"):
        create_encoder("vit3d_test", img_size=(10, 64, 64))
    with pytest.raises(TypeError, match="hiden_size"):
        create_encoder("vit3d_test", hiden_size=8)


# ---- published layout loads strictly ------------------------------------------------------------
def test_published_layout_loads_strict_full_size_meta():
    for name, layout in (
        ("vit3d_base", published_vit_layout()),
        ("vit3d_base_segvol", published_vit_layout(cls=False)),
        ("vit3d_2e3_base", {**published_vit_layout(), **hsenet_2e3_extra_layout()}),
    ):
        m = meta(name)
        own = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        assert own == layout, name
        assert load_converted(m, random_sd(layout, "meta"), strict=True).ok


def test_published_layout_values_land_in_the_right_parameters():
    m = create_encoder("vit3d_2e3_test")
    layout = {**published_vit_layout(96, 192, 2, 1024, 64), **hsenet_2e3_extra_layout(96, 48)}
    sd = random_sd(layout)
    m.load_state_dict(sd, strict=True)
    assert torch.equal(m.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
    assert torch.equal(m.patch_embedding.patch_embeddings[1].weight, sd["patch_embedding.patch_embeddings.1.weight"])
    assert torch.equal(m.slice_guided_attention.Wk.weight, sd["slice_guided_attention.Wk.weight"])
    assert m.blocks[0].attn.qkv.bias is None  # published towers: no qkv bias


# ---- correctness against MONAI and explicit attention ----------------------------------------------
def test_vit3d_equals_monai_vit_with_mapped_weights():
    from monai.networks.nets import ViT as MonaiViT

    torch.manual_seed(0)
    geo = dict(img_size=(16, 64, 64), patch_size=(4, 16, 16), hidden_size=96, mlp_dim=192, num_layers=2, num_heads=4)
    ours = create_encoder("vit3d_test", cls_token=False).eval()
    ref = MonaiViT(in_channels=1, proj_type="perceptron", classification=False, **geo).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(".norm_cross_attn." in k for k in missing)  # MONAI 1.6 extra, unused
    x = torch.rand(*TINY_INPUT)
    with torch.no_grad():
        ref_out, ref_hidden = ref(x)
        out, hidden = ours.forward_hidden_states(x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(hidden, ref_hidden):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    # With CLS: MONAI's block outputs (its head replaces the final output) must match ours.
    ours_cls = create_encoder("vit3d_test").eval()
    ref_cls = MonaiViT(in_channels=1, proj_type="perceptron", classification=True, **geo).eval()
    ref_cls.load_state_dict(ours_cls.state_dict(), strict=False)
    with torch.no_grad():
        _, ref_hidden = ref_cls(x)
        out = ours_cls.forward_features(x)
    torch.testing.assert_close(out, ours_cls.norm(ref_hidden[-1]), atol=1e-5, rtol=1e-5)
    assert out.shape == (2, 65, 96)


def test_sdpa_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = SelfAttention(48, 4).eval()
    x = torch.randn(2, 10, 48)
    qkv = attn.qkv(x).reshape(2, 10, 3, 4, 12)  # features ordered (qkv, head, head_dim)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(12), dim=-1)
    expected = attn.out_proj((probs @ v).transpose(1, 2).reshape(2, 10, 48))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_slice_guided_attention_equals_explicit_formula():
    torch.manual_seed(0)
    m = create_encoder("vit3d_2e3_test").eval()
    sga = m.slice_guided_attention
    p, s = torch.randn(2, 64, 96), torch.randn(2, 8, 48)
    q = sga.Wq(p)
    att = torch.softmax(q @ sga.Wk(s).transpose(1, 2) / math.sqrt(96), dim=-1)
    expected = F.layer_norm(sga.output_linear(att @ sga.Wv(s)) + q, (96,), sga.norm.weight, sga.norm.bias, 1e-5)
    torch.testing.assert_close(sga(p, s), expected, atol=1e-5, rtol=1e-5)
    scores = m.patch_scores(p, s)
    assert scores.shape == (2, 64) and bool(((scores > 0) & (scores < 1)).all())


# ---- feature selection ------------------------------------------------------------------------
def test_feature_selection_matches_published_tower():
    torch.manual_seed(0)
    x = torch.rand(*TINY_INPUT)
    m = create_encoder("vit3d_test").eval()
    with torch.no_grad():
        full = m.forward_features(x)
        _, hidden = m.forward_hidden_states(x)
        torch.testing.assert_close(m(x), full[:, 1:])  # "patch", layer -1: final-normed, CLS dropped
        m.config.feature_select = "cls_patch"
        torch.testing.assert_close(m(x), full)
        m.config.feature_select = "cls"
        torch.testing.assert_close(m(x), full[:, 0])
        m.config.feature_select, m.config.feature_layer = "patch", 0
        torch.testing.assert_close(m(x), hidden[0][:, 1:])  # other layers: raw block output
    with pytest.raises(ValueError, match="cls_token"):
        create_encoder("vit3d_test", cls_token=False, feature_select="cls_patch")


# ---- training utilities --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit3d_test", "vit3d_2e3_test", "sam3d_adapter_test"])
def test_grad_checkpointing_same_gradients(name):
    torch.manual_seed(0)
    m = create_encoder(name, **({"score_dropout": 0.0} if "2e3" in name else {}))
    x = torch.rand(*TINY_INPUT)
    kw = {"slice_features": torch.randn(2, 8, 48)} if "2e3" in name else {}

    def grads():
        m.zero_grad()
        m.forward_features(x, **kw).square().mean().backward()
        return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    plain = grads()
    m.set_grad_checkpointing(True)
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize("name", ["vit3d_test", "vit3d_2e3_test", "sam3d_adapter_test"])
def test_bf16_autocast(name):
    torch.manual_seed(0)
    m = create_encoder(name).eval()
    x = torch.rand(*TINY_INPUT)
    kw = {"slice_features": torch.randn(2, 8, 48)} if "2e3" in name else {}
    seen = []
    m.blocks[-1].attn.qkv.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    with torch.no_grad():
        ref = m.forward_features(x, **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m.forward_features(x, **kw)
    assert seen == [torch.float32, torch.bfloat16]  # the matmuls ran in bf16 under autocast
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.15 * ref.abs().max()


# ---- 2E3 behaviour ----------------------------------------------------------------------------------
def _backbone_copy(e23) -> ViT3D:
    vit = create_encoder("vit3d_test").eval()
    missing = vit.load_state_dict(e23.state_dict(), strict=False).missing_keys
    assert not missing
    return vit


def test_e2e3_soft_reweighting_limits():
    torch.manual_seed(0)
    m = create_encoder("vit3d_2e3_test").eval()
    x, s = torch.rand(*TINY_INPUT), torch.randn(2, 8, 48)
    nn.init.zeros_(m.patch_score_proj.weight)
    with torch.no_grad():
        m.patch_score_proj.bias.fill_(40.0)  # score = 1: the plain ViT3D
        torch.testing.assert_close(m(x, s), _backbone_copy(m)(x), atol=1e-5, rtol=1e-5)
        m.patch_score_proj.bias.fill_(-40.0)  # score = 0: every patch token erased, input ignored
        torch.testing.assert_close(m(x, s), m(torch.rand(*TINY_INPUT), s), atol=1e-6, rtol=1e-6)


def test_e2e3_topk_selection():
    torch.manual_seed(0)
    m = create_encoder("vit3d_2e3_test", selection="topk", mask_ratio=0.25).eval()
    x, s = torch.rand(*TINY_INPUT), torch.randn(2, 8, 48)
    with torch.no_grad():
        tokens, keep = m.forward_topk(x, s)
        scores = m.patch_scores(m.embed_patches(x), s)
        assert tokens.shape == (2, 1 + 48, 96) and keep.shape == (2, 48)
        assert torch.equal(keep, scores.topk(48, dim=1).indices.sort(dim=1).values)
        assert m(x, s).shape == (2, 48, 96)
        # Keeping everything with norm_masked == norm gives the soft path exactly.
        m.norm_masked.load_state_dict(m.norm.state_dict())
        full, _ = m.forward_topk(x, s, mask_ratio=0.0)
        torch.testing.assert_close(full, m.forward_features(x, slice_features=s), atol=1e-5, rtol=1e-5)
    assert mask_ratio_schedule(0) == pytest.approx(0.08)
    assert mask_ratio_schedule(10**6) == pytest.approx(0.4)
    assert mask_ratio_schedule(10**4) == pytest.approx(0.08 + 0.32 * (1 - math.exp(-1)))


def test_e2e3_slice_inputs():
    torch.manual_seed(0)
    x = torch.rand(*TINY_INPUT)
    m = create_encoder("vit3d_2e3_test").eval()
    with pytest.raises(ValueError, match="slice_features"):
        m(x)
    with pytest.raises(ValueError, match=r"expected \(2, 8, 48\)"):
        m(x, torch.randn(2, 7, 48))
    two_d = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 48))
    branch = SliceEncoder2D(two_d, num_slices=8, size=32)
    online = create_encoder("vit3d_2e3_test", slice_encoder=branch).eval()
    online.load_state_dict(m.state_dict(), strict=False)
    with torch.no_grad():
        feats = branch(x)
        assert feats.shape == (2, 8, 48)
        torch.testing.assert_close(online(x), m(x, feats))


# ---- SAM3D adapters ------------------------------------------------------------------------------
def test_sam3d_adapters_start_as_identity_and_freeze():
    torch.manual_seed(0)
    m = create_encoder("sam3d_adapter_test")
    x = torch.rand(*TINY_INPUT)
    blk = m.blocks[0]
    tokens = torch.randn(2, 64, 96)
    torch.testing.assert_close(blk.adapter(tokens), tokens)  # zero-initialised up-projection
    assert blk.adapter.dwconv.groups == blk.adapter.dwconv.in_channels == 16  # depth-wise
    n = m.freeze_backbone()
    assert n == sum(p.numel() for p in m.adapter_parameters())
    assert {k.split(".")[2] for k, p in m.named_parameters() if p.requires_grad} == {"adapter"}
    neck, stages = m(x)
    (neck.mean() + sum(s.mean() for s in stages)).backward()
    assert m.blocks[2].adapter.up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for k, p in m.named_parameters() if ".adapter." not in k)
    assert m.freeze_backbone(also_train=("patch_embedding",)) == n + sum(
        p.numel() for p in m.patch_embedding.parameters()
    )
    for a, b in zip(m.forward_intermediates(x), stages):
        torch.testing.assert_close(a, b)


def test_sam3d_adapter_is_spatial():
    """The depth-wise conv mixes neighbouring grid cells: a change in one token reaches its neighbours."""
    torch.manual_seed(0)
    m = create_encoder("sam3d_adapter_test")
    ad = m.blocks[0].adapter
    nn.init.normal_(ad.up.weight, std=0.1)
    nn.init.zeros_(ad.attn.out_proj.weight)  # isolate the convolution path
    nn.init.zeros_(ad.attn.out_proj.bias)
    t = torch.randn(1, 64, 96)
    t2 = t.clone()
    t2[0, 0] += 1.0  # grid cell (0, 0, 0)
    diff = (ad(t2) - ad(t)).abs().sum(-1)[0]
    assert diff[1] > 0 and diff[4] > 0 and diff[16] > 0  # (0,0,1), (0,1,0), (1,0,0)
    assert diff[63] == 0  # (3,3,3) lies outside the 3x3x3 kernel


# ---- one real full-size forward ------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_forward_on_published_input(totalseg_dir):
    import nibabel as nib

    img = nib.load(str(totalseg_dir / "ct_abdomen.nii.gz"))
    vol = torch.from_numpy(img.get_fdata(dtype="float32")).permute(2, 1, 0)[None, None]  # (1, 1, z, y, x)
    vol = ((vol.clamp(-1000, 1000) + 1000) / 2000).contiguous()
    vol = F.interpolate(vol, size=(32, 256, 256), mode="trilinear", align_corners=False)
    torch.manual_seed(0)
    m = create_encoder("vit3d_base").eval()
    with torch.no_grad():
        out = m(vol)
    assert out.shape == (1, 2048, 768) and torch.isfinite(out).all()
    # Final LayerNorm with unit weight / zero bias: every token has mean 0 and variance 1.
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 2048), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(1, 2048), atol=1e-3, rtol=0)


def test_benchmark_flop_formula_matches_flop_counter():
    """Bench/perf/encoders.py's analytic FLOPs equal torch's counter on the math attention path
    (the counter has no formula for the CPU flash kernel, hence the math backend here)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from Bench.perf.encoders import counted_train_flops, vit_train_flops

    for cls in (False, True):
        m = create_encoder("vit3d_test", cls_token=cls)
        with sdpa_kernel(SDPBackend.MATH):
            assert counted_train_flops(m, torch.rand(1, 1, 16, 64, 64)) == vit_train_flops(m.config)
