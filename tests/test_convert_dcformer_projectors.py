"""Published DCFormer / projector key layouts (built from the reference tables) load strictly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from LaMed.models.convert import convert_state_dict, list_converters, load_converted
from LaMed.models.convert.dcformer import detect_source, infer_dcformer_config
from LaMed.models.encoders import create_encoder
from LaMed.models.encoders.dcformer import DCFormer, DCFormerConfig
from LaMed.models.projectors import create_projector

G = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=G)


def add_bn(sd, p, c):
    sd.update(
        {
            p + "weight": rand(c),
            p + "bias": rand(c),
            p + "running_mean": rand(c),
            p + "running_var": torch.rand(c, generator=G) + 0.5,
            p + "num_batches_tracked": torch.tensor(7),
        }
    )


def add_decomp(sd, p, cout, cin, k, bn=True):
    for name, shape in (("c1", (cout, cin, k, 1, 1)), ("c2", (cout, cin, 1, k, 1)), ("c3", (cout, cin, 1, 1, k))):
        sd[f"{p}{name}.0.weight"], sd[f"{p}{name}.0.bias"] = rand(*shape), rand(cout)
        if bn:
            add_bn(sd, f"{p}{name}.1.", cout)


def published_dcformer(channels, blocks, kernels=(13, 11, 9, 7), t_last=False, layout="m3v"):
    """Key layouts of the public code: mirthAI/Med3DVLM (M3V), mirthAI/Text3DSAM (s4) and mirthAI/DCFormer (DCF)."""
    sd = {}
    for i in range(4):  # stem: k7 stride 4, then three k3
        add_decomp(sd, f"encoder.s0.0.{i}.", channels[0], 1 if i == 0 else channels[0], 7 if i == 0 else 3)
    for s in range(1, 5):
        c, c_prev, k = channels[s], channels[s - 1], kernels[s - 1]
        for j in range(blocks[s - 1]):
            p = f"encoder.s{s}.{j}."
            if j == 0:
                sd[p + "proj.weight"] = rand(c, c_prev, 1, 1, 1)
            if s == 4 and t_last:
                for m in range(2):
                    add_decomp(sd, f"{p}spatial_attention.cpe.{m}.proj.", c, 1, 3, bn=False)
                sd[p + "spatial_attention.attn.qkv.weight"] = rand(3 * c, c)
                sd[p + "spatial_attention.attn.proj.weight"] = rand(c, c)
                for ln in ("layer_norm1", "layer_norm2"):
                    sd[f"{p}spatial_attention.{ln}.weight"], sd[f"{p}spatial_attention.{ln}.bias"] = rand(c), rand(c)
                mlp = p + "spatial_attention.mlp1.mlp."
            else:
                sd[p + ("gamma" if layout == "dcf" else "scale")] = rand(c)
                add_decomp(sd, p + "dwconv.", c, 1, k)
                if layout == "dcf":  # the duplicate ModuleList of the branch BatchNorms
                    for b in range(3):
                        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                            sd[f"{p}dwconv.norm.{b}.{name}"] = sd[f"{p}dwconv.c{b + 1}.1.{name}"]
                mlp = p + "mlp.mlp."
            sd[mlp + "0.weight"], sd[mlp + "0.bias"] = rand(4 * c, c), rand(4 * c)
            sd[mlp + "3.weight"], sd[mlp + "3.bias"] = rand(c, 4 * c), rand(c)
    if layout == "dcf":
        sd.update(
            {
                "vq._codebook.embed": rand(1, 16, channels[-1]),
                "vq._codebook.initted": torch.tensor([1.0]),
                "vq._codebook.cluster_size": rand(1, 16),
                "vq._codebook.embed_avg": rand(1, 16, channels[-1]),
            }
        )
    return sd


def assert_loaded(model, converted):
    own = model.state_dict()
    assert set(own) == set(converted)
    for k, v in converted.items():
        assert torch.equal(own[k], v), k


def test_families_registered():
    assert {"dcformer", "med3dvlm_projector", "m3d_projector", "hsenet_packer"} <= set(list_converters())


def test_med3dvlm_dcformer_small_from_vlm_checkpoint():
    enc = published_dcformer((64, 96, 192, 384, 768), (2, 3, 6, 2))
    assert len(enc) == 426  # the M3V DCFormer-small state dict (mirthAI/Med3DVLM)
    full = {f"model.vision_tower.vision_tower.{k}": v for k, v in enc.items()}
    full.update(
        {
            "model.embed_tokens.weight": rand(4, 8),
            "lm_head.weight": rand(4, 8),
            "model.mm_projector.low_mixer.0.ln1.weight": rand(384),
        }
    )
    converted = convert_state_dict("dcformer", full)
    assert set(converted) == set(enc)
    model = create_encoder("dcformer_small_med3dvlm")
    report = load_converted(model, converted)
    assert report.ok
    assert_loaded(model, converted)
    # the bare pretrained_ViT.bin (no prefix) and the DEC_CLIP prefix give the same
    assert set(convert_state_dict("dcformer", enc)) == set(enc)
    clip = {f"vision_encoder.{k}": v for k, v in enc.items()} | {"mm_vision_proj.weight": rand(768, 768)}
    assert set(convert_state_dict("dcformer", clip)) == set(enc)
    cfg = infer_dcformer_config(full)
    assert cfg == dict(
        num_blocks=(1, 2, 3, 6, 2),
        channels=(64, 96, 192, 384, 768),
        kernel_sizes=(13, 11, 9, 7),
        block_types=("C",) * 4,
        in_channels=1,
        stem_kernel_size=7,
        stem_depth=4,
        stem_activation=False,
        input_layout="HWD",
    )


def test_text3dsam_encoder_with_attention_stage():
    enc = published_dcformer((48, 96, 192, 384, 768), (2, 3, 6, 2), t_last=True)
    assert sum(k.startswith("encoder.s4.") for k in enc) == 45  # Text3DSAM's transformer stage (mirthAI/Text3DSAM)
    assert enc["encoder.s0.0.0.c1.0.weight"].shape == (48, 1, 7, 1, 1)
    full = {f"image_encoder.{k}": v for k, v in enc.items()}
    full.update(
        {
            "text_encoder.encoder.layer.0.attention.self.query.weight": rand(4, 4),
            "seg_decoder.prompt_encoder.mask_downscaling.0.c1.0.weight": rand(96, 1, 7, 1, 1),
            "text_projector.0.weight": rand(768, 312),
        }
    )
    assert detect_source(full) == "text3dsam"
    converted = convert_state_dict("dcformer", full)
    model = create_encoder("dcformer_text3dsam")
    assert load_converted(model, converted).ok
    assert_loaded(model, converted)
    cfg = infer_dcformer_config(full)
    assert cfg["block_types"] == ("C", "C", "C", "T") and cfg["channels"] == (48, 96, 192, 384, 768)
    assert cfg["attn_scale"] == "legacy_mul" and cfg["stem_activation"] is False and cfg["input_layout"] == "DHW"


def test_original_dcformer_layout_is_normalised():
    # mirthAI/DCFormer decomp_tiny inside a CT-CLIP wrapper: gamma, BN aliases, VQ codebook
    enc = published_dcformer((64, 96, 192, 384, 768), (2, 3, 3, 2), layout="dcf")
    full = {f"visual_transformer.{k}": v for k, v in enc.items()} | {"to_visual_latent.weight": rand(512, 768)}
    assert detect_source(full) == "dcformer"
    converted = convert_state_dict("dcformer", full)
    assert not any("gamma" in k or "dwconv.norm" in k or k.startswith("vq.") for k in converted)
    assert torch.equal(converted["encoder.s3.2.scale"], enc["encoder.s3.2.gamma"])
    cfg = infer_dcformer_config(full)
    model = DCFormer(DCFormerConfig(**cfg))
    assert cfg["num_blocks"] == (1, 2, 3, 3, 2)
    assert sum(p.numel() for p in model.parameters()) == 14_657_472  # = dcformer_tiny (mirthAI/DCFormer)
    assert load_converted(model, converted).ok
    assert_loaded(model, converted)


def test_dcformer_errors_are_readable():
    with pytest.raises(KeyError, match="no DCFormer weights"):
        convert_state_dict("dcformer", {"blocks.0.attn.qkv.weight": rand(3, 1)})
    enc = published_dcformer((8, 8, 8, 8, 8), (1, 1, 1, 1), kernels=(3, 3, 3, 3))
    two = {f"a.{k}": v for k, v in enc.items()} | {f"b.{k}": v for k, v in enc.items()}
    with pytest.raises(KeyError, match="several DCFormer encoders"):
        convert_state_dict("dcformer", two)
    assert set(convert_state_dict("dcformer", two, prefix="b.")) == set(enc)
    # a checkpoint of another size fails strictly, naming the mismatched keys
    with pytest.raises(KeyError, match=r"(?s)does not match DCFormer.*missing in checkpoint.*with a different shape"):
        load_converted(create_encoder("dcformer_test"), convert_state_dict("dcformer", enc))


# ---- projectors ---------------------------------------------------------------------------------


def test_m3d_spp_projector_from_stage1_file_and_peft_checkpoint():
    proj_sd = {
        "projector.0.weight": rand(3072, 768),
        "projector.0.bias": rand(3072),
        "projector.2.weight": rand(3072, 3072),
        "projector.2.bias": rand(3072),
    }
    stage1 = {f"model.mm_projector.{k}": v for k, v in proj_sd.items()} | {"model.embed_tokens.weight": rand(32015, 8)}
    peft = {f"base_model.model.model.mm_projector.{k}": v for k, v in proj_sd.items()}
    r1seg = {f"model.mm_projector.{k}": v for k, v in proj_sd.items()} | {
        "model.seg_projector.0.weight": rand(3072, 3072)
    }
    for name, sd in (("spp", stage1), ("spp", peft), ("r1seg_pool_mlp", r1seg)):
        converted = convert_state_dict("m3d_projector", sd)
        model = create_projector(name)
        assert load_converted(model, converted).ok
        assert_loaded(model, proj_sd)
    # M3D "linear" (FullLinear on all 2048 tokens)
    lin = {"model.mm_projector.linear.weight": rand(3072, 768), "model.mm_projector.linear.bias": rand(3072)}
    model = create_projector("linear")
    assert load_converted(model, convert_state_dict("m3d_projector", lin)).ok
    assert torch.equal(model.projector[0].weight, lin["model.mm_projector.linear.weight"])


MIXER_TABLE = {  # Med3DVLM's mixer projector (mirthAI/Med3DVLM): (n_in, n_out, d_in, d_out) per module
    "low_mixer.0": (256, 192, 384, 1792),
    "low_mixer.1": (192, 128, 1792, 3584),
    "high_mixer.0": (32, 64, 768, 1792),
    "high_mixer.1": (64, 128, 1792, 3584),
}


def published_mixer(table):
    sd = {}
    for p, (n_in, n_out, d_in, d_out) in table.items():
        for ln in ("ln1", "ln2"):
            sd[f"{p}.{ln}.weight"], sd[f"{p}.{ln}.bias"] = rand(d_in), rand(d_in)
        for m, (i, o) in (("mlp1", (n_in, n_out)), ("mlp2", (d_in, d_out))):
            sd[f"{p}.{m}.mm_projector.0.weight"], sd[f"{p}.{m}.mm_projector.0.bias"] = rand(o, i), rand(o)
            sd[f"{p}.{m}.mm_projector.1.1.weight"], sd[f"{p}.{m}.mm_projector.1.1.bias"] = rand(o, o), rand(o)
    return sd


def test_med3dvlm_mixer_published_layout():
    sd = published_mixer(MIXER_TABLE)
    assert len(sd) == 48
    ckpt = {f"model.mm_projector.{k}": v for k, v in sd.items()} | {"model.embed_tokens.weight": rand(151_666, 4)}
    converted = convert_state_dict("med3dvlm_projector", ckpt)
    model = create_projector("mixer")
    assert load_converted(model, converted).ok
    assert torch.equal(model.streams[1][1].channel_mlp[2].weight, sd["high_mixer.1.mlp2.mm_projector.1.1.weight"])
    assert torch.equal(model.streams[0][0].token_mlp[0].bias, sd["low_mixer.0.mlp1.mm_projector.0.bias"])


def test_med3dvlm_mixer_conversion_preserves_the_published_computation():
    # Tiny mixer under the published names; reference forward written from mirthAI/Med3DVLM's projector.
    table = {
        "low_mixer.0": (32, 8, 16, 32),
        "low_mixer.1": (8, 4, 32, 64),
        "high_mixer.0": (4, 6, 32, 32),
        "high_mixer.1": (6, 4, 32, 64),
    }
    sd = published_mixer(table)

    def mlp(x, p):
        return F.linear(
            F.gelu(F.linear(x, sd[p + ".mm_projector.0.weight"], sd[p + ".mm_projector.0.bias"])),
            sd[p + ".mm_projector.1.1.weight"],
            sd[p + ".mm_projector.1.1.bias"],
        )

    def layer(x, p):
        d = x.shape[-1]
        x = F.layer_norm(x, (d,), sd[p + ".ln1.weight"], sd[p + ".ln1.bias"])
        x = mlp(x.transpose(1, 2), p + ".mlp1").transpose(1, 2)
        x = F.layer_norm(x, (d,), sd[p + ".ln2.weight"], sd[p + ".ln2.bias"])
        return mlp(x, p + ".mlp2")

    low, high = rand(2, 32, 16), rand(2, 4, 32)
    want = torch.cat(
        [layer(layer(low, "low_mixer.0"), "low_mixer.1"), layer(layer(high, "high_mixer.0"), "high_mixer.1")], 1
    )
    model = create_projector("mixer_test")
    load_converted(model, convert_state_dict("med3dvlm_projector", sd))
    torch.testing.assert_close(model([low, high]), want, rtol=1e-4, atol=1e-4)


def test_med3dvlm_mlp_and_linear_types():
    mlp = {
        "model.mm_projector.mm_projector.0.weight": rand(64, 768),
        "model.mm_projector.mm_projector.0.bias": rand(64),
        "model.mm_projector.mm_projector.1.1.weight": rand(64, 64),
        "model.mm_projector.mm_projector.1.1.bias": rand(64),
    }
    model = create_projector("mlp", out_dim=64, grid_size=(2, 4, 4))
    assert load_converted(model, convert_state_dict("med3dvlm_projector", mlp)).ok
    assert torch.equal(model.projector[2].weight, mlp["model.mm_projector.mm_projector.1.1.weight"])
    # the stage-1 loader strips the first two components, leaving the projector's own names
    bare = {k[len("model.mm_projector.") :]: v for k, v in mlp.items()}
    assert set(bare) == {
        "mm_projector.0.weight",
        "mm_projector.0.bias",
        "mm_projector.1.1.weight",
        "mm_projector.1.1.bias",
    }
    assert load_converted(model, convert_state_dict("med3dvlm_projector", bare)).ok
    lin = {"model.mm_projector.weight": rand(64, 768), "model.mm_projector.bias": rand(64)}
    model = create_projector("linear", out_dim=64, grid_size=(2, 4, 4))
    assert load_converted(model, convert_state_dict("med3dvlm_projector", lin)).ok
    assert load_converted(
        model, convert_state_dict("med3dvlm_projector", {"weight": rand(64, 768), "bias": rand(64)})
    ).ok


def published_packer(prefix, dim, out):
    sd = {}
    for name in ("Wq", "Wk", "Wv", "output_linear"):
        sd[f"{prefix}resolution_attention.{name}.weight"], sd[f"{prefix}resolution_attention.{name}.bias"] = (
            rand(dim, dim),
            rand(dim),
        )
    sd[f"{prefix}resolution_attention.norm.weight"], sd[f"{prefix}resolution_attention.norm.bias"] = (
        rand(dim),
        rand(dim),
    )
    sd[f"{prefix}proj_mpls.0.weight"], sd[f"{prefix}proj_mpls.0.bias"] = rand(out, dim), rand(out)
    sd[f"{prefix}proj_mpls.2.weight"], sd[f"{prefix}proj_mpls.2.bias"] = rand(out, out), rand(out)
    return sd


def test_hsenet_two_packers_from_peft_checkpoint():
    pre = "base_model.model.model."
    ckpt = published_packer(pre + "mm_projector.", 768, 3072) | published_packer(pre + "mm_projector2.", 768, 3072)
    ckpt[pre + "layers.0.self_attn.qkv_proj.lora_A.default.weight"] = rand(16, 8)
    converted = convert_state_dict("hsenet_packer", ckpt)
    model = create_projector("hsenet_packer")
    assert load_converted(model, converted).ok
    assert torch.equal(
        model.streams[1].attn.out.weight, ckpt[pre + "mm_projector2.resolution_attention.output_linear.weight"]
    )
    assert torch.equal(model.streams[0].projector[2].bias, ckpt[pre + "mm_projector.proj_mpls.2.bias"])
    # a single bare packer loads into the one-stream variant
    assert load_converted(
        create_projector("packer"), convert_state_dict("hsenet_packer", published_packer("", 768, 3072))
    ).ok


def test_hsenet_packer_conversion_preserves_the_published_computation():
    # DCFormer (mirthAI/DCFormer): centroid = 1x4x4 average; Wq(centroid) attends to its 16 members (/sqrt(dim), softmax),
    # output_linear, residual to Wq(centroid), LayerNorm, proj_mpls (Linear, GELU, Linear).
    sd = published_packer("", 16, 24)
    model = create_projector("packer", in_dim=16, out_dim=24, grid_size=(2, 4, 8)).eval()
    load_converted(model, convert_state_dict("hsenet_packer", sd))
    x = rand(1, 64, 16)
    grid = x[0].reshape(2, 4, 8, 16)

    def lin(t, name):
        return F.linear(t, sd[f"resolution_attention.{name}.weight"], sd[f"resolution_attention.{name}.bias"])

    rows = []
    for d in range(2):
        for wb in range(2):  # the single h-block of 4 rows, two w-blocks of 4 columns
            members = grid[d, :, 4 * wb : 4 * wb + 4].reshape(16, 16)
            q = lin(members.mean(0), "Wq")
            w = torch.softmax(lin(members, "Wk") @ q / math.sqrt(16), 0)
            y = F.layer_norm(
                q + lin(w @ lin(members, "Wv"), "output_linear"),
                (16,),
                sd["resolution_attention.norm.weight"],
                sd["resolution_attention.norm.bias"],
            )
            y = F.linear(
                F.gelu(F.linear(y, sd["proj_mpls.0.weight"], sd["proj_mpls.0.bias"])),
                sd["proj_mpls.2.weight"],
                sd["proj_mpls.2.bias"],
            )
            rows.append(y)
    torch.testing.assert_close(model(x)[0], torch.stack(rows), rtol=1e-4, atol=1e-4)
