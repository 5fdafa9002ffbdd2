"""Published M3D-LaMed (with seg module) and R1Seg-3D LLM key layouts load strictly through the converters.

Synthetic state dicts in the published layouts of the public code (BAAI-DCAI/M3D,
lihaoqin168/R1Seg-3D) are written from a tiny model's tensors by renaming them as the published code names them
(the mapping below is written from the reference tables, independently of the converters); the
converted dicts must load with ``strict=True`` and give back every tensor. Published sizes are
checked on the meta device (no memory).
"""

from __future__ import annotations

import pytest
import torch

from tests.test_import import assert_published_names
from tests.test_reasoning_model import build


@pytest.fixture(scope="module")
def tok():
    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.models.mllm import prepare_tokenizer
    from tests.test_reasoning_model import TEXTS

    t = train_tokenizer(TEXTS, vocab_size=300)
    prepare_tokenizer(t)
    return t


def _published_llm_key(k):
    """The release name of an LLM key (``language_model.model.*`` -> ``model.*``, ``lm_head``), else None."""
    if k.startswith("language_model.model."):
        return "model." + k[len("language_model.model.") :]
    return "lm_head.weight" if k == "language_model.lm_head.weight" else None


def published_m3d(sd):
    """LaMed keys -> M3D-LaMed release keys (copies, independent of the model's storage)."""
    out = {}
    for k, v in sd.items():
        v = v.clone()
        if _published_llm_key(k):
            out[_published_llm_key(k)] = v
        elif k.startswith("vision_tower."):
            out["model.vision_tower.vision_tower." + k[len("vision_tower.") :]] = v
        elif k.startswith(("mm_projector.", "seg_projector.", "seg_module.")):
            out["model." + k] = v
        else:
            raise AssertionError(f"unmapped key {k}")
    return out


def published_r1seg(sd):
    """LaMed keys -> R1Seg-3D LLM release keys (vision_module = the step-1 SAM, mask3D_downscaling)."""
    out = {}
    for k, v in sd.items():
        v = v.clone()
        if _published_llm_key(k):
            out[_published_llm_key(k)] = v
        elif k.startswith("vision_tower."):
            out["model.vision_module.image_encoder." + k[len("vision_tower.") :]] = v
        elif k.startswith("seg_module."):
            out["model.vision_module." + k[len("seg_module.") :].replace("mask_downscaling", "mask3D_downscaling")] = v
        elif k.startswith(("mm_projector.", "seg_projector.")):
            out["model." + k] = v
        else:
            raise AssertionError(f"unmapped key {k}")
    # vestigial CLIP-style parameters of R1Seg3DSAM, never used
    out["model.vision_module.mm_vision_proj.weight"] = torch.zeros(4, 4)
    out["model.vision_module.mm_language_proj.weight"] = torch.zeros(4, 4)
    out["model.vision_module.logit_scale"] = torch.zeros(())
    return out


def peft_wrap(sd, target: str, rank: int = 2):
    """PEFT layout with one LoRA pair on ``target`` whose fold (W + 2 B A) must give back ``sd[target]``."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if k == target:
            a = torch.randn(rank, v.shape[1], generator=g)
            b = torch.randn(v.shape[0], rank, generator=g)
            mod = k[: -len(".weight")]
            out[f"base_model.model.{mod}.base_layer.weight"] = v - 2.0 * (b @ a)
            out[f"base_model.model.{mod}.lora_A.default.weight"] = a
            out[f"base_model.model.{mod}.lora_B.default.weight"] = b
        else:
            out["base_model.model." + k] = v
    return out


def _check_roundtrip(model, converted):
    from LaMed.models.convert import load_converted

    ref = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.data.zero_()
    report = load_converted(model, converted, strict=True, source="synthetic")
    assert report.ok
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], atol=1e-5, rtol=1e-5, msg=k)


def test_m3d_lamed_seg_full_and_peft_load_strictly(tok):
    from LaMed.models.convert import convert_state_dict

    model = build(
        tok, shared=False, seg_overrides=dict(upscale_norm="full", point_convention="segvol", pe_axis_order="segvol")
    )
    pub = published_m3d(model.state_dict())
    assert_published_names(pub, "m3d_lamed_seg")  # the release's names (reference-code table), not ours renamed
    assert sum(k.startswith("model.seg_projector.") for k in pub) == 4
    pub["model.seg_module.image_encoder.blocks.0.norm_cross_attn.weight"] = torch.ones(96)  # MONAI >= 1.4 extra
    _check_roundtrip(model, convert_state_dict("m3d_lamed_seg", pub))
    target = "model.layers.0.self_attn.qkv_proj.weight"
    _check_roundtrip(model, convert_state_dict("m3d_lamed_seg", peft_wrap(published_m3d(model.state_dict()), target)))
    plain = {k: v for k, v in pub.items() if not k.startswith(("model.seg_projector.", "model.seg_module."))}
    with pytest.raises(KeyError, match="seg_projector"):
        convert_state_dict("m3d_lamed_seg", plain)


def test_r1seg_llm_loads_strictly_with_the_shared_encoder(tok):
    from LaMed.models.convert import convert_state_dict

    model = build(
        tok,
        shared=True,
        seg_overrides=dict(
            point_prompts=False, mask_downscaling="conv3d", refine_passes=2, upscale_norm="full", pe_axis_order="segvol"
        ),
    )
    pub = published_r1seg(model.state_dict())
    assert_published_names(pub, "r1seg_llm")
    assert not any(k.startswith("model.vision_tower") for k in pub)
    _check_roundtrip(model, convert_state_dict("r1seg_llm", pub))
    target = "model.layers.1.mlp.gate_up_proj.weight"
    _check_roundtrip(model, convert_state_dict("r1seg_llm", peft_wrap(published_r1seg(model.state_dict()), target)))


def test_published_head_sizes_on_meta_device():
    """M3D-LaMed Phi-3 with seg: seg_projector 11,800,320 params, seg module 276 tensors / 117,331,280 values
    (137 image encoder + 17 prompt encoder + 122 mask decoder); R1Seg-3D: the encoder is the tower."""
    from transformers import CONFIG_MAPPING

    from LaMed.models.convert.lamed_seg import m3d_lamed_seg_fields
    from LaMed.models.convert.r1seg_llm import r1seg_llm_fields
    from LaMed.models.reasoning import LaMedSegConfig, LaMedSegForCausalLM

    phi3 = CONFIG_MAPPING["phi3"](
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=1,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32015,
    )
    with torch.device("meta"):
        m3d = LaMedSegForCausalLM(
            LaMedSegConfig(text_config=phi3, vision_tower="vit3d_base", projector="spp", **m3d_lamed_seg_fields())
        )
        r1 = LaMedSegForCausalLM(LaMedSegConfig(text_config=phi3, **r1seg_llm_fields()))
    sd = m3d.state_dict()
    seg = [k for k in sd if k.startswith("seg_module.")]
    assert len(seg) == 276
    assert sum(k.startswith("seg_module.image_encoder.") for k in seg) == 137
    assert sum(k.startswith("seg_module.prompt_encoder.") for k in seg) == 17
    assert sum(k.startswith("seg_module.mask_decoder.") for k in seg) == 122
    assert sum(sd[k].numel() for k in seg) == 117_331_280
    assert sum(p.numel() for p in m3d.seg_projector.parameters()) == 11_800_320
    assert m3d.num_image_tokens == 256 and sum(k.startswith("vision_tower.") for k in sd) == 138
    sd = r1.state_dict()
    assert not any(k.startswith("seg_module.image_encoder.") for k in sd)
    assert sum(k.startswith("vision_tower.") for k in sd) == 137  # SegVol-geometry ViT without CLS
    assert sum(k.startswith("seg_module.prompt_encoder.") for k in sd) == 12  # no point / box embeddings
    assert r1.num_image_tokens == 256 and r1.seg_module.config.refine_passes == 2


def test_seg_init_from_a_saved_segmentation_model_fills_the_shared_tower(tok, tmp_path):
    from LaMed.models.reasoning.build import load_seg_weights
    from LaMed.models.segmentation import create_seg_model

    seg = create_seg_model(
        "segvol_tiny", img_size=(16, 64, 64), image_encoder_overrides=dict(cls_token=False, patch_size=(4, 16, 16))
    )
    seg.save_pretrained(tmp_path / "seg")
    for shared in (True, False):
        fields = (
            {}
            if shared
            else dict(seg_overrides=dict(image_encoder_overrides=dict(cls_token=False, patch_size=(4, 16, 16))))
        )
        model = build(tok, shared, **fields)
        reports = load_seg_weights(model, str(tmp_path / "seg"))
        assert all(r.ok for r in reports.values())
        ref = seg.state_dict()
        enc = model.towers[0] if shared else model.seg_module.image_encoder
        for k, v in enc.state_dict().items():
            assert torch.equal(v, ref["image_encoder." + k])
        for k, v in model.seg_module.mask_decoder.state_dict().items():
            assert torch.equal(v, ref["mask_decoder." + k])
    with pytest.raises(FileNotFoundError):
        load_seg_weights(model, str(tmp_path / "missing"))
