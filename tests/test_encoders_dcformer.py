"""DCFormer encoder: published sizes, shapes, legacy flags, checkpointing, bf16."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from LaMed.models.encoders import create_encoder, list_encoders
from LaMed.models.encoders.base import VisionEncoder
from LaMed.models.encoders.dcformer import DCFormer, DCFormerConfig


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta(name: str, **kw) -> DCFormer:
    with torch.device("meta"):
        return create_encoder(name, **kw)


# Measured on the public code (mirthAI/DCFormer, arXiv 2502.05091).
PUBLISHED_PARAMS = {
    "dcformer_nano": 789_216,  # 0.789 M
    "dcformer_naive": 5_851_680,  # 5.852 M
    "dcformer_tiny": 14_657_472,  # 14.657 M
    "dcformer_small": 18_244_800,  # 18.245 M
    "dcformer_base": 33_868_864,  # 33.869 M
    "dcformer_large": 185_125_440,  # 185.125 M
    "dcformer_text3dsam": 22_907_952,  # 22.908 M
}


@pytest.mark.parametrize("name,count", PUBLISHED_PARAMS.items())
def test_parameter_counts_match_published(name, count):
    model = meta(name)
    assert n_params(model) == count
    # and the millions quoted by DCFormer (arXiv 2502.05091), to three decimals
    quoted = {
        "dcformer_nano": 0.789,
        "dcformer_naive": 5.852,
        "dcformer_tiny": 14.657,
        "dcformer_small": 18.245,
        "dcformer_base": 33.869,
        "dcformer_large": 185.125,
        "dcformer_text3dsam": 22.908,
    }[name]
    assert round(count / 1e6, 3) == quoted


def test_small_per_stage_parameters_and_key_count():
    model = meta("dcformer_small")
    per_stage = [n_params(getattr(model.encoder, f"s{i}")) for i in range(5)]
    assert per_stage == [114_240, 163_968, 930_816, 7_248_384, 9_787_392]
    assert len(model.state_dict()) == 426  # BN buffers included, as published
    t3s = meta("dcformer_text3dsam")
    assert n_params(t3s.encoder.s4) == 14_501_376


def test_all_sizes_registered_and_interface():
    names = set(list_encoders())
    for size in ("nano", "naive", "tiny", "small", "base", "large", "test"):
        assert f"dcformer_{size}" in names
    model = meta("dcformer_small")
    assert isinstance(model, VisionEncoder)
    assert model.hidden_size == 768 and model.grid_size == (2, 4, 4) and model.num_tokens == 32


def test_published_stage_shapes_med3dvlm_input():
    # Med3DVLM: (1, 1, 128, 256, 256); mirthAI/DCFormer gives (C, H, W, D) = (64, 64, 64, 32) ... (768, 4, 4, 2).
    model = meta("dcformer_small_med3dvlm")
    x = torch.empty(1, 1, 128, 256, 256, device="meta")
    maps = model.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [
        (1, 64, 32, 64, 64),
        (1, 96, 16, 32, 32),
        (1, 192, 8, 16, 16),
        (1, 384, 4, 8, 8),
        (1, 768, 2, 4, 4),
    ]
    low, high = model.forward_tokens(x)  # what the mixer projector consumes
    assert tuple(low.shape) == (1, 256, 384) and tuple(high.shape) == (1, 32, 768)
    assert [model.stage_grid_size(i) for i in range(5)] == [tuple(m.shape[2:]) for m in maps]
    assert tuple(model.forward_features(x).shape) == (1, model.num_tokens, model.hidden_size)


def test_text3dsam_and_ct_rate_shapes():
    t3s = meta("dcformer_text3dsam")
    maps = t3s.forward_intermediates(torch.empty(1, 1, 128, 256, 256, device="meta"))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (48, 32, 64, 64),
        (96, 16, 32, 32),
        (192, 8, 16, 16),
        (384, 4, 8, 8),
        (768, 2, 4, 4),
    ]
    # DCFormer on CT-RATE: D, H, W = 256, 512, 512 -> last stage 4 x 8 x 8 = 256 tokens of 768.
    tiny = meta("dcformer_tiny", img_size=(256, 512, 512))
    assert tiny.num_tokens == 256
    assert tuple(tiny.forward_features(torch.empty(1, 1, 256, 512, 512, device="meta")).shape) == (1, 256, 768)


def test_intermediate_indices_and_errors():
    model = create_encoder("dcformer_test").eval()
    x = torch.rand(1, 1, 32, 64, 64)
    all_maps = model.forward_intermediates(x)
    picked = model.forward_intermediates(x, indices=[-2, 1])
    assert torch.equal(picked[0], all_maps[3]) and torch.equal(picked[1], all_maps[1])
    with pytest.raises(IndexError, match="stages 0..4"):
        model.forward_intermediates(x, indices=[5])
    with pytest.raises(ValueError, match=r"expects \(B, 1, D, H, W\)"):
        model(torch.rand(1, 2, 32, 64, 64))
    with pytest.raises(ValueError, match="block_types"):
        DCFormerConfig(block_types=("C", "C", "X", "C"))
    with pytest.raises(ValueError, match="attn_scale"):
        create_encoder("dcformer_test", attn_scale="inverse")
    with pytest.raises(TypeError, match="unknown DCFormer config field"):
        create_encoder("dcformer_small", depth=3)


# ---- hand computations ------------------------------------------------------------------------


def ref_decomp_conv(x, mod, kernel, stride=1, groups=1, act=False):
    """Three 1-D convs (k,1,1) / (1,k,1) / (1,1,k) with 'same' padding along their axis, eval BN, sum."""
    p = kernel // 2
    out = 0
    for name, pad in (("c1", (p, 0, 0)), ("c2", (0, p, 0)), ("c3", (0, 0, p))):
        conv, bn = getattr(mod, name)[0], getattr(mod, name)[1]
        y = F.conv3d(x, conv.weight, conv.bias, stride=stride, padding=pad, groups=groups)
        if isinstance(bn, torch.nn.BatchNorm3d):
            y = (y - bn.running_mean[None, :, None, None, None]) / torch.sqrt(bn.running_var + bn.eps)[
                None, :, None, None, None
            ]
            y = y * bn.weight[None, :, None, None, None] + bn.bias[None, :, None, None, None]
        out = out + y
    return F.gelu(out) if act else out


def randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("activation", [True, False])
def test_stem_activation_flag_matches_hand_computation(activation):
    torch.manual_seed(0)
    model = create_encoder("dcformer_test", stem_activation=activation, stem_stride=4).eval()
    randomise_bn(model)
    x = torch.randn(2, 1, 16, 20, 24)
    stem = model.encoder.s0[0]
    ref = ref_decomp_conv(x, stem[0], 7, stride=4, act=activation)
    for layer in stem[1:]:
        ref = ref_decomp_conv(ref, layer, 3, act=activation)
    got = model.forward_intermediates(x, indices=[0])[0]
    assert got.shape == (2, 8, 4, 5, 6)  # (n - 1) // 4 + 1 on every axis
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_legacy_stem_is_affine_clean_stem_is_not():
    torch.manual_seed(0)
    legacy = create_encoder("dcformer_test", stem_activation=False).eval()
    randomise_bn(legacy)
    clean = create_encoder("dcformer_test", stem_activation=True).eval()
    clean.load_state_dict(legacy.state_dict())  # same weights, only the activation differs
    a, b = torch.randn(1, 1, 8, 16, 16), torch.randn(1, 1, 8, 16, 16)
    z = torch.zeros_like(a)

    def stem(m, t):
        return m.forward_intermediates(t, indices=[0])[0]

    for m, affine in ((legacy, True), (clean, False)):
        lhs = stem(m, a + b) - stem(m, z)
        rhs = (stem(m, a) - stem(m, z)) + (stem(m, b) - stem(m, z))
        assert torch.allclose(lhs, rhs, atol=1e-4) is affine
    # the registry's clean default has the activation; the Med3DVLM variant does not
    assert isinstance(create_encoder("dcformer_test").encoder.s0[0][0].act, torch.nn.GELU)
    assert isinstance(meta("dcformer_small_med3dvlm").encoder.s0[0][0].act, torch.nn.Identity)


def explicit_attention(attn, x, legacy: bool):
    b, n, c = x.shape
    h = attn.num_heads
    d = c // h
    qkv = x @ attn.qkv.weight.T
    q, k, v = (t.reshape(b, n, h, d).transpose(1, 2) for t in qkv.split(c, dim=-1))
    logits = (q @ k.transpose(-1, -2)) * (d**0.5 if legacy else d**-0.5)
    y = torch.softmax(logits, dim=-1) @ v
    return y.transpose(1, 2).reshape(b, n, c) @ attn.proj.weight.T


@pytest.mark.parametrize("scale", ["standard", "legacy_mul"])
def test_attention_scale_matches_explicit_softmax(scale):
    torch.manual_seed(0)
    model = create_encoder("dcformer_test", attn_scale=scale).eval()
    attn = model.encoder.s4[0].spatial_attention.attn
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(attn(x), explicit_attention(attn, x, scale == "legacy_mul"), rtol=1e-4, atol=1e-5)
    # the other convention gives a different result on the same weights
    assert not torch.allclose(attn(x), explicit_attention(attn, x, scale != "legacy_mul"), atol=1e-3)


def test_legacy_attention_changes_encoder_output_only_in_attention_stage():
    torch.manual_seed(0)
    std = create_encoder("dcformer_test").eval()
    leg = create_encoder("dcformer_test", attn_scale="legacy_mul").eval()
    leg.load_state_dict(std.state_dict())
    with torch.no_grad():  # make the logits large enough for the scale to matter
        for m in (std, leg):
            m.encoder.s4[0].spatial_attention.attn.qkv.weight.mul_(5.0)
    x = torch.rand(1, 1, 32, 64, 64)
    s_std, s_leg = std.forward_intermediates(x, [3, 4]), leg.forward_intermediates(x, [3, 4])
    assert torch.equal(s_std[0], s_leg[0])
    assert not torch.allclose(s_std[1], s_leg[1], atol=1e-4)


def test_conv_block_matches_hand_computation():
    torch.manual_seed(0)
    model = create_encoder("dcformer_test").eval()
    randomise_bn(model)
    block = model.encoder.s2[0]  # downsampling block, 8 -> 16 channels
    k = block.dwconv.c1[0].weight.shape[2]
    assert k == 5 and block.dwconv.c2[0].weight.shape[2:] == (1, k, 1)
    with torch.no_grad():
        block.scale.fill_(0.5)
    x = torch.randn(2, 8, 6, 8, 10)
    y = F.conv3d(F.max_pool3d(x, 3, 2, 1), block.proj.weight)
    z = ref_decomp_conv(y, block.dwconv, k, groups=16).permute(0, 2, 3, 4, 1)
    lin1, lin2 = block.mlp.mlp[0], block.mlp.mlp[3]
    z = F.linear(F.gelu(F.linear(z, lin1.weight, lin1.bias)), lin2.weight, lin2.bias) * 0.5
    ref = y + z.permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(block(x), ref, rtol=1e-4, atol=1e-5)


def test_hwd_layout_is_the_permuted_dhw_model():
    torch.manual_seed(0)
    dhw = create_encoder("dcformer_test").eval()
    hwd = create_encoder("dcformer_test", input_layout="HWD").eval()
    hwd.load_state_dict(dhw.state_dict())
    x = torch.rand(1, 1, 16, 32, 48)
    want = [m.permute(0, 1, 4, 2, 3) for m in dhw.forward_intermediates(x.permute(0, 1, 3, 4, 2))]
    got = hwd.forward_intermediates(x)
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    # canonical output either way: (B, C, d, h, w) with d from the D axis
    assert got[0].shape[2:] == (8, 16, 24)
    assert not torch.allclose(got[-1], dhw.forward_intermediates(x)[-1], atol=1e-5)
    # tokens are depth-major: token index = (d * h_n + h) * w_n + w
    maps, tokens = got[3], hwd.forward_tokens(x, [3])[0]
    _, _, dn, hn, wn = maps.shape
    assert tokens.shape[1] == dn * hn * wn == 6
    for i in range(tokens.shape[1]):
        assert torch.equal(tokens[0, i], maps[0, :, i // (hn * wn), (i // wn) % hn, i % wn])


def test_grad_checkpointing_same_gradients_and_bn_stats():
    torch.manual_seed(0)
    ref = create_encoder("dcformer_test").train()
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing(True)
    x = torch.rand(2, 1, 32, 64, 64)
    for m in (ref, ckpt):
        m.forward_features(x).pow(2).sum().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # recomputation must not update the BatchNorm statistics a second time
    for (name, a), b in zip(ref.state_dict().items(), ckpt.state_dict().values()):
        assert torch.equal(a, b), name


def test_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    model = create_encoder("dcformer_test").train()
    x = torch.rand(2, 1, 32, 64, 64)
    ref = model.forward_features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_features(x)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    out.float().pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05
