"""``lamed import FAMILY SRC DST``: a published checkpoint (as downloaded) -> a LaMed model folder.

    lamed import m3d_clip  ~/hf/M3D-CLIP            models/m3d_clip   --tokenizer bert-base-uncased
    lamed import segvol    ~/hf/SegVol              models/segvol
    lamed import m3d_lamed ~/hf/M3D-LaMed-Phi-3-4B  models/m3d_lamed_phi3
    lamed import med3dvlm  ~/hf/Med3DVLM-Qwen-2.5-7B models/med3dvlm
    lamed import m3d_lamed_seg ~/hf/M3D-LaMed-Phi-3-4B models/m3d_lamed_seg_phi3
    lamed import r1seg_llm ~/hf/R1Seg-3D-Phi-3-4B   models/r1seg3d_phi3

``SRC`` is the downloaded folder (or one weights file); ``DST`` receives ``config.json``,
``model.safetensors`` and the tokenizer (plus ``lamed_processor.json`` for report / VQA and
reasoning-segmentation models),
loadable with ``from_pretrained`` (no ``trust_remote_code``) and runnable with ``lamed predict``.
The weights go through the family's converter (``LaMed.models.convert``) and load **strictly**;
the key report (missing / unexpected / mis-shaped keys) is printed, and a mismatch is an error.
``--config JSON`` replaces fields of the config derived for the family (e.g. a smaller published
variant, or sizes the checkpoint does not reveal).

Families (:data:`IMPORTERS`): CLIP ``m3d_clip``, ``hsenet_clip_stage1``, ``hsenet_clip_stage2``,
``med3dvlm_siglip``; segmentation ``segvol``, ``text3dsam``, ``r1seg_sam``; report / VQA
``m3d_lamed``, ``med3dvlm``, ``hsenet`` (the HSENet VLM release holds only the packers and LoRA
tensors: give ``--base`` = a LaMed model folder with Phi-4-mini and the 2E3 towers, built by the
HSENet recipes); reasoning segmentation (``[SEG]`` -> mask, loaded with
``LaMed.models.reasoning.LaMedSegForCausalLM``) ``m3d_lamed_seg`` (M3D-LaMed with its SegVol module,
a separate encoder) and ``r1seg_llm`` (R1Seg-3D Phi-3 / Llama-3, one ViT shared by the LLM and the
mask decoder; ``num_clicks`` of its config.json, else 2, sets the refinement passes).
Published models that splice image features by position are imported with
``image_insertion="legacy_offset"`` so that they reproduce their published outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json")


@dataclass(frozen=True)
class Importer:
    """How one family is imported: ``build(sd, published_config, overrides, args) -> (model, KeyReport)``."""

    kind: str  # "clip" | "seg" | "mllm"
    build: Callable[..., Tuple[Any, Any]]
    description: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", help=f"published checkpoint family: {', '.join(IMPORTERS)}")
    parser.add_argument("src", help="downloaded checkpoint folder (config.json + weights) or a weights file")
    parser.add_argument("dst", help="output folder (LaMed format)")
    parser.add_argument("--config", default="", help="JSON object of config fields replacing the derived ones")
    parser.add_argument("--tokenizer", default="", help="tokenizer folder / hub id when SRC has none "
                                                       "(M3D-CLIP: bert-base-uncased)")
    parser.add_argument("--base", default="", help="hsenet: LaMed model folder the partial release is loaded over")
    parser.add_argument("--lora-scaling", type=float, default=2.0, help="alpha / r for unmerged LoRA pairs (published 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")


# ---- reading ---------------------------------------------------------------------------------------

def read_published(src: str | Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(state_dict, config.json)`` of a published folder or weights file (safetensors / .bin / .pth)."""
    from LaMed.models.convert.clip import read_checkpoint

    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: checkpoint not found (download it first, e.g. "
                                "`huggingface-cli download OWNER/NAME --local-dir DIR`)")
    return read_checkpoint(src)


def _overrides(text: str) -> Dict[str, Any]:
    from LaMed.utils.mapping import parse_mapping

    return parse_mapping(text, "--config")


# ---- CLIP ------------------------------------------------------------------------------------------

def _build_clip(family: str):
    def build(sd, published, overrides, args):
        from LaMed.models.clip import LamedClipModel
        from LaMed.models.convert import load_converted
        from LaMed.models.convert.clip import convert_clip, published_clip_config

        converted = convert_clip(sd, family, drop_teacher=family != "hsenet_clip_stage2")
        config = published_clip_config(family, converted, published)
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"--config: LamedClipConfig has no field {key!r}")
            setattr(config, key, value)
        model = LamedClipModel(config)
        return model, load_converted(model, converted, strict=True, source=f"{family} checkpoint")

    return build


# ---- segmentation ----------------------------------------------------------------------------------

def _build_seg(family: str):
    def build(sd, published, overrides, args):
        from LaMed.models.convert import convert_state_dict, load_converted
        from LaMed.models.segmentation import create_seg_model

        converted = convert_state_dict(family, sd)
        fields = dict(overrides)
        if family == "segvol" and not any(k.startswith("text_encoder.") for k in converted):
            fields.setdefault("text_encoder_config", None)  # the seg module inside M3D-LaMed has no text tower
        model = create_seg_model(f"{family}_published", **fields)
        return model, load_converted(model, converted, strict=True, source=f"{family} checkpoint")

    return build


# ---- report / VQA (multimodal LLM) -----------------------------------------------------------------

# Fields of the published configs that describe the vision side or training, not the LLM.
_NOT_LLM = {"architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
            "vision_tower", "image_channel", "image_size", "img_size", "patch_size", "input_size", "dim", "depth",
            "mm_projector_type", "proj_layer_type", "proj_layer_num", "proj_pooling_type", "proj_pooling_size",
            "mm_hidden_size", "proj_out_num", "vision_select_layer", "vision_select_feature", "segmentation_module",
            "pretrain_vision_model", "pretrain_mm_mlp_adapter", "tune_mm_mlp_adapter", "freeze_vision_tower",
            "low_output_size", "high_output_size", "low_input_size", "high_input_size", "mm_mlp_depth",
            "num_new_tokens", "seg_token_id", "img_token_id", "image_token_id", "use_cache",
            "vision_module", "num_clicks", "need_text_en", "pretrain_seg_module", "pretrain_mllm"}
_LLM_TYPES = (("qwen2", "qwen2"), ("qwen", "qwen2"), ("phi3", "phi3"), ("phi4", "phi3"), ("phi", "phi3"),
              ("llama", "llama"))
# The LLM type when config.json names none; the Llama releases name theirs (lamed_llama, Llama*ForCausalLM).
_FAMILY_LLM = {"m3d_lamed": "phi3", "med3dvlm": "qwen2", "hsenet": "phi3", "m3d_lamed_seg": "phi3", "r1seg_llm": "phi3"}
# Families importing into LaMedSegForCausalLM, and the family whose published image splice they share.
_SEG_FAMILIES = ("m3d_lamed_seg", "r1seg_llm")
_LEGACY_AS = {"m3d_lamed_seg": "m3d_lamed", "r1seg_llm": "m3d_lamed"}


def _text_config(family: str, published: Mapping, vocab_size: int):
    """The HF config of the LLM: its type named by ``model_type`` / ``architectures`` (else the family's),
    its fields those of config.json that do not describe the vision side or training."""
    from transformers import CONFIG_MAPPING

    archs = published.get("architectures") or []
    if isinstance(archs, str):  # R1Seg-3D's merge script writes one string instead of a list
        archs = [archs]
    name = str(published.get("model_type", "")).lower() + " " + " ".join(str(a) for a in archs).lower()
    llm = next((t for key, t in _LLM_TYPES if key in name), _FAMILY_LLM[family])
    fields = {k: v for k, v in published.items() if k not in _NOT_LLM}
    fields["vocab_size"] = vocab_size  # the released embeddings decide (M3D's config lags its resized vocabulary)
    return CONFIG_MAPPING[llm](**fields)


def _vision_fields(family: str, converted: Mapping, published: Mapping) -> Dict[str, Any]:
    """Config fields of the vision side (tower, projector, segmentation head) derived from the
    converted tensors' shapes and the published config.json."""
    if family in ("m3d_lamed", "m3d_lamed_seg"):
        from LaMed.models.convert.clip import _vit_overrides

        geometry = {"img_size": published.get("image_size", published.get("img_size", (32, 256, 256))),
                    "patch_size": published.get("patch_size", (4, 16, 16))}
        vit = _vit_overrides(converted, "vision_tower.", geometry)
        fields = {"vision_tower": "vit3d_base", "vision_overrides": vit, "projector": "spp"}
        if family == "m3d_lamed_seg":
            from LaMed.models.convert.lamed_seg import m3d_lamed_seg_fields

            fields.update(m3d_lamed_seg_fields())
        return fields
    if family == "r1seg_llm":
        from LaMed.models.convert.r1seg_llm import r1seg_llm_fields

        return r1seg_llm_fields(int(published.get("num_clicks", 2)))  # steps 2-4 were trained with 2
    if family == "med3dvlm":
        from LaMed.models.convert.dcformer import infer_dcformer_config

        tower = {k[len("vision_tower."):]: v for k, v in converted.items() if k.startswith("vision_tower.")}
        arch = infer_dcformer_config(tower, source="med3dvlm")
        h, w, d = (int(v) for v in published.get("input_size", (256, 256, 128)))  # Med3DVLM stores (H, W, D)
        arch["img_size"] = [d, h, w]
        arch = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}
        return {"vision_tower": "dcformer_small_med3dvlm", "vision_overrides": arch, "vision_feature_stages": [3, 4],
                "projector": "mixer"}
    raise ValueError(f"{family}: the vision side cannot be derived; use --base")


def _tokenizer_ids(tokenizer):
    from LaMed.models.mllm import prepare_tokenizer

    return prepare_tokenizer(tokenizer)


def _model_classes(family: str):
    """``(config class, model class)`` a multimodal-LLM family is built with: the reasoning-segmentation
    pair for the releases with a ``[SEG]`` mask head, else the plain MLLM."""
    if family in _SEG_FAMILIES:
        from LaMed.models.reasoning import LaMedSegConfig, LaMedSegForCausalLM

        return LaMedSegConfig, LaMedSegForCausalLM
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM

    return LaMedConfig, LaMedForCausalLM


def _build_mllm(family: str):
    """Builder of a multimodal-LLM family (report / VQA or reasoning segmentation): convert the weights,
    derive the config (LLM + vision side + legacy splice, refined by ``--config``), build, load strictly."""
    def build(sd, published, overrides, args):
        import torch

        from LaMed.models.convert import convert_state_dict, load_converted
        from LaMed.models.convert.mllm import legacy_config_fields

        config_class, model_class = _model_classes(family)
        tokenizer = _load_tokenizer(args)
        if tokenizer is None:
            raise FileNotFoundError(f"{args.src}: no tokenizer files; pass --tokenizer (the base LLM's)")
        ids = _tokenizer_ids(tokenizer)
        partial = family == "hsenet"
        converted = convert_state_dict(family, sd, lora_scaling=args.lora_scaling, allow_partial=partial)
        if partial:
            if not args.base:
                raise ValueError("hsenet: the released file holds only the packers and LoRA tensors; pass --base "
                                 "(a LaMed folder with Phi-4-mini and the 2E3 towers, e.g. from the HSENet recipes)")
            model = model_class.from_pretrained(args.base, dtype=torch.float32)
            for key, value in {**legacy_config_fields(family), **overrides}.items():
                setattr(model.config, key, value)
            own = model.state_dict()
            unknown = sorted(k for k in converted if k not in own)
            if unknown:
                raise KeyError(f"hsenet checkpoint: {len(unknown)} keys unknown to the base model, e.g. {unknown[:5]}")
            return model, load_converted(model, {**own, **converted}, strict=True, source="hsenet checkpoint")
        emb = converted.get("language_model.model.embed_tokens.weight")
        if emb is None:
            raise KeyError(f"{family} checkpoint: no embed_tokens weight (is this the full model file?)")
        fields = dict(_vision_fields(family, converted, published))
        fields.update(legacy_config_fields(_LEGACY_AS.get(family, family)))
        for key, value in overrides.items():  # a mapping refines the derived mapping (e.g. vision_overrides)
            both = isinstance(value, Mapping) and isinstance(fields.get(key), Mapping)
            fields[key] = {**fields[key], **value} if both else value
        config = config_class(text_config=_text_config(family, published, int(emb.shape[0])), **ids, **fields)
        model = model_class(config)
        if len(tokenizer) > int(emb.shape[0]):
            raise ValueError(f"{args.src}: the tokenizer has {len(tokenizer)} tokens but the checkpoint's embeddings "
                             f"{int(emb.shape[0])} rows (LaMed's <im_patch>/[SEG]/box tokens missing from the release?)")
        return model, load_converted(model, converted, strict=True, source=f"{family} checkpoint")

    return build


IMPORTERS: Dict[str, Importer] = {
    "m3d_clip": Importer("clip", _build_clip("m3d_clip"), "GoodBaiBai88/M3D-CLIP"),
    "hsenet_clip_stage1": Importer("clip", _build_clip("hsenet_clip_stage1"), "Yanzhaoshi/HSENet_CLIP"),
    "hsenet_clip_stage2": Importer("clip", _build_clip("hsenet_clip_stage2"), "Yanzhaoshi/HSENet-2E3-CLIP"),
    "med3dvlm_siglip": Importer("clip", _build_clip("med3dvlm_siglip"), "MagicXin/DCFormer_SigLIP"),
    "segvol": Importer("seg", _build_seg("segvol"), "BAAI/SegVol"),
    "text3dsam": Importer("seg", _build_seg("text3dsam"), "MagicXin/Text3DSAM"),
    "r1seg_sam": Importer("seg", _build_seg("r1seg_sam"), "lihao0011/R1Seg-3D-SAM"),
    "m3d_lamed": Importer("mllm", _build_mllm("m3d_lamed"), "GoodBaiBai88/M3D-LaMed-Phi-3-4B, -Llama-2-7B"),
    "med3dvlm": Importer("mllm", _build_mllm("med3dvlm"), "MagicXin/Med3DVLM-Qwen-2.5-7B(-FLARE2025)"),
    "hsenet": Importer("mllm", _build_mllm("hsenet"), "Yanzhaoshi/HSENet-Phi-4-4B (with --base)"),
    "m3d_lamed_seg": Importer("mllm", _build_mllm("m3d_lamed_seg"),
                              "GoodBaiBai88/M3D-LaMed-Phi-3-4B, -Llama-2-7B (with the SegVol module)"),
    "r1seg_llm": Importer("mllm", _build_mllm("r1seg_llm"), "lihao0011/R1Seg-3D-Phi-3-4B, -llama-3-8B"),
}


def _load_tokenizer(args):
    from transformers import AutoTokenizer

    src = Path(args.src)
    folder = src if src.is_dir() else src.parent
    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(str(folder))
    return None


def import_checkpoint(family: str, src: str | Path, dst: str | Path, config: str | Mapping = "", tokenizer: str = "",
                      base: str = "", lora_scaling: float = 2.0, overwrite: bool = False):
    """Convert ``src`` (published ``family``) into a LaMed folder ``dst``; returns ``(model, KeyReport)``."""
    if family not in IMPORTERS:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(IMPORTERS)}")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst}: exists and is not empty (pass --overwrite)")
    args = argparse.Namespace(src=str(src), tokenizer=tokenizer, base=base, lora_scaling=lora_scaling)
    importer = IMPORTERS[family]
    sd, published = read_published(src)
    overrides = dict(config) if isinstance(config, Mapping) else _overrides(config)
    model, report = importer.build(sd, published, overrides, args)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    tok = _load_tokenizer(args)
    if importer.kind == "mllm":
        from LaMed.models.mllm import LaMedProcessor, prepare_tokenizer

        prepare_tokenizer(tok)
        LaMedProcessor(tok, model.num_image_tokens).save_pretrained(dst)
    elif tok is not None:
        tok.save_pretrained(dst)
    (dst / "lamed_import.json").write_text(json.dumps(
        {"family": family, "published_as": importer.description, "source": str(src), "config_overrides": overrides,
         "key_report": str(report)}, indent=2) + "\n")
    return model, report


def run(args: argparse.Namespace) -> int:
    if args.family not in IMPORTERS:
        raise ValueError(f"family {args.family!r}: expected one of {', '.join(IMPORTERS)}")
    try:
        model, report = import_checkpoint(args.family, args.src, args.dst, args.config, args.tokenizer, args.base,
                                          args.lora_scaling, args.overwrite)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.family}: {n / 1e6:.1f} M parameters; key report: {report}")
    tok_note = "" if any((Path(args.dst) / f).is_file() for f in TOKENIZER_FILES) else \
        " (no tokenizer: pass --tokenizer to save one beside the model)"
    print(f"written {args.dst}{tok_note}; load with from_pretrained or run with `lamed predict --model {args.dst} ...`")
    return 0
