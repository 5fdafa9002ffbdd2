"""Published 3D-ViT checkpoints -> :class:`~LaMed.models.encoders.vit3d.ViT3D` / ``E2E3Encoder``.

LaMed's ViT3D keeps MONAI 1.3's parameter names, so conversion is choosing the right sub-tree of
a published file and cutting its prefix:

| family        | files (prefix of the ViT inside them)                                                  |
|---------------|-----------------------------------------------------------------------------------------|
| ``m3d_vit``   | M3D-CLIP ``pretrained_ViT.bin`` (none, 138 tensors), M3D-CLIP model (``vision_encoder.``),|
|               | M3D-LaMed (``model.vision_tower.vision_tower.``, optionally under ``base_model.model.``)  |
| ``segvol_vit``| SegVol ``ViT_pretrain.ckpt`` (``state_dict`` / ``model.encoder.``), ``SegVol_v1.pth``     |
|               | (``model`` / ``module.image_encoder.``), HF BAAI/SegVol (``model.image_encoder.``),       |
|               | M3D-LaMed seg module, R1Seg-3D (``image_encoder.``, ``model.vision_module.image_encoder.``,|
|               | ``seg_vit.bin`` without prefix); 137 tensors, no CLS                                     |
| ``hsenet_vit``| HSENet stage-1 tower: ``vision_encoder.`` of HSENet_CLIP, ``stage1_pretrained_CLIP.vision_ |
|               | encoder.`` of the stage-2 CLIP, ``model.vision_tower.vision_tower_stage1.`` of the VLM    |
| ``hsenet_2e3``| HSENet stage-2 (2E3) tower, 150 tensors: ``vision_encoder.`` of HSENet-2E3-CLIP,          |
|               | ``model.vision_tower.vision_tower_stage2.`` of the VLM                                   |
| ``monai_vit`` | a ``monai.networks.nets.ViT`` state dict of any MONAI version (no prefix)               |

Checkpoints written by MONAI >= 1.4 carry ``blocks.i.norm_cross_attn.*`` (and in 1.4/1.5
``blocks.i.cross_attn.*``) although cross-attention is off; those tensors never touch the forward
pass, so they are dropped. ``classification_head.*`` (a MONAI head that M3D removed) is dropped too.
Every converter takes ``prefix=`` to force a sub-tree when a file holds several ViTs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from LaMed.models.convert.base import note_dropped, register_converter

_ANCHOR = "patch_embedding.position_embeddings"
_CONTAINERS = ("state_dict", "model", "module")
# Present in MONAI >= 1.4 checkpoints but unused by a ViT without cross-attention, or M3D-removed head.
_UNUSED = re.compile(r"^(blocks\.\d+\.(norm_cross_attn|cross_attn)\.|classification_head\.)")
UNUSED_REASON = "MONAI >= 1.4 cross-attention extras / classification head, unused by the ViT's forward pass"
# Top-level module names of ViT3D / E2E3Encoder.
_TOP_LEVEL = {
    "cls_token",
    "patch_embedding",
    "blocks",
    "norm",
    "slice_guided_attention",
    "patch_score_proj",
    "norm_masked",
}

_PREFERRED: dict[str, Sequence[str]] = {
    "m3d_vit": (
        "",
        "vision_encoder.",
        "model.vision_tower.vision_tower.",
        "base_model.model.model.vision_tower.vision_tower.",
    ),
    "segvol_vit": (
        "",
        "model.encoder.",
        "module.image_encoder.",
        "model.image_encoder.",
        "image_encoder.",
        "model.seg_module.image_encoder.",
        "model.vision_module.image_encoder.",
        "base_model.model.model.seg_module.image_encoder.",
        "base_model.model.model.vision_module.image_encoder.",
    ),
    "hsenet_vit": (
        "",
        "stage1_pretrained_CLIP.vision_encoder.",
        "vision_encoder.",
        "model.vision_tower.vision_tower_stage1.",
    ),
    "hsenet_2e3": ("", "vision_encoder.", "model.vision_tower.vision_tower_stage2."),
    "monai_vit": ("",),
}


def unwrap_container(sd: Mapping) -> Mapping:
    """Descend into ``{"state_dict": {...}}`` / ``{"model": {...}}`` training-checkpoint wrappers."""
    while not any(k.endswith(_ANCHOR) for k in sd):
        inner = [sd[k] for k in _CONTAINERS if isinstance(sd.get(k), Mapping)]
        if not inner:
            break
        sd = inner[0]
    return sd


def find_vit_prefixes(sd: Mapping) -> list:
    """Every prefix ``p`` such that ``p + 'patch_embedding.position_embeddings'`` is a key."""
    return sorted(k[: -len(_ANCHOR)] for k in sd if k.endswith(_ANCHOR))


def extract_vit(sd: Mapping, family: str, prefix: str | None = None) -> dict:
    """The ViT sub-tree of ``sd`` (prefix cut, unused MONAI extras dropped).

    The prefix is ``prefix`` when given, else the first of the family's known prefixes present,
    else the only ViT found; otherwise a ``KeyError`` lists the candidates.
    """
    sd = unwrap_container(sd)
    found = find_vit_prefixes(sd)
    if prefix is None:
        known = [p for p in _PREFERRED[family] if p in found]
        if known:
            prefix = known[0]
        elif len(found) == 1:
            prefix = found[0]
        elif not found:
            raise KeyError(f"{family}: no ViT found (no key ends with {_ANCHOR!r}); first keys: {list(sd)[:5]}")
        else:
            raise KeyError(f"{family}: several ViTs in this checkpoint, pass prefix= one of {found}")
    elif prefix not in found:
        raise KeyError(f"{family}: no key {prefix + _ANCHOR!r}; ViT prefixes present: {found}")
    out = {}
    for key, value in sd.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            if _UNUSED.match(name):
                note_dropped(value, UNUSED_REASON)
            else:
                out[name] = value
    # A prefix "" on a file that also holds prefixed sub-models would pull those in: keep only ViT keys.
    if prefix == "":
        out = {k: v for k, v in out.items() if k.split(".")[0] in _TOP_LEVEL}
    return out


def _make(family: str):
    def convert(state_dict: Mapping, prefix: str | None = None) -> dict:
        return extract_vit(state_dict, family, prefix)

    convert.__doc__ = f"Published {family} layout -> LaMed ViT3D/E2E3 keys (see module docstring)."
    return convert


for _family in _PREFERRED:
    register_converter(_family, _make(_family))
