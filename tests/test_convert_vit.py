"""Converters of the published 3D-ViT layouts (m3d_vit, segvol_vit, hsenet_vit, hsenet_2e3, monai_vit).

State dicts are built from the key layouts of the public code (BAAI-DCAI/M3D,
BAAI-DCAI/SegVol, YanzhaoShi/HSENet, lihaoqin168/R1Seg-3D) on the tiny geometry, wrapped in each published file's
prefixes / containers, converted and loaded with strict=True; values are checked to land on the
same parameters.
"""

from __future__ import annotations

import pytest
import torch
from test_encoders_vit import hsenet_2e3_extra_layout, published_vit_layout, random_sd

from LaMed.models.convert import convert_state_dict, list_converters, load_converted
from LaMed.models.encoders import create_encoder

TINY = dict(hidden=96, mlp=192, layers=2, patch_dim=1024, tokens=64)


def vit_sd(cls=True, seed=0):
    return random_sd(published_vit_layout(cls=cls, **TINY), seed=seed)


def prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def assert_loads(name, converted, reference, **kw):
    m = create_encoder(name, **kw)
    assert load_converted(m, converted, strict=True).ok
    own = m.state_dict()
    for k, v in reference.items():
        assert torch.equal(own[k], v), k


def test_families_registered():
    assert {"m3d_vit", "segvol_vit", "hsenet_vit", "hsenet_2e3", "monai_vit"} <= set(list_converters())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,  # pretrained_ViT.bin
        lambda sd: {
            **prefixed(sd, "vision_encoder."),
            "mm_vision_proj.weight": torch.zeros(96, 96),
            "logit_scale": torch.tensor(2.66),
        },  # M3D-CLIP
        lambda sd: {  # M3D-LaMed: two ViTs (tower with CLS, SegVol encoder without)
            **prefixed(sd, "model.vision_tower.vision_tower."),
            **prefixed(vit_sd(cls=False, seed=1), "model.seg_module.image_encoder."),
            "model.mm_projector.projector.0.weight": torch.zeros(8, 96),
        },
        lambda sd: prefixed(sd, "base_model.model.model.vision_tower.vision_tower."),  # PEFT-wrapped
    ],
    ids=["bare", "m3d_clip", "lamed", "peft"],
)
def test_m3d_vit(wrap):
    sd = vit_sd()
    out = convert_state_dict("m3d_vit", wrap(sd))
    assert set(out) == set(sd)
    assert_loads("vit3d_test", out, sd)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": prefixed(sd, "model.encoder."), "epoch": 2000},  # ViT_pretrain.ckpt
        lambda sd: {"model": prefixed(sd, "module.image_encoder."), "optimizer": {}, "epoch": 1},  # SegVol_v1.pth
        lambda sd: {
            **prefixed(sd, "model.image_encoder."),
            "model.mask_decoder.iou_token.weight": torch.zeros(1, 96),
        },  # HF BAAI/SegVol
        lambda sd: {**prefixed(sd, "image_encoder."), "logit_scale": torch.tensor(1.0)},  # r1seg_3dsam.bin
        lambda sd: prefixed(sd, "model.vision_module.image_encoder."),  # R1Seg-3D LLM
        lambda sd: {  # M3D-LaMed full checkpoint: the seg encoder, not the tower
            **prefixed(vit_sd(cls=True, seed=1), "model.vision_tower.vision_tower."),
            **prefixed(sd, "model.seg_module.image_encoder."),
        },
    ],
    ids=["vit_pretrain_ckpt", "segvol_v1", "hf_segvol", "r1seg_sam", "r1seg_llm", "lamed_seg_module"],
)
def test_segvol_vit(wrap):
    sd = vit_sd(cls=False)
    out = convert_state_dict("segvol_vit", wrap(sd))
    assert set(out) == set(sd) and len(out) == 3 + 2 * 11 + 2  # 137 at full depth
    assert_loads("vit3d_test", out, sd, cls_token=False)


def test_hsenet_towers():
    stage1, stage2 = vit_sd(seed=2), {**vit_sd(seed=3), **random_sd(hsenet_2e3_extra_layout(96, 48), seed=4)}
    clip2 = {
        **prefixed(stage2, "vision_encoder."),
        **prefixed(stage1, "stage1_pretrained_CLIP.vision_encoder."),
        "language_encoder.pooler.dense.weight": torch.zeros(4, 4),
        "logit_scale": torch.tensor(2.66),
    }
    vlm = {
        **prefixed(stage1, "model.vision_tower.vision_tower_stage1."),
        **prefixed(stage2, "model.vision_tower.vision_tower_stage2."),
    }
    for ckpt in (clip2, vlm):
        assert_loads("vit3d_2e3_test", convert_state_dict("hsenet_2e3", ckpt), stage2)
        assert_loads("vit3d_test", convert_state_dict("hsenet_vit", ckpt), stage1)
    # Stage-1 CLIP file: its only tower sits under vision_encoder.
    assert_loads("vit3d_test", convert_state_dict("hsenet_vit", prefixed(stage1, "vision_encoder.")), stage1)


def test_monai_newer_version_keys_are_dropped():
    """A MONAI 1.6 ViT state dict (extra norm_cross_attn) converts and gives MONAI's output."""
    from monai.networks.nets import ViT as MonaiViT

    torch.manual_seed(0)
    ref = MonaiViT(
        in_channels=1,
        img_size=(16, 64, 64),
        patch_size=(4, 16, 16),
        hidden_size=96,
        mlp_dim=192,
        num_layers=2,
        num_heads=4,
        proj_type="perceptron",
        classification=False,
    ).eval()
    sd = ref.state_dict()
    assert any(".norm_cross_attn." in k for k in sd)
    sd["blocks.0.cross_attn.to_q.weight"] = torch.zeros(96, 96)  # MONAI 1.4/1.5 adds these too
    out = convert_state_dict("monai_vit", sd)
    assert not any("cross_attn" in k for k in out)
    m = create_encoder("vit3d_test", cls_token=False).eval()
    load_converted(m, out, strict=True)
    x = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_features(x), ref(x)[0], atol=1e-5, rtol=1e-5)


def test_published_full_size_through_converter_meta():
    layout = published_vit_layout()
    sd = {"model.vision_tower.vision_tower." + k: torch.empty(s, device="meta") for k, s in layout.items()}
    out = convert_state_dict("m3d_vit", sd)
    assert len(out) == 138
    with torch.device("meta"):
        m = create_encoder("vit3d_base")
    assert load_converted(m, out, strict=True).ok


def test_errors_are_readable():
    sd = vit_sd()
    two = {**prefixed(sd, "a."), **prefixed(sd, "b.")}
    with pytest.raises(KeyError, match="several ViTs.*'a.', 'b.'"):
        convert_state_dict("m3d_vit", two)
    assert set(convert_state_dict("m3d_vit", two, prefix="b.")) == set(sd)
    with pytest.raises(KeyError, match="no ViT found"):
        convert_state_dict("segvol_vit", {"foo.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="ViT prefixes present"):
        convert_state_dict("m3d_vit", sd, prefix="vision_encoder.")
    # A tower converted for the wrong model fails strict loading with the key report.
    with pytest.raises(KeyError, match="missing in checkpoint"):
        load_converted(create_encoder("vit3d_2e3_test"), convert_state_dict("m3d_vit", sd), strict=True)
