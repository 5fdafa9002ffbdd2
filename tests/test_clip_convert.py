"""Published 3D CLIP layouts (M3D-CLIP, HSENet stage 1 / 2, Med3DVLM DCFormer_SigLIP) load strictly.

The synthetic checkpoints use the published key names of the public code (BAAI-DCAI/M3D,
YanzhaoShi/HSENet, mirthAI/Med3DVLM) at tiny
widths; the text towers are real HF ``BertModel`` / ``DistilBertModel`` state dicts under the
published ``language_encoder.`` prefix, as the published code wraps them.
"""

from __future__ import annotations

import math

import pytest
import torch

from LaMed.models.clip import LamedClipModel
from LaMed.models.convert import convert_state_dict, list_converters, load_converted
from LaMed.models.convert.clip import load_published_clip, published_clip_config
from tests.test_import import assert_published_names

W, LAYERS, MLP = 32, 2, 64  # tiny ViT width / depth / MLP
IMG, PATCH = (16, 64, 64), (4, 16, 16)  # 4 x 4 x 4 = 64 tokens, patch vector 256


def rand(*shape):
    return torch.randn(*shape)


def published_vit(prefix: str, cls: bool = True, slices: int = 0) -> dict:
    """MONAI-1.3 ViT names (138 tensors at 12 blocks with CLS; +12 for the 2E3 scorer)."""
    n = math.prod(i // p for i, p in zip(IMG, PATCH))
    sd = {
        f"{prefix}patch_embedding.position_embeddings": rand(1, n, W),
        f"{prefix}patch_embedding.patch_embeddings.1.weight": rand(W, math.prod(PATCH)),
        f"{prefix}patch_embedding.patch_embeddings.1.bias": rand(W),
        f"{prefix}norm.weight": rand(W),
        f"{prefix}norm.bias": rand(W),
    }
    if cls:
        sd[f"{prefix}cls_token"] = rand(1, 1, W)
    for i in range(LAYERS):
        b = f"{prefix}blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": rand(W),
                b + "norm1.bias": rand(W),
                b + "norm2.weight": rand(W),
                b + "norm2.bias": rand(W),
                b + "attn.qkv.weight": rand(3 * W, W),
                b + "attn.out_proj.weight": rand(W, W),
                b + "attn.out_proj.bias": rand(W),
                b + "mlp.linear1.weight": rand(MLP, W),
                b + "mlp.linear1.bias": rand(MLP),
                b + "mlp.linear2.weight": rand(W, MLP),
                b + "mlp.linear2.bias": rand(W),
            }
        )
    if slices:
        for name in ("Wq", "output_linear"):
            sd[f"{prefix}slice_guided_attention.{name}.weight"] = rand(W, W)
            sd[f"{prefix}slice_guided_attention.{name}.bias"] = rand(W)
        for name in ("Wk", "Wv"):
            sd[f"{prefix}slice_guided_attention.{name}.weight"] = rand(W, slices)
            sd[f"{prefix}slice_guided_attention.{name}.bias"] = rand(W)
        sd[f"{prefix}slice_guided_attention.norm.weight"] = rand(W)
        sd[f"{prefix}slice_guided_attention.norm.bias"] = rand(W)
        sd[f"{prefix}patch_score_proj.weight"] = rand(1, W)
        sd[f"{prefix}patch_score_proj.bias"] = rand(1)
    return sd


def published_bert(prefix: str, width: int = 64, with_position_ids: bool = True) -> dict:
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(
            vocab_size=120,
            hidden_size=width,
            num_hidden_layers=2,
            num_attention_heads=width // 64 or 1,
            intermediate_size=96,
            max_position_embeddings=40,
        )
    )
    sd = {prefix + k: v.clone() for k, v in bert.state_dict().items()}
    assert prefix + "pooler.dense.weight" in sd  # the published M3D-CLIP file carries the unused pooler
    if with_position_ids:  # transformers < 4.31 saved this buffer
        sd[prefix + "embeddings.position_ids"] = torch.arange(40)[None]
    return sd


def published_m3d_clip(prefix: str = "", scale: float = 3.1) -> dict:
    sd = published_vit(prefix + "vision_encoder.")
    sd.update(published_bert(prefix + "language_encoder."))
    sd.update(
        {
            prefix + "mm_vision_proj.weight": rand(24, W),
            prefix + "mm_vision_proj.bias": rand(24),
            prefix + "mm_language_proj.weight": rand(24, 64),
            prefix + "mm_language_proj.bias": rand(24),
            prefix + "logit_scale": torch.tensor(scale),
        }
    )
    return sd


PUBLISHED_CONFIG = {
    "img_size": list(IMG),
    "patch_size": list(PATCH),
    "num_heads": 4,
    "num_slices": 8,
    "language_model_name_or_path": "/home/someone/bert-base-uncased",
    "gather_loss": True,
    "local_loss": False,
}


def test_clip_families_are_registered():
    assert {"m3d_clip", "hsenet_clip_stage1", "hsenet_clip_stage2", "med3dvlm_siglip"} <= set(list_converters())


@pytest.mark.parametrize("family", ["m3d_clip", "hsenet_clip_stage1"])
def test_m3d_and_hsenet_stage1_load_strictly_with_values_in_place(family):
    raw = published_m3d_clip()
    # the names are the release's (reference-code table; the old-transformers position_ids aside)
    assert_published_names([k for k in raw if not k.endswith("position_ids")], family)
    model, report = load_published_clip(family, raw, published_config=PUBLISHED_CONFIG)
    assert report.ok
    c = model.config
    # The published raw logit scale is reproduced: similarities are multiplied by the parameter itself.
    assert c.logit_scale_mode == "raw" and model.scale.item() == pytest.approx(3.1)
    assert c.vision_overrides["img_size"] == list(IMG) and c.vision_overrides["num_layers"] == LAYERS
    assert c.text_config.hidden_size == 64 and c.text_config.vocab_size == 120
    assert "/home/someone" not in c.to_json_string()  # no absolute paths carried over
    sd = model.state_dict()
    assert torch.equal(sd["visual_projection.weight"], raw["mm_vision_proj.weight"])
    assert torch.equal(
        sd["text_model.encoder.layer.1.output.dense.weight"],
        raw["language_encoder.encoder.layer.1.output.dense.weight"],
    )
    assert torch.equal(sd["vision_model.blocks.1.attn.qkv.weight"], raw["vision_encoder.blocks.1.attn.qkv.weight"])
    assert torch.equal(sd["vision_model.cls_token"], raw["vision_encoder.cls_token"])
    # Every published tensor but the documented drops is used.
    dropped = {k for k in raw if k.startswith("language_encoder.pooler.") or k.endswith("position_ids")}
    assert len(sd) == len(raw) - len(dropped)


def test_m3d_clip_embedding_matches_a_direct_computation_on_the_published_weights():
    raw = published_m3d_clip()
    model, _ = load_published_clip("m3d_clip", raw, published_config=PUBLISHED_CONFIG)
    model.eval()
    x = torch.rand(1, 1, *IMG)
    ids = torch.tensor([[2, 17, 5, 3]])
    with torch.no_grad():
        tokens = model.vision_model.forward_features(x)  # (1, 1 + 64, W)
        # Published: project all tokens, normalise per token, take token 0.
        proj = torch.nn.functional.linear(tokens, raw["mm_vision_proj.weight"], raw["mm_vision_proj.bias"])
        expected_img = torch.nn.functional.normalize(proj, dim=-1)[:, 0]
        hidden = model.text_model(input_ids=ids).last_hidden_state
        proj_t = torch.nn.functional.linear(hidden, raw["mm_language_proj.weight"], raw["mm_language_proj.bias"])
        expected_txt = torch.nn.functional.normalize(proj_t, dim=-1)[:, 0]
        out = model(image=x, input_ids=ids)
    torch.testing.assert_close(out.image_embeds, expected_img)
    torch.testing.assert_close(out.text_embeds, expected_txt)
    torch.testing.assert_close(out.logits_per_image, 3.1 * expected_img @ expected_txt.T)


def test_hsenet_stage2_loads_with_its_frozen_stage1_teacher():
    raw = published_vit("vision_encoder.", slices=12)
    raw.update(published_bert("language_encoder."))
    raw.update(
        {
            "mm_vision_proj.weight": rand(24, W),
            "mm_vision_proj.bias": rand(24),
            "mm_language_proj.weight": rand(24, 64),
            "mm_language_proj.bias": rand(24),
            "logit_scale": torch.tensor(2.0),
        }
    )
    raw.update(published_m3d_clip("stage1_pretrained_CLIP.", scale=4.0))
    assert_published_names([k for k in raw if not k.endswith("position_ids")], "hsenet_clip_stage2")
    model, report = load_published_clip("hsenet_clip_stage2", raw, published_config=PUBLISHED_CONFIG)
    assert report.ok
    assert model.config.vision_encoder == "vit3d_2e3_base" and model.config.vision_overrides["slice_dim"] == 12
    assert model.teacher.config.vision_encoder == "vit3d_base"
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert torch.equal(model.teacher.visual_projection.weight, raw["stage1_pretrained_CLIP.mm_vision_proj.weight"])
    assert torch.equal(model.vision_model.patch_score_proj.weight, raw["vision_encoder.patch_score_proj.weight"])
    assert model.teacher.logit_scale.item() == 4.0 and model.logit_scale.item() == 2.0
    # Forward with the 2D slice features (B, S, C_2d) and the consistency term against the teacher.
    model.train()
    out = model(
        image=torch.rand(2, 1, *IMG),
        input_ids=torch.randint(0, 120, (2, 6)),
        slice_features=torch.randn(2, 8, 12),
        step=0,
    )
    assert torch.isfinite(out.loss) and out.loss_consistency is not None
    assert out.loss.item() == pytest.approx(out.loss_itc.item() + 0.1 * out.loss_consistency.item(), rel=1e-5)
    # Without the teacher keys the conversion asks for an explicit choice.
    no_teacher = {k: v for k, v in raw.items() if not k.startswith("stage1_pretrained_CLIP.")}
    with pytest.raises(KeyError, match="stage1_pretrained_CLIP"):
        convert_state_dict("hsenet_clip_stage2", no_teacher)
    model2, report2 = load_published_clip(
        "hsenet_clip_stage2", no_teacher, published_config=PUBLISHED_CONFIG, drop_teacher=True
    )
    assert report2.ok and not hasattr(model2, "teacher")


def test_med3dvlm_dec_clip_sigmoid_layout():
    from transformers import DistilBertConfig, DistilBertModel

    from LaMed.models.encoders import create_encoder

    # M3V DCFormer layout: every key starts with "encoder.", layer scale named "scale" (mirthAI/Med3DVLM).
    enc = create_encoder("dcformer_test", stem_activation=False, input_layout="HWD")
    raw = {f"vision_encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
    distil = DistilBertModel(
        DistilBertConfig(vocab_size=150, dim=64, n_layers=2, n_heads=2, hidden_dim=96, max_position_embeddings=48)
    )
    raw.update({f"language_encoder.{k}": v.clone() for k, v in distil.state_dict().items()})
    raw.update(
        {
            "mm_vision_proj.weight": rand(20, 32),
            "mm_vision_proj.bias": rand(20),
            "mm_language_proj.weight": rand(20, 64),
            "mm_language_proj.bias": rand(20),
            # t_prime is created from a numpy float64 in the published code.
            "t_prime": torch.tensor(math.log(1 / 0.07), dtype=torch.float64),
            "bias": torch.tensor(-1.5),
        }
    )
    model, report = load_published_clip("med3dvlm_siglip", raw, published_config={"input_size": [64, 64, 32]})
    assert report.ok
    c = model.config
    assert (c.loss_type, c.logit_scale_mode, c.siglip_symmetric, c.vision_pooling) == ("siglip", "exp", True, "mean")
    assert c.vision_overrides["img_size"] == [32, 64, 64]  # (H, W, D) -> (D, H, W)
    assert c.logit_scale_max is None  # DEC_CLIP's exp(t') has no upper bound
    assert model.logit_scale.dtype == torch.float32
    assert model.scale.item() == pytest.approx(1 / 0.07, rel=1e-5) and model.logit_bias.item() == -1.5
    assert c.text_config.model_type == "distilbert" and c.text_config.vocab_size == 150
    x = torch.rand(2, 1, 32, 64, 64)
    model.eval()
    with torch.no_grad():
        out = model(image=x, input_ids=torch.randint(0, 150, (2, 5)))
        # Published image embedding: mean of the s4 tokens, projection, L2 normalisation.
        s4 = model.vision_model.forward_features(x).mean(1)
        ref = torch.nn.functional.normalize(
            torch.nn.functional.linear(s4, raw["mm_vision_proj.weight"], raw["mm_vision_proj.bias"]), dim=-1
        )
    torch.testing.assert_close(out.image_embeds, ref)


def test_unexpected_keys_are_reported_by_name():
    raw = published_m3d_clip()
    raw["mm_extra_head.weight"] = rand(3, 3)
    sd = convert_state_dict("m3d_clip", raw)
    model = LamedClipModel(published_clip_config("m3d_clip", sd, PUBLISHED_CONFIG))
    with pytest.raises(KeyError, match="mm_extra_head.weight"):
        load_converted(model, sd, strict=True)


def test_wrong_geometry_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="img_size"):
        published_clip_config("m3d_clip", published_m3d_clip(), {"img_size": [32, 256, 256]})
    with pytest.raises(KeyError, match="vision_encoder"):
        convert_state_dict("m3d_clip", {"foo.weight": rand(2)})


def test_published_checkpoint_folder_round_trip(tmp_path):
    """A folder as published (config.json + safetensors) converts, and our save_pretrained reloads it."""
    import json

    from safetensors.torch import save_file
    from transformers import AutoModel

    raw = published_m3d_clip()
    save_file({k: v.contiguous() for k, v in raw.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["M3DCLIP"], **PUBLISHED_CONFIG}))
    model, report = load_published_clip("m3d_clip", tmp_path)
    assert report.ok
    out = tmp_path / "converted"
    model.save_pretrained(out)
    again = AutoModel.from_pretrained(out)
    assert isinstance(again, LamedClipModel) and again.config.logit_scale_mode == "raw"
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_lamed_clip_vision_starts_a_tower_from_our_own_clip(tmp_path):
    """``lamed_clip_vision``: the ``vision_model`` of a saved LaMed CLIP loads strictly into a fresh
    registry tower (the MLLM recipes' ``pretrained_vision``) and gives the same features."""
    from safetensors.torch import load_file

    from LaMed.models.encoders import create_encoder

    model, _ = load_published_clip("m3d_clip", published_m3d_clip(), published_config=PUBLISHED_CONFIG)
    model.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    tower = create_encoder(model.config.vision_encoder, **model.config.vision_overrides)
    report = load_converted(tower, convert_state_dict("lamed_clip_vision", sd), strict=True, source=str(tmp_path))
    assert report.ok
    x = torch.rand(2, 1, *IMG)
    with torch.no_grad():
        torch.testing.assert_close(tower.eval()(x), model.vision_model.eval()(x))
    with pytest.raises(KeyError, match="no 'vision_model.\\*' key"):
        convert_state_dict("lamed_clip_vision", {"text_model.x": torch.zeros(1)})
