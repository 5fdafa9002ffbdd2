"""Published releases: how each released checkpoint becomes a LaMed model (convert + config + build).

:data:`RELEASES` is the one registry of published families: per family, the kind of model, the
builder (converter of ``LaMed.models.convert`` -> config derived from the tensors' shapes and the
release's ``config.json`` -> model -> strict load) and what it was published as. ``lamed import``,
``--verify`` and the layout tests all go through :func:`build_release`; the component converters
(``CONVERTERS``: a ViT, a projector, a CLIP text tower ...) are the parts these builders use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from LaMed.models.clip import LamedClipModel
from LaMed.models.convert import account, conversion_log, convert_state_dict, load_converted, note_derived
from LaMed.models.convert.clip import _vit_overrides, convert_clip, published_clip_config, read_checkpoint
from LaMed.models.convert.mllm import legacy_config_fields
from LaMed.models.convert.published import RELEASE_TOKENS
from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM, prepare_tokenizer
from LaMed.models.projectors.base import grid_tokens
from LaMed.models.segmentation import create_seg_model
from LaMed.utils.mapping import parse_mapping

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)


@dataclass(frozen=True)
class Importer:
    """How one family is imported: ``build(sd, published_config, overrides, args) -> (model, KeyReport, converted)``."""

    kind: str  # "clip" | "seg" | "mllm"
    build: Callable[..., tuple[Any, Any]]
    description: str


# ---- reading ---------------------------------------------------------------------------------------


def read_published(src: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, config.json)`` of a published folder or weights file (safetensors / .bin / .pth)."""

    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(
            f"{src}: checkpoint not found (download it first, e.g. "
            "`huggingface-cli download OWNER/NAME --local-dir DIR`)"
        )
    return read_checkpoint(src)


def _overrides(text: str) -> dict[str, Any]:

    return parse_mapping(text, "--config")


def _construct(factory: Callable[[], Any], args) -> Any:
    """``factory()``, on the meta device when ``args.meta`` is set (the layout tests): the key / shape
    check of a release then needs no memory for its 4-7 B parameters."""
    if not getattr(args, "meta", False):
        return factory()
    import torch

    with torch.device("meta"):
        return factory()


# ---- CLIP ------------------------------------------------------------------------------------------


def _build_clip(family: str):
    def build(sd, published, overrides, args):

        converted = convert_clip(sd, family, drop_teacher=family != "hsenet_clip_stage2")
        config = published_clip_config(family, converted, published)
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"--config: LamedClipConfig has no field {key!r}")
            setattr(config, key, value)
        model = _construct(lambda: LamedClipModel(config), args)
        return model, load_converted(model, converted, strict=True, source=f"{family} checkpoint"), converted

    return build


# ---- segmentation ----------------------------------------------------------------------------------


def _build_seg(family: str):
    def build(sd, published, overrides, args):

        converted = convert_state_dict(family, sd)
        fields = dict(overrides)
        if family == "segvol" and not any(k.startswith("text_encoder.") for k in converted):
            fields.setdefault("text_encoder_config", None)  # the seg module inside M3D-LaMed has no text tower
        if family == "r1seg_sam":
            fields.setdefault("loss", "dice_bce_r1seg")  # further training uses R1Seg-3D's own Dice
        model = _construct(lambda: create_seg_model(f"{family}_published", **fields), args)
        return model, load_converted(model, converted, strict=True, source=f"{family} checkpoint"), converted

    return build


# ---- report / VQA (multimodal LLM) -----------------------------------------------------------------

# Fields of the published configs that describe the vision side or training, not the LLM.
_NOT_LLM = {
    "architectures",
    "auto_map",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "vision_tower",
    "image_channel",
    "image_size",
    "img_size",
    "patch_size",
    "input_size",
    "dim",
    "depth",
    "mm_projector_type",
    "proj_layer_type",
    "proj_layer_num",
    "proj_pooling_type",
    "proj_pooling_size",
    "mm_hidden_size",
    "proj_out_num",
    "vision_select_layer",
    "vision_select_feature",
    "segmentation_module",
    "pretrain_vision_model",
    "pretrain_mm_mlp_adapter",
    "tune_mm_mlp_adapter",
    "freeze_vision_tower",
    "low_output_size",
    "high_output_size",
    "low_input_size",
    "high_input_size",
    "mm_mlp_depth",
    "num_new_tokens",
    "seg_token_id",
    "img_token_id",
    "image_token_id",
    "use_cache",
    "vision_module",
    "num_clicks",
    "need_text_en",
    "pretrain_seg_module",
    "pretrain_mllm",
}
_LLM_TYPES = (
    ("qwen2", "qwen2"),
    ("qwen", "qwen2"),
    ("phi3", "phi3"),
    ("phi4", "phi3"),
    ("phi", "phi3"),
    ("llama", "llama"),
)
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


def _published_list(published: Mapping, key: str, length: int) -> list | None:
    """``published[key]`` as a list of ``length`` ints, ``None`` when absent; a bad value names config.json."""
    if key not in published:
        return None
    value = published[key]
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(isinstance(v, int) for v in value):
        raise ValueError(f"config.json: {key} must be a list of {length} integers, got {value!r}")
    return [int(v) for v in value]


def _vit_side(converted: Mapping, published: Mapping) -> dict[str, Any]:
    """ViT tower (widths / depth from the shapes, input geometry from config.json) and the ``spp``
    pooling window (``proj_pooling_size``) of the M3D-style releases."""

    img = _published_list(published, "image_size", 3) or _published_list(published, "img_size", 3) or [32, 256, 256]
    patch = _published_list(published, "patch_size", 3) or [4, 16, 16]
    geometry = {"img_size": img, "patch_size": patch}
    if "num_heads" in published:  # R1Seg-3D's config.json names it; M3D's does not (64-wide heads then)
        geometry["num_heads"] = int(published["num_heads"])
    vit = _vit_overrides(converted, "vision_tower.", geometry)
    width = published.get("mm_hidden_size")
    if width is not None and int(width) != vit["hidden_size"]:
        raise ValueError(f"config.json: mm_hidden_size {width} but the released ViT is {vit['hidden_size']} wide")
    fields: dict[str, Any] = {"vision_overrides": vit, "projector": "spp"}
    pool = published.get("proj_pooling_size")
    if pool is not None:
        fields["projector_overrides"] = {
            "pool_size": [int(pool)] * 3 if isinstance(pool, int) else [int(p) for p in pool]
        }
    return fields


def _vision_fields(family: str, converted: Mapping, published: Mapping) -> dict[str, Any]:
    """Config fields of the vision side (tower, projector, segmentation head) derived from the
    converted tensors' shapes and the release's config.json (input geometry, pooling, token schedule)."""
    if family in ("m3d_lamed", "m3d_lamed_seg"):
        fields = {"vision_tower": "vit3d_base", **_vit_side(converted, published)}
        if family == "m3d_lamed_seg":
            from LaMed.models.convert.lamed_seg import m3d_lamed_seg_fields

            fields.update(m3d_lamed_seg_fields())
            fields["seg_overrides"] = {"img_size": fields["vision_overrides"]["img_size"]}
        return fields
    if family == "r1seg_llm":
        from LaMed.models.convert.r1seg_llm import r1seg_llm_fields

        fields = r1seg_llm_fields(int(published.get("num_clicks", 2)))  # steps 2-4 were trained with 2
        fields.update(_vit_side(converted, published))
        fields["seg_overrides"] = {**fields["seg_overrides"], "img_size": fields["vision_overrides"]["img_size"]}
        return fields
    if family == "med3dvlm":
        from LaMed.models.convert.dcformer import infer_dcformer_config

        tower = {k[len("vision_tower.") :]: v for k, v in converted.items() if k.startswith("vision_tower.")}
        arch = infer_dcformer_config(tower, source="med3dvlm")
        h, w, d = _published_list(published, "input_size", 3) or [256, 256, 128]  # Med3DVLM stores (H, W, D)
        arch["img_size"] = [d, h, w]
        arch = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}
        fields: dict[str, Any] = {
            "vision_tower": "dcformer_small_med3dvlm",
            "vision_overrides": arch,
            "vision_feature_stages": [3, 4],
            "projector": "mixer",
        }
        low, high = (_published_list(published, f"{s}_output_size", 2) for s in ("low", "high"))
        if (low is None) != (high is None):
            raise ValueError("config.json: low_output_size and high_output_size must be given together")
        if low is not None:  # the mixer's token schedule per stream (released: [192, 128] and [64, 128])
            fields["projector_overrides"] = {"out_tokens": [low, high]}
        return fields
    raise ValueError(f"{family}: the vision side cannot be derived; use --base")


def _check_mixer_inputs(model, published: Mapping) -> None:
    """Med3DVLM's config.json states each mixer stream's input (tokens, width); the tower must give it."""

    cfg = getattr(model.mm_projector, "config", None)
    for s, name in enumerate(("low_input_size", "high_input_size")):
        want = _published_list(published, name, 2)
        if want is None or cfg is None or not hasattr(cfg, "in_dims") or s >= len(cfg.in_dims):
            continue
        have = [grid_tokens(cfg.grid_sizes[s]), int(cfg.in_dims[s])]
        if have != want:
            raise ValueError(
                f"config.json: {name} {want} but the released tower gives {have} (tokens, width) "
                "for that stream; the input_size or the tower does not match"
            )
    width = published.get("mm_hidden_size")
    if width is not None and cfg is not None and hasattr(cfg, "in_dims") and int(width) != int(cfg.in_dims[-1]):
        raise ValueError(
            f"config.json: mm_hidden_size {width} but the released tower's last stage is {int(cfg.in_dims[-1])} wide"
        )


def _tokenizer_ids(tokenizer, family: str):
    """Add the tokens the release's training script added (and no others); their ids."""

    return prepare_tokenizer(tokenizer, RELEASE_TOKENS[family])


def _check_vocabulary(tokenizer, ids: Mapping[str, Any], rows: int, family: str, src: str) -> None:
    """Refuse a tokenizer that does not fit the released embeddings, saying how."""
    if len(tokenizer) > rows:
        raise ValueError(
            f"{src}: the tokenizer has {len(tokenizer)} tokens but the {family} checkpoint's embeddings "
            f"have {rows} rows: not the tokenizer this release was trained with (pass --tokenizer "
            "with the release's own tokenizer files)"
        )
    over = {name: i for name, i in ids.items() if i is not None and i >= rows}
    if over:
        raise ValueError(f"{src}: token ids {over} lie beyond the checkpoint's {rows} embedding rows")


def _merge_lora_into_base(converted: Mapping, own: Mapping, scaling: float) -> dict[str, Any]:
    """Fold the unmerged LoRA pairs of a partial release (``<module>.lora_A`` / ``.lora_B``, as the
    HSENet VLM ships them) into the base model's ``<module>.weight``: ``W + scaling * B @ A``."""

    out = {k: v for k, v in converted.items() if ".lora_" not in k}
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in converted.items():
        if key.endswith((".lora_A", ".lora_B")):
            pairs.setdefault(key[: -len(".lora_A")], {})[key[-1]] = value
    for module, pair in sorted(pairs.items()):
        base = own.get(f"{module}.weight")
        if base is None or set(pair) != {"A", "B"}:
            raise KeyError(f"LoRA tensors of {module!r} have no base weight (or only one of A / B) in the --base model")
        a, b = pair["A"], pair["B"]
        if tuple(b.shape[1:]) != tuple(a.shape[:1]) or (b.shape[0], a.shape[1]) != tuple(base.shape):
            raise ValueError(
                f"LoRA pair of {module!r}: B {tuple(b.shape)} @ A {tuple(a.shape)} does not give the base "
                f"weight's {tuple(base.shape)}"
            )
        out[f"{module}.weight"] = (base.float() + scaling * (b.float() @ a.float())).to(base.dtype)
        note_derived(a, b, how="LoRA pair merged into the --base weight")
    return out


def _model_classes(family: str):
    """``(config class, model class)`` a multimodal-LLM family is built with: the reasoning-segmentation
    pair for the releases with a ``[SEG]`` mask head, else the plain MLLM."""
    if family in _SEG_FAMILIES:
        from LaMed.models.reasoning import LaMedSegConfig, LaMedSegForCausalLM

        return LaMedSegConfig, LaMedSegForCausalLM

    return LaMedConfig, LaMedForCausalLM


def _build_mllm(family: str):
    """Builder of a multimodal-LLM family (report / VQA or reasoning segmentation): convert the weights,
    derive the config (LLM + vision side + legacy splice, refined by ``--config``), build, load strictly."""

    def build(sd, published, overrides, args):
        import torch

        config_class, model_class = _model_classes(family)
        tokenizer = _load_tokenizer(args)
        if tokenizer is None:
            raise FileNotFoundError(f"{args.src}: no tokenizer files; pass --tokenizer (the base LLM's)")
        ids = _tokenizer_ids(tokenizer, family)
        partial = family == "hsenet"
        converted = convert_state_dict(family, sd, lora_scaling=args.lora_scaling, allow_partial=partial)
        if partial:
            if not args.base:
                raise ValueError(
                    "hsenet: the released file holds only the packers and LoRA tensors; pass --base "
                    "(a LaMed folder with Phi-4-mini and the 2E3 towers, e.g. from the HSENet recipes)"
                )
            model = model_class.from_pretrained(args.base, dtype=torch.float32)
            for key, value in {**legacy_config_fields(family), **overrides}.items():
                setattr(model.config, key, value)
            own = model.state_dict()
            converted = _merge_lora_into_base(converted, own, args.lora_scaling)
            unknown = sorted(k for k in converted if k not in own)
            if unknown:
                raise KeyError(f"hsenet checkpoint: {len(unknown)} keys unknown to the base model, e.g. {unknown[:5]}")
            rows = (
                int(own["language_model.model.embed_tokens.weight"].shape[0])
                if "language_model.model.embed_tokens.weight" in own
                else len(tokenizer)
            )
            _check_vocabulary(tokenizer, ids, rows, family, args.src)
            return (
                model,
                load_converted(model, {**own, **converted}, strict=True, source="hsenet checkpoint"),
                converted,
            )
        emb = converted.get("language_model.model.embed_tokens.weight")
        if emb is None:
            raise KeyError(f"{family} checkpoint: no embed_tokens weight (is this the full model file?)")
        fields = dict(_vision_fields(family, converted, published))
        fields.update(legacy_config_fields(_LEGACY_AS.get(family, family)))
        for key, value in overrides.items():  # a mapping refines the derived mapping (e.g. vision_overrides)
            both = isinstance(value, Mapping) and isinstance(fields.get(key), Mapping)
            fields[key] = {**fields[key], **value} if both else value
        config = config_class(text_config=_text_config(family, published, int(emb.shape[0])), **ids, **fields)
        _check_vocabulary(tokenizer, ids, int(emb.shape[0]), family, args.src)
        model = _construct(lambda: model_class(config), args)
        if family == "med3dvlm":
            _check_mixer_inputs(model, published)
        return model, load_converted(model, converted, strict=True, source=f"{family} checkpoint"), converted

    return build


RELEASES: dict[str, Importer] = {
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
    "m3d_lamed_seg": Importer(
        "mllm", _build_mllm("m3d_lamed_seg"), "GoodBaiBai88/M3D-LaMed-Phi-3-4B, -Llama-2-7B (with the SegVol module)"
    ),
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


def build_release(family: str, state_dict: Mapping, published: Mapping, overrides: Mapping, args):
    """Convert and strictly load one release: ``(model, KeyReport)``.

    Every tensor of ``state_dict`` must be consumed by the converted model or be one the converters
    drop on purpose (aliases, buffers, never-used heads, training state); those are named in the
    report (``report.dropped``), any other is an error listing it.
    """

    with conversion_log() as log:
        model, report, converted = RELEASES[family].build(state_dict, published, dict(overrides), args)
    acc = account(state_dict, converted, log)
    if acc.unaccounted:
        names = "\n".join(f"  {k}" for k in acc.unaccounted[:50])
        more = f"\n  ... and {len(acc.unaccounted) - 50} more" if len(acc.unaccounted) > 50 else ""
        raise KeyError(
            f"{args.src}: {len(acc.unaccounted)} keys of the {family} checkpoint are neither loaded nor "
            f"documented as unused (another variant of the release?):\n{names}{more}"
        )
    report.source_keys, report.consumed, report.dropped = acc.source_keys, len(acc.consumed), acc.dropped
    report.source_values = acc.source_values
    if not getattr(model.config, "preprocessing", None):  # the published pipeline travels with the weights
        from LaMed.data.presets import preset_spec
        from LaMed.models.convert.published import PREPROCESSING

        model.config.preprocessing = preset_spec(PREPROCESSING[family])
    return model, report
