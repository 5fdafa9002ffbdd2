"""Multimodal projectors: parameter counts, token counts, hand-computed outputs, bf16."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from LaMed.models.encoders import create_encoder
from LaMed.models.projectors import create_projector, list_projectors
from LaMed.models.projectors.base import projector_inputs


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta(name: str, **kw):
    with torch.device("meta"):
        return create_projector(name, **kw)


def lin(i, o):
    return i * o + o


def test_registered_names():
    names = set(list_projectors())
    assert {"identity", "linear", "mlp", "spp", "mixer", "packer", "hsenet_packer", "r1seg_pool_mlp"} <= names
    assert {"mlp_test", "spp_test", "mixer_test", "packer_test"} <= names


def test_published_parameter_counts():
    # M3D-LaMed spp to Phi-3 (3072): 768*3072+3072 + 3072*3072+3072 (BAAI-DCAI/M3D, arXiv 2404.00578)
    assert n_params(meta("spp")) == 11_802_624
    assert n_params(meta("r1seg_pool_mlp")) == 11_802_624
    assert n_params(meta("spp", out_dim=4096)) == lin(768, 4096) + lin(4096, 4096)  # Llama-2-7B / Llama-3.1-8B
    # Med3DVLM mixer: 47.22 M measured (mirthAI/Med3DVLM); per layer LN x2 + token MLP + channel MLP
    mixer = meta("mixer")
    expected = 0
    for (n_in, d_in), (n_out, d_out) in [
        ((256, 384), (192, 1792)),
        ((192, 1792), (128, 3584)),
        ((32, 768), (64, 1792)),
        ((64, 1792), (128, 3584)),
    ]:
        expected += 4 * d_in + lin(n_in, n_out) + lin(n_out, n_out) + lin(d_in, d_out) + lin(d_out, d_out)
    assert n_params(mixer) == expected == 47_221_248
    assert len(mixer.state_dict()) == 48  # as in the published checkpoint (MagicXin/Med3DVLM-Qwen-2.5-7B)
    # HSENet packer per stream: Wq/Wk/Wv/output_linear (768x768 + bias), LayerNorm, MLP 768->3072->3072
    per_stream = 4 * lin(768, 768) + 2 * 768 + lin(768, 3072) + lin(3072, 3072)
    assert n_params(meta("packer")) == per_stream
    assert n_params(meta("hsenet_packer")) == 2 * per_stream
    assert n_params(meta("linear")) == lin(768, 3072)
    assert n_params(meta("identity")) == 0


def test_published_output_shapes():
    m = torch.device("meta")
    cases = [
        ("spp", torch.empty(1, 2048, 768, device=m), (1, 256, 3072)),
        ("linear", torch.empty(1, 2048, 768, device=m), (1, 2048, 3072)),
        ("mixer", [torch.empty(1, 256, 384, device=m), torch.empty(1, 32, 768, device=m)], (1, 256, 3584)),
        ("hsenet_packer", [torch.empty(1, 2048, 768, device=m)] * 2, (1, 256, 3072)),
        ("hsenet_pool_mlp", torch.empty(1, 2048, 768, device=m), (1, 128, 3072)),
    ]
    for name, x, shape in cases:
        proj = meta(name)
        out = proj(x)
        assert tuple(out.shape) == shape, name
        assert proj.num_tokens == shape[1] and proj.out_hidden_size == shape[2], name


@pytest.mark.parametrize(
    "name,kw,tokens",
    [
        ("spp", dict(grid_size=(8, 16, 16)), 256),
        ("spp", dict(grid_size=(4, 8, 8)), 32),
        ("spp", dict(grid_size=(2, 4, 6), pool_mode="sequence"), 6),
        ("spp", dict(grid_size=(8, 16, 16), pool_size=(1, 4, 4)), 128),
        ("packer", dict(grid_size=(8, 16, 16)), 128),
        ("packer", dict(grid_size=(4, 8, 8), window=(2, 2, 2), num_streams=3), 3 * 32),
        ("mlp", dict(grid_size=(2, 3, 4), num_prefix_tokens=1), 25),
        ("identity", dict(grid_size=(2, 3, 4), in_dim=16), 24),
        ("mixer", dict(in_dims=(16,), grid_sizes=((2, 4, 4),), out_tokens=((12, 5, 7),), out_dim=32), 7),
    ],
)
def test_num_tokens_matches_output(name, kw, tokens):
    if name != "mixer":
        kw.setdefault("in_dim", 16)
    if name != "identity":
        kw.setdefault("out_dim", 24)
    proj = create_projector(name, **kw).eval()
    c = proj.config
    if name == "mixer":
        x = [torch.randn(2, math.prod(g), d) for g, d in zip(c.grid_sizes, c.in_dims)]
    else:
        n = math.prod(c.grid_size) + getattr(c, "num_prefix_tokens", 0)
        x = [torch.randn(2, n, c.in_dim) for _ in range(proj.num_streams)]
    out = proj(x if len(x) > 1 else x[0])
    assert proj.num_tokens == tokens == out.shape[1]
    assert out.shape == (2, tokens, proj.out_hidden_size)


def test_wrong_token_count_is_refused_with_expected_shape():
    proj = create_projector("spp_test")
    with pytest.raises(ValueError, match=r"expected tokens \(B, 32, 32\).*got \(1, 33, 32\)"):
        proj(torch.randn(1, 33, 32))
    with pytest.raises(ValueError, match="takes 2 token stream"):
        create_projector("mixer_test")(torch.randn(1, 32, 16))
    with pytest.raises(ValueError, match="not divisible by pool_size"):
        create_projector("spp", grid_size=(8, 16, 15))
    with pytest.raises(TypeError, match="unknown field"):
        create_projector("spp", proj_out_num=256)


def test_spatial_pool_matches_hand_computation():
    torch.manual_seed(0)
    proj = create_projector("spp_test").eval()  # grid 2x4x4 of 32, pool 2x2x2 -> 1x2x2 tokens
    grid = torch.randn(2, 32, 2, 4, 4)
    tokens = grid.flatten(2).transpose(1, 2)  # depth-major, as the encoders emit them
    g = grid.numpy()
    want = np.stack(
        [g[:, :, 0:2, 2 * j : 2 * j + 2, 2 * k : 2 * k + 2].mean(axis=(2, 3, 4)) for j in range(2) for k in range(2)],
        axis=1,
    )
    np.testing.assert_allclose(proj.pool(tokens).numpy(), want, rtol=1e-5, atol=1e-6)
    l0, l2 = proj.projector[0], proj.projector[2]
    ref = F.linear(F.gelu(F.linear(torch.from_numpy(want), l0.weight, l0.bias)), l2.weight, l2.bias)
    torch.testing.assert_close(proj(tokens), ref, rtol=1e-5, atol=1e-6)
    # "sequence" mode averages runs of 8 consecutive tokens instead
    seq = create_projector("spp_test", pool_mode="sequence")
    torch.testing.assert_close(seq.pool(tokens), tokens.reshape(2, 4, 8, 32).mean(2))
    # bf16 on the CPU (lamed predict --dtype bf16 without a GPU): torch has no bf16 avg_pool3d there
    half = proj.pool(tokens.bfloat16())
    assert half.dtype == torch.bfloat16
    np.testing.assert_allclose(half.float().numpy(), want, rtol=2e-2, atol=2e-2)
    assert proj.to(torch.bfloat16)(tokens.bfloat16()).shape == (2, 4, proj.config.out_dim)


def test_mlp_layouts():
    three = create_projector("mlp", in_dim=8, out_dim=16, num_layers=3, grid_size=(1, 1, 2))
    assert [k for k in three.state_dict() if k.endswith("weight")] == [
        "projector.0.weight",
        "projector.2.weight",
        "projector.4.weight",
    ]
    plain = create_projector("mlp", in_dim=8, out_dim=16, num_layers=2, act="none", grid_size=(1, 1, 2))
    x = torch.randn(1, 2, 8)
    l0, l1 = plain.projector[0], plain.projector[1]
    torch.testing.assert_close(plain(x), F.linear(F.linear(x, l0.weight, l0.bias), l1.weight, l1.bias))
    ident = create_projector("identity", in_dim=8, grid_size=(1, 1, 2))
    assert ident.out_hidden_size == 8 and torch.equal(ident(x), x)
    with pytest.raises(ValueError, match="out_dim"):
        create_projector("identity", in_dim=8, out_dim=16)


def test_mixer_matches_hand_computation():
    torch.manual_seed(0)
    proj = create_projector("mixer_test").eval()
    assert proj.config.widths(0) == (32, 64)  # out_dim / 2**(L-1-i)
    low, high = torch.randn(2, 32, 16), torch.randn(2, 4, 32)
    sd = proj.state_dict()

    def mlp(x, p):
        return F.linear(F.gelu(F.linear(x, sd[p + "0.weight"], sd[p + "0.bias"])), sd[p + "2.weight"], sd[p + "2.bias"])

    def layer(x, p):
        d = x.shape[-1]
        y = F.layer_norm(x, (d,), sd[p + "ln1.weight"], sd[p + "ln1.bias"])
        y = mlp(y.transpose(1, 2), p + "token_mlp.").transpose(1, 2)  # mixes tokens: (B, d, n_in) -> (B, d, n_out)
        y = F.layer_norm(y, (d,), sd[p + "ln2.weight"], sd[p + "ln2.bias"])
        return mlp(y, p + "channel_mlp.")

    want = torch.cat(
        [layer(layer(low, "streams.0.0."), "streams.0.1."), layer(layer(high, "streams.1.0."), "streams.1.1.")], 1
    )
    out = proj([low, high])
    assert out.shape == (2, 8, 64)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_packer_matches_hand_computation():
    torch.manual_seed(0)
    proj = create_projector("packer_test").eval()  # grid 2x4x4, window 1x2x2 -> 8 tokens a stream
    xs = [torch.randn(1, 32, 32), torch.randn(1, 32, 32)]
    out = proj(xs)
    assert out.shape == (1, 16, 64)
    for s, x in enumerate(xs):
        st = proj.streams[s]
        grid = x[0].reshape(2, 4, 4, 32)
        rows = []
        for d in range(2):
            for hb in range(2):
                for wb in range(2):
                    members = grid[d, 2 * hb : 2 * hb + 2, 2 * wb : 2 * wb + 2].reshape(4, 32)
                    q = st.attn.q(members.mean(0))
                    w = torch.softmax(st.attn.k(members) @ q / math.sqrt(32), dim=0)
                    y = st.attn.norm(q + st.attn.out(w @ st.attn.v(members)))
                    rows.append(st.projector(y))
        torch.testing.assert_close(out[0, 8 * s : 8 * (s + 1)], torch.stack(rows), rtol=1e-5, atol=1e-5)
    # dropout (0.1 on the attention and the output) is active in training only
    proj.train()
    torch.manual_seed(1)
    assert not torch.allclose(proj(xs), out)


def test_projector_inputs_come_from_the_encoder():
    with torch.device("meta"):
        enc = create_encoder("dcformer_small_med3dvlm")
    kw = projector_inputs(enc, indices=(3, 4))
    assert kw == {"in_dims": (384, 768), "grid_sizes": ((4, 8, 8), (2, 4, 4))}  # Med3DVLM's (256, 384), (32, 768)
    assert n_params(meta("mixer", **kw)) == 47_221_248
    assert projector_inputs(enc) == {"in_dim": 768, "grid_size": (2, 4, 4)}
    # end to end with the tiny encoder: tokens of stages 3 and 4 -> mixer, last stage -> spp / mlp
    enc = create_encoder("dcformer_test").eval()
    x = torch.rand(2, 1, 32, 64, 64)
    mixer = create_projector("mixer", **projector_inputs(enc, (3, 4)), out_tokens=((8, 4), (6, 4)), out_dim=64)
    out = mixer(enc.forward_tokens(x, (3, 4)))
    assert out.shape == (2, mixer.num_tokens, 64) and mixer.num_tokens == 8
    mlp = create_projector("mlp", **projector_inputs(enc), out_dim=48)
    assert mlp(enc.forward_features(x)).shape == (2, enc.num_tokens, 48)


@pytest.mark.parametrize("name", ["mlp_test", "spp_test", "mixer_test", "packer_test"])
def test_bf16_autocast(name):
    torch.manual_seed(0)
    proj = create_projector(name)
    c = proj.config
    if name == "mixer_test":
        x = [torch.randn(2, math.prod(g), d) for g, d in zip(c.grid_sizes, c.in_dims)]
    else:
        x = [torch.randn(2, math.prod(c.grid_size), c.in_dim) for _ in range(proj.num_streams)]
    x = x if len(x) > 1 else x[0]
    proj.eval()
    ref = proj(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = proj(x)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).norm() / ref.norm() < 0.05
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in proj.parameters())
