"""Published 3D CLIP checkpoints -> :class:`~LaMed.models.clip.LamedClipModel`.

| family               | published as                         | top-level keys of the published state dict          |
|----------------------|--------------------------------------|------------------------------------------------------|
| ``m3d_clip``         | GoodBaiBai88/M3D-CLIP (``M3DCLIP``)  | ``vision_encoder.*`` (ViT, 138), ``language_encoder.*``|
|                      |                                      | (BertModel), ``mm_vision_proj.*``, ``mm_language_proj.*``, ``logit_scale`` |
| ``hsenet_clip_stage1``| Yanzhaoshi/HSENet_CLIP              | same layout as M3D-CLIP                              |
| ``hsenet_clip_stage2``| Yanzhaoshi/HSENet-2E3-CLIP          | as stage 1 with the 2E3 tower (150) and the frozen   |
|                      |                                      | stage-1 model under ``stage1_pretrained_CLIP.*``     |
| ``med3dvlm_siglip``  | MagicXin/DCFormer_SigLIP (``DEC_CLIP``)| ``vision_encoder.encoder.*`` (DCFormer), ``language_encoder.*`` (DistilBERT), projections, ``t_prime`` / ``bias`` (sigmoid) or ``logit_scale`` (nce) |

``lamed_clip_vision`` takes the vision tower out of one of *our* CLIP checkpoints (``vision_model.*``
of a ``lamed_clip`` folder's ``model.safetensors``, any registry encoder) to start an MLLM's tower
from it, as M3D-LaMed starts from the M3D-CLIP ViT (``model.pretrained_vision``).

Renaming: ``vision_encoder.`` -> ``vision_model.``, ``language_encoder.`` -> ``text_model.``,
``mm_vision_proj`` -> ``visual_projection``, ``mm_language_proj`` -> ``text_projection``,
``t_prime`` -> ``logit_scale``, ``bias`` -> ``logit_bias``, ``stage1_pretrained_CLIP.`` -> ``teacher.``.
Dropped on purpose: the text tower's ``pooler.*`` (never used: embeddings read token 0 of
``last_hidden_state``) and ``embeddings.position_ids`` (a buffer that old transformers saved).
Scalars are cast to float32 (Med3DVLM's ``t_prime`` is float64).

:func:`published_clip_config` builds the matching :class:`LamedClipConfig` from the shapes in the
state dict (text tower, ViT width / depth) and the published ``config.json`` when given (input
geometry); absolute paths in those configs (HSENet's ``pretrained_model``,
``language_model_name_or_path``) are not carried over. :func:`load_published_clip` does both and
loads strictly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from LaMed.models.checkpoint_files import read_state_dict
from LaMed.models.clip import LamedClipConfig, LamedClipModel
from LaMed.models.convert.base import load_converted, note_derived, note_dropped, register_converter
from LaMed.models.convert.dcformer import convert_dcformer
from LaMed.models.convert.vit import extract_vit

FAMILIES = ("m3d_clip", "hsenet_clip_stage1", "hsenet_clip_stage2", "med3dvlm_siglip")
_RENAMES = (
    ("vision_encoder.", "vision_model."),
    ("language_encoder.", "text_model."),
    ("mm_vision_proj.", "visual_projection."),
    ("mm_language_proj.", "text_projection."),
)
_SCALARS = {"logit_scale": "logit_scale", "t_prime": "logit_scale", "bias": "logit_bias"}
_TEXT_DROPPED = re.compile(r"^(pooler\.|embeddings\.position_ids$)")
_TEXT_DROP_REASON = {
    "pooler": "text pooler, never used (the text embedding is token 0 of last_hidden_state)",
    "position_ids": "position_ids buffer saved by transformers 4.x, rebuilt by the model",
}
_TEACHER = "stage1_pretrained_CLIP."


def _unwrap(sd: Mapping) -> Mapping:
    """Descend into ``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"module": ...}`` wrappers."""
    while not any(k.startswith(("vision_encoder.", "language_encoder.")) for k in sd):
        inner = [sd[k] for k in ("state_dict", "model", "module") if isinstance(sd.get(k), Mapping)]
        if not inner:
            raise KeyError(
                "no published CLIP found: expected keys starting with 'vision_encoder.' and "
                f"'language_encoder.'; first keys: {list(sd)[:5]}"
            )
        sd = inner[0]
    return sd


def _convert_one(sd: Mapping, family: str) -> dict[str, Any]:
    """One CLIP (no teacher): rename towers, heads and scalars; convert the vision tower's keys."""
    import torch

    vision = {k[len("vision_encoder.") :]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    if family == "med3dvlm_siglip":
        vision = convert_dcformer(vision)
    else:
        vision = extract_vit(vision, "hsenet_2e3" if family == "hsenet_clip_stage2" else "m3d_vit", prefix="")
    out: dict[str, Any] = {f"vision_model.{k}": v for k, v in vision.items()}
    for key, value in sd.items():
        if key.startswith("vision_encoder."):
            continue
        if key in _SCALARS:
            out[_SCALARS[key]] = torch.as_tensor(value).detach().to(torch.float32).reshape(())
            note_derived(value, how="cast to float32")
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                name = key[len(old) :]
                if old == "language_encoder." and _TEXT_DROPPED.match(name):
                    note_dropped(value, _TEXT_DROP_REASON["pooler" if name.startswith("pooler.") else "position_ids"])
                    break
                out[new + name] = value
                break
        else:
            out[key] = value  # unknown: kept, so strict loading reports it
    return out


def convert_clip(state_dict: Mapping, family: str, drop_teacher: bool = False) -> dict[str, Any]:
    """Published ``family`` layout -> ``LamedClipModel`` keys (see the module docstring)."""
    if family not in FAMILIES:
        raise KeyError(f"unknown CLIP family {family!r}; expected one of {FAMILIES}")
    sd = _unwrap(state_dict)
    own = {k: v for k, v in sd.items() if not k.startswith(_TEACHER)}
    teacher = {k[len(_TEACHER) :]: v for k, v in sd.items() if k.startswith(_TEACHER)}
    if family == "hsenet_clip_stage2" and not teacher and not drop_teacher:
        raise KeyError(
            "hsenet_clip_stage2: no 'stage1_pretrained_CLIP.*' keys (the frozen stage-1 model); "
            "pass drop_teacher=True to convert the stage-2 towers alone"
        )
    out = _convert_one(own, family)
    if teacher and not drop_teacher:
        out.update({f"teacher.{k}": v for k, v in _convert_one(teacher, "hsenet_clip_stage1").items()})
    return out


def _register(family: str) -> None:
    def convert(state_dict: Mapping, drop_teacher: bool = False) -> dict[str, Any]:
        return convert_clip(state_dict, family, drop_teacher=drop_teacher)

    convert.__doc__ = f"Published {family} layout -> LamedClipModel keys (see LaMed.models.convert.clip)."
    register_converter(family, convert)


for _family in FAMILIES:
    _register(_family)


# ---- configs ------------------------------------------------------------------------------------
def _text_config_from_shapes(sd: Mapping, kind: str) -> dict[str, Any]:
    """BERT / DistilBERT config read from the ``text_model.*`` tensor shapes of a converted dict.

    The number of heads is not visible in the shapes; the published towers use 64-wide heads.
    """

    def shape(key):
        try:
            return tuple(sd[f"text_model.{key}"].shape)
        except KeyError:
            raise KeyError(f"text tower: expected key 'text_model.{key}' ({kind} layout)") from None

    vocab, width = shape("embeddings.word_embeddings.weight")
    positions = shape("embeddings.position_embeddings.weight")[0]
    if kind == "distilbert":
        layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.transformer.layer."))
        ffn = shape("transformer.layer.0.ffn.lin1.weight")[0]
        return dict(
            model_type="distilbert",
            vocab_size=vocab,
            dim=width,
            n_layers=layers,
            n_heads=max(1, width // 64),
            hidden_dim=ffn,
            max_position_embeddings=positions,
        )
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layer."))
    ffn = shape("encoder.layer.0.intermediate.dense.weight")[0]
    types = shape("embeddings.token_type_embeddings.weight")[0]
    return dict(
        model_type="bert",
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        intermediate_size=ffn,
        max_position_embeddings=positions,
        type_vocab_size=types,
    )


def _vit_overrides(sd: Mapping, prefix: str, published: Mapping) -> dict[str, Any]:
    """ViT3D fields from shapes (width, depth, MLP) and the published config (input geometry, heads)."""
    width = int(sd[f"{prefix}patch_embedding.patch_embeddings.1.weight"].shape[0])
    n_tokens = int(sd[f"{prefix}patch_embedding.position_embeddings"].shape[1])
    layers = 1 + max(int(k[len(prefix) :].split(".")[1]) for k in sd if k.startswith(f"{prefix}blocks."))
    img = tuple(int(v) for v in published.get("img_size", (32, 256, 256)))
    patch = tuple(int(v) for v in published.get("patch_size", (4, 16, 16)))
    grid = math.prod(i // p for i, p in zip(img, patch))
    if grid != n_tokens:
        raise ValueError(
            f"published ViT has {n_tokens} position embeddings but img_size {img} / patch_size {patch} "
            f"give {grid}; pass the published config.json (img_size, patch_size)"
        )
    return dict(
        img_size=list(img),
        patch_size=list(patch),
        hidden_size=width,
        num_layers=layers,
        mlp_dim=int(sd[f"{prefix}blocks.0.mlp.linear1.weight"].shape[0]),
        num_heads=int(published.get("num_heads", max(1, width // 64))),
        cls_token=f"{prefix}cls_token" in sd,
    )


def published_clip_config(
    family: str, state_dict: Mapping, published_config: Mapping | None = None, text_config: Mapping | None = None
):
    """The :class:`LamedClipConfig` under which a published checkpoint loads strictly and reproduces it.

    Args:
        family: one of :data:`FAMILIES`.
        state_dict: the published state dict (raw) or its conversion.
        published_config: the checkpoint's ``config.json`` as a dict (input geometry, head count).
        text_config: an HF text config dict to use instead of the one read from shapes.
    """

    published = dict(published_config or {})
    sd = (
        state_dict
        if any(k.startswith("vision_model.") for k in state_dict)
        else convert_clip(state_dict, family, drop_teacher=family != "hsenet_clip_stage2")
    )
    proj = sd["visual_projection.weight"]
    common = dict(
        projection_dim=int(proj.shape[0]),
        projection_bias="visual_projection.bias" in sd,
        gather_features=bool(published.get("gather_loss", True)),
        local_loss=bool(published.get("local_loss", False)),
    )
    if family == "med3dvlm_siglip":
        from LaMed.models.convert.dcformer import infer_dcformer_config

        vision = {k[len("vision_model.") :]: v for k, v in sd.items() if k.startswith("vision_model.")}
        arch = infer_dcformer_config(vision, source="med3dvlm")
        # Med3DVLM's input_size is (H, W, D); LaMed's img_size is (D, H, W).
        h, w, d = (int(v) for v in published.get("input_size", (256, 256, 128)))
        arch["img_size"] = [d, h, w]
        sigmoid = "logit_bias" in sd
        return LamedClipConfig(
            vision_encoder="dcformer_small_med3dvlm",
            vision_overrides={k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()},
            vision_pooling="mean",
            text_config=dict(text_config or _text_config_from_shapes(sd, "distilbert")),
            loss_type="siglip" if sigmoid else "infonce",
            logit_scale_mode="exp" if sigmoid else "raw",
            siglip_symmetric=sigmoid,
            logit_bias_init=float(sd["logit_bias"]) if sigmoid else None,
            logit_scale_max=None,  # DEC_CLIP multiplies by exp(t') with no upper bound
            logit_scale_init=float(sd["logit_scale"]),
            **common,
        )
    stage2 = family == "hsenet_clip_stage2"
    vit = _vit_overrides(sd, "vision_model.", published)
    if stage2:
        vit["slice_dim"] = int(sd["vision_model.slice_guided_attention.Wk.weight"].shape[1])
        vit["num_slices"] = int(published.get("num_slices", 32))  # not visible in the shapes
    text = dict(text_config or _text_config_from_shapes(sd, "bert"))
    teacher = None
    if stage2 and any(k.startswith("teacher.") for k in sd):
        tsd = {k[len("teacher.") :]: v for k, v in sd.items() if k.startswith("teacher.")}
        teacher = published_clip_config("hsenet_clip_stage1", tsd, published, text_config).to_dict()
    return LamedClipConfig(
        vision_encoder="vit3d_2e3_base" if stage2 else "vit3d_base",
        vision_overrides=vit,
        vision_pooling="cls",
        text_config=text,
        loss_type="infonce",
        logit_scale_mode="raw",
        logit_scale_init=float(sd["logit_scale"]),
        teacher_config=teacher,
        **common,
    )


def read_config_json(file: Path) -> dict[str, Any]:
    """A release's ``config.json`` as a dict; ``ValueError`` naming the file when it is not a JSON object."""
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object of config fields, got {type(config).__name__}")
    return config


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, config.json dict)`` of a published folder or weights file (safetensors / .bin / .pt)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config = read_config_json(folder / "config.json") if (folder / "config.json").is_file() else {}

    return read_state_dict(path), config


def load_published_clip(
    family: str,
    checkpoint,
    published_config: Mapping | None = None,
    text_config: Mapping | None = None,
    drop_teacher: bool = False,
):
    """Build a :class:`LamedClipModel` from a published checkpoint (folder, file or state dict), strictly.

    Returns ``(model, KeyReport)``; raises ``KeyError`` with the full report on any mismatch.
    """

    if isinstance(checkpoint, Mapping):
        raw, folder_config = checkpoint, {}
    else:
        raw, folder_config = read_checkpoint(checkpoint)
    published = {**folder_config, **dict(published_config or {})}
    sd = convert_clip(raw, family, drop_teacher=drop_teacher)
    config = published_clip_config(family, sd, published, text_config)
    model = LamedClipModel(config)
    report = load_converted(model, sd, strict=True, source=f"{family} checkpoint")
    return model, report


@register_converter("lamed_clip_vision")
def lamed_clip_vision(state_dict: Mapping, prefix: str = "vision_model.") -> dict:
    """The vision tower of a LaMed CLIP state dict (``vision_model.*``), prefix cut, nothing renamed."""
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        heads = sorted({k.split(".")[0] for k in state_dict})[:8]
        raise KeyError(
            f"lamed_clip_vision: no '{prefix}*' key in the state dict (top-level names: {heads}); "
            f"is this a LaMed CLIP checkpoint (model.safetensors of a lamed_clip folder)?"
        )
    return out
