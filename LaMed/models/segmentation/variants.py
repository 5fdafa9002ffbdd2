"""Registered segmentation model variants (data): published sizes and tiny test twins.

``create_seg_model("segvol_tiny", refine_passes=0)`` builds the family's config from the variant's
fields plus overrides and returns a randomly initialised model. ``*_published`` variants switch on
the published quirks (full-shape LayerNorm, SegVol's point / position-encoding axis orders) that
the checkpoint converters need; the plain names are the clean defaults for new training.
"""

from __future__ import annotations

from LaMed.utils.registry import Registry

SEGVOL_PUBLISHED_FLAGS = dict(upscale_norm="full", point_convention="segvol", pe_axis_order="segvol")

# name -> (family, config fields)
SEG_VARIANTS: dict[str, tuple[str, dict]] = {
    "segvol": ("segvol", {}),
    "segvol_published": ("segvol", dict(SEGVOL_PUBLISHED_FLAGS)),
    # Tiny twin: 32x64x64 input, patch 4x8x8 (8x8x8 tokens of 96), decoder 96 wide, tiny CLIP text tower
    # over the offline MiniLM WordPiece vocabulary; trains on CPU in minutes.
    "segvol_tiny": (
        "segvol",
        dict(
            img_size=(32, 64, 64),
            image_encoder="vit3d_test",
            image_encoder_overrides=dict(cls_token=False, patch_size=(4, 8, 8)),
            embed_dim=96,
            num_heads=4,
            mlp_dim=192,
            iou_head_hidden_dim=64,
            text_encoder_config="clip_text_test",
            freeze_text_backbone=False,
        ),
    ),
    # R1Seg-3D's step-1 SAM (r1seg_3dsam.bin): SegVol decoder without point/box embeddings, a 3D
    # conv mask path and one refinement pass on the raw logits (num_clicks = 1).
    "r1seg_sam_published": (
        "segvol",
        dict(
            SEGVOL_PUBLISHED_FLAGS,
            point_prompts=False,
            mask_downscaling="conv3d",
            refine_passes=1,
            refine_input="logits",
            train_prompt_types=["text"],
        ),
    ),
    "text3dsam": ("text3dsam", {}),
    "text3dsam_published": ("text3dsam", dict(pe_axis_order="segvol")),
    "text3dsam_tiny": (
        "text3dsam",
        dict(
            img_size=(32, 64, 64),
            image_encoder="dcformer_test",
            embed_dim=32,
            num_heads=2,
            mlp_dim=64,
            text_encoder_config="bert_test",
        ),
    ),
    "refsam3d": ("refsam3d", {}),
    "refsam3d_tiny": (
        "refsam3d",
        dict(
            img_size=(32, 64, 64),
            image_encoder="sam3d_adapter_test",
            image_encoder_overrides=dict(patch_size=(4, 8, 8)),
            embed_dim=32,
            num_heads=2,
            mlp_dim=64,
            cross_attn_heads=2,
            level_dim=8,
            text_encoder_config="clip_text_test",
            freeze_text_backbone=False,
        ),
    ),
}

_REGISTRY: Registry = Registry("segmentation model")


def _families():
    from LaMed.models.segmentation import FAMILIES

    return FAMILIES


def seg_config(name: str, **overrides):
    """The config of variant ``name`` with ``overrides`` applied (unknown fields raise, naming them)."""
    family, fields = _REGISTRY.get(name)()
    config_cls, _ = _families()[family]
    known = set(config_cls.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {config_cls.__name__} field(s) {unknown} for variant '{name}'")
    return config_cls(**{**fields, **overrides})


def create_seg_model(name: str, **overrides):
    """A randomly initialised model of variant ``name`` (see :data:`SEG_VARIANTS`)."""
    config = seg_config(name, **overrides)
    _, model_cls = _families()[SEG_VARIANTS[name][0]]
    return model_cls(config)


def list_seg_models() -> list[str]:
    return _REGISTRY.names()


for _name, _entry in SEG_VARIANTS.items():
    _REGISTRY.register(_name, (lambda e=_entry: e))
