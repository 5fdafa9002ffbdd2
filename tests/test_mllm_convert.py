"""Published M3D-LaMed / Med3DVLM / HSENet checkpoint layouts -> LaMedForCausalLM, strict, same logits."""

from __future__ import annotations

import re

import pytest
import torch

from LaMed.data.tokenizer import train_tokenizer
from LaMed.models.convert import convert_state_dict, load_converted
from LaMed.models.convert.mllm import legacy_config_fields, load_stage1_projector
from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM, LaMedProcessor, MLLMCollator, prepare_tokenizer
from tests.test_import import assert_published_names


@pytest.fixture(scope="module")
def tok():
    t = train_tokenizer(["The liver is enlarged.", "No focal lesion in the spleen."] * 10, vocab_size=200)
    prepare_tokenizer(t)
    return t


def tiny(tok, model_type="phi3", **cfg):
    from transformers import CONFIG_MAPPING

    text = CONFIG_MAPPING[model_type](
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return LaMedForCausalLM(LaMedConfig(text_config=text, **prepare_tokenizer(tok), **cfg)).eval()


def logits(model, tok, volume):
    proc = LaMedProcessor(tok, model.num_image_tokens)
    b = MLLMCollator(proc.pad_token_id)(
        [
            {
                **proc.encode_example("Describe.", "The liver is enlarged."),
                "images": torch.rand(volume, generator=torch.Generator().manual_seed(1)),
            }
        ]
    )
    with torch.no_grad():
        return model(**b).logits


def llm_published(sd):
    """Our LLM keys -> the published wrapper's (``model.*`` / ``lm_head``)."""
    return {k[len("language_model.") :]: v for k, v in sd.items() if k.startswith("language_model.")}


def test_m3d_lamed_full_and_peft_checkpoints(tok):
    model = tiny(tok, vision_tower="vit3d_test", projector="spp")
    sd = model.state_dict()
    pub = llm_published(sd)
    pub.update(
        {
            f"model.vision_tower.vision_tower.{k[len('vision_tower.') :]}": v
            for k, v in sd.items()
            if k.startswith("vision_tower.")
        }
    )
    pub.update({f"model.{k}": v for k, v in sd.items() if k.startswith("mm_projector.")})
    pub["model.seg_projector.0.weight"] = torch.zeros(2, 2)  # the seg module is not part of this model
    assert_published_names(pub, "m3d_lamed")  # the release's names (reference-code table), not ours renamed
    fresh = tiny(tok, vision_tower="vit3d_test", projector="spp")
    torch.manual_seed(5)
    fresh.apply(lambda m: [p.data.normal_() for p in m.parameters(recurse=False)])
    report = load_converted(fresh, convert_state_dict("m3d_lamed", pub), strict=True)
    assert report.ok
    assert torch.equal(logits(fresh, tok, (1, 16, 64, 64)), logits(model, tok, (1, 16, 64, 64)))

    # PEFT-prefixed stage-2 file: base_layer weights plus LoRA pairs, merged as W + (alpha/r) B A.
    key = "model.layers.0.self_attn.qkv_proj"
    a, b = torch.randn(4, 32), torch.randn(pub[f"{key}.weight"].shape[0], 4)
    peft = {f"base_model.model.{k}": v for k, v in pub.items() if not k.startswith(key)}
    peft[f"base_model.model.{key}.base_layer.weight"] = pub[f"{key}.weight"]
    peft[f"base_model.model.{key}.lora_A.default.weight"] = a
    peft[f"base_model.model.{key}.lora_B.default.weight"] = b
    conv = convert_state_dict("m3d_lamed", peft, lora_scaling=2.0)
    torch.testing.assert_close(conv[f"language_model.{key}.weight"], pub[f"{key}.weight"] + 2.0 * b @ a)
    assert load_converted(fresh, conv, strict=True).ok
    assert legacy_config_fields("m3d_lamed") == {"image_insertion": "legacy_offset", "legacy_image_offset": 1}


def test_m3d_vocabulary_mismatch_is_reported(tok):
    model = tiny(tok, vision_tower="vit3d_test", projector="spp")
    sd = model.state_dict()
    pub = llm_published(sd)
    pub["model.embed_tokens.weight"] = torch.zeros(32015, 32)  # the Phi-3 release's vocabulary
    pub.update({f"model.vision_tower.vision_tower.{k[13:]}": v for k, v in sd.items() if k.startswith("vision_tower.")})
    pub.update({f"model.{k}": v for k, v in sd.items() if k.startswith("mm_projector.")})
    with pytest.raises(KeyError, match=r"language_model.model.embed_tokens.weight: \(32015, 32\)"):
        load_converted(model, convert_state_dict("m3d_lamed", pub), strict=True)


def _m3v_projector_name(key: str) -> str:
    """Ours ``mm_projector.streams.{s}.{i}.{token_mlp|channel_mlp}.{0|2}.x`` -> Med3DVLM's mixer names."""
    m = re.match(r"mm_projector\.streams\.(\d)\.(\d+)\.(.+)$", key)
    stream, layer, rest = m.groups()
    rest = re.sub(
        r"^(token_mlp|channel_mlp)\.(\d+)\.",
        lambda g: (
            {"token_mlp": "mlp1", "channel_mlp": "mlp2"}[g.group(1)]
            + ".mm_projector."
            + ("0." if g.group(2) == "0" else f"{int(g.group(2)) // 2}.1.")
        ),
        rest,
    )
    return f"model.mm_projector.{'low' if stream == '0' else 'high'}_mixer.{layer}.{rest}"


def test_med3dvlm_checkpoint(tok):
    kw = dict(vision_tower="dcformer_test", vision_feature_stages=[3, 4], projector="mixer_test")
    model = tiny(tok, "qwen2", **kw)
    sd = model.state_dict()
    pub = llm_published(sd)
    pub.update({f"model.vision_tower.vision_tower.{k[13:]}": v for k, v in sd.items() if k.startswith("vision_tower.")})
    pub.update({_m3v_projector_name(k): v for k, v in sd.items() if k.startswith("mm_projector.")})
    assert "model.mm_projector.low_mixer.0.mlp1.mm_projector.1.1.weight" in pub
    # (the tiny DCFormer has attention stages, which the released tower does not: its names are left out)
    assert_published_names([k for k in pub if not k.startswith("model.vision_tower.")], "med3dvlm")
    fresh = tiny(tok, "qwen2", **kw)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    assert load_converted(fresh, convert_state_dict("med3dvlm", pub), strict=True).ok
    assert torch.equal(logits(fresh, tok, (1, 32, 64, 64)), logits(model, tok, (1, 32, 64, 64)))


def test_hsenet_partial_release_and_stage1_file(tok):
    model = tiny(
        tok, vision_tower=["vit3d_test", "vit3d_test"], projector="packer", projector_overrides={"window": [1, 2, 2]}
    )
    sd = model.state_dict()
    names = {"q": "Wq", "k": "Wk", "v": "Wv", "out": "output_linear", "norm": "norm"}
    release = {}
    for k, v in sd.items():
        m = re.match(r"mm_projector\.streams\.(\d)\.(attn|projector)\.(\w+)\.(.+)$", k)
        if not m:
            continue
        s, part, name, rest = m.groups()
        root = "model.mm_projector" + ("2" if s == "1" else "")
        sub = f"resolution_attention.{names[name]}" if part == "attn" else f"proj_mpls.{name}"
        release[f"base_model.model.{root}.{sub}.{rest}"] = v
    release["base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.default.weight"] = torch.zeros(16, 32)
    with pytest.raises(KeyError, match="lacks"):
        convert_state_dict("hsenet", release)
    conv = convert_state_dict("hsenet", release, allow_partial=True)
    proj = {k: v for k, v in conv.items() if k.startswith("mm_projector.")}
    assert set(proj) == {k for k in sd if k.startswith("mm_projector.")}
    assert all(torch.equal(proj[k], sd[k]) for k in proj)
    assert "language_model.model.layers.0.self_attn.qkv_proj.lora_A" in conv

    # A stage-1 file (projector + full embed_tokens) loads both parts, strictly.
    fresh = tiny(
        tok, vision_tower=["vit3d_test", "vit3d_test"], projector="packer", projector_overrides={"window": [1, 2, 2]}
    )
    stage1 = {k.replace("base_model.model.", ""): v for k, v in release.items() if "lora" not in k}
    stage1["model.embed_tokens.weight"] = torch.full_like(sd["language_model.model.embed_tokens.weight"], 0.5)
    info = load_stage1_projector(fresh, stage1, family="hsenet")
    assert info["embed_tokens"] and torch.equal(
        fresh.get_input_embeddings().weight, stage1["model.embed_tokens.weight"]
    )
    assert all(torch.equal(fresh.state_dict()[k], sd[k]) for k in proj)
