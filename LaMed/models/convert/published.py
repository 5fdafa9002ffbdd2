"""What is known about each released checkpoint without downloading it: sizes and quirks.

:data:`PUBLISHED` holds, per importer family, the number of tensors and of values (parameters and
buffers) in the released file and, for multimodal LLMs, the tokenizer length (= embedding rows).
Source: the state dict of each system's own model class (the public reference code of M3D,
SegVol, Med3DVLM, Text3DSAM, HSENet and R1Seg-3D) built at the published configuration (the release's ``config.json`` and its base models), with the
key prefixes the releases store; e.g. M3D-LaMed-Phi-3-4B: 4,049,101,904 values, i.e. the 16.2 GB of
its float32 safetensors. ``lamed import --verify`` compares a downloaded file with these counts: a
difference means another variant (a fine-tune of other sizes) or a damaged download.

:data:`QUIRKS` describes the config values that switch on a published behaviour LaMed would not
choose for new training; :func:`quirks_on` lists those set in a model (written to its model card).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class PublishedRelease:
    release: str
    keys: int
    values: int
    tokenizer_length: int | None = None


PUBLISHED: dict[str, PublishedRelease] = {
    "m3d_clip": PublishedRelease("GoodBaiBai88/M3D-CLIP", 342, 198_052_609),
    "hsenet_clip_stage1": PublishedRelease("Yanzhaoshi/HSENet_CLIP", 342, 198_052_609),
    "hsenet_clip_stage2": PublishedRelease("Yanzhaoshi/HSENet-2E3-CLIP", 696, 398_469_891),
    "med3dvlm_siglip": PublishedRelease("MagicXin/DCFormer_SigLIP", 532, 154_189_301),
    "segvol": PublishedRelease("BAAI/SegVol", 475, 180_891_293),
    "text3dsam": PublishedRelease("MagicXin/Text3DSAM", 706, 59_330_545),
    "r1seg_sam": PublishedRelease("lihao0011/R1Seg-3D-SAM", 474, 182_068_833),
    "m3d_lamed": PublishedRelease("GoodBaiBai88/M3D-LaMed-Phi-3-4B", 617, 4_049_101_904, 32015),
    "m3d_lamed_seg": PublishedRelease("GoodBaiBai88/M3D-LaMed-Phi-3-4B", 617, 4_049_101_904, 32015),
    "med3dvlm": PublishedRelease("MagicXin/Med3DVLM-Qwen-2.5-7B", 813, 7_678_258_931, 151666),
    "r1seg_llm": PublishedRelease("lihao0011/R1Seg-3D-Phi-3-4B", 479, 3_962_890_337, 32015),
}

# The LaMed tokens each release's training script added to its tokenizer (M3D's train.py adds four;
# Med3DVLM's only <im_patch>; HSENet and R1Seg-3D copy M3D's four).
RELEASE_TOKENS: dict[str, tuple[str, ...]] = {
    "m3d_lamed": ("<im_patch>", "<bx_start>", "<bx_end>", "[SEG]"),
    "m3d_lamed_seg": ("<im_patch>", "<bx_start>", "<bx_end>", "[SEG]"),
    "hsenet": ("<im_patch>", "<bx_start>", "<bx_end>", "[SEG]"),
    "r1seg_llm": ("<im_patch>", "<bx_start>", "<bx_end>", "[SEG]"),
    "med3dvlm": ("<im_patch>",),
}

# The preprocessing preset (LaMed.data.presets) of each release's own pipeline; `lamed import` stores
# it in the model config, so `lamed predict` feeds the model as its authors did. M3D-CLIP / M3D-LaMed:
# M3D-Cap volumes (32x256x256); SegVol: its foreground normalisation; Med3DVLM: 128x256x256;
# Text3DSAM: the FLARE / BiomedSegFM pipeline it was trained with; HSENet: CT-RATE (1.5/0.75/0.75 mm,
# [-1000, 200] HU); R1Seg-3D: M3D-Seg's SegVol-style normalisation.
PREPROCESSING: dict[str, str] = {
    "m3d_clip": "m3d",
    "m3d_lamed": "m3d",
    "m3d_lamed_seg": "m3d",
    "segvol": "segvol",
    "med3dvlm_siglip": "med3dvlm",
    "med3dvlm": "med3dvlm",
    "text3dsam": "flare",
    "hsenet_clip_stage1": "hsenet",
    "hsenet_clip_stage2": "hsenet",
    "hsenet": "hsenet",
    "r1seg_sam": "m3d_seg",
    "r1seg_llm": "m3d_seg",
}

# field -> {value: what the published code does}
QUIRKS: dict[str, dict[Any, str]] = {
    "image_insertion": {
        "legacy_offset": "image features spliced by position (right after BOS), not at the <im_patch> ids"
    },
    "logit_scale_mode": {"raw": "CLIP similarities multiplied by the raw logit_scale parameter (no exp, no clamp)"},
    "logit_scale_max": {None: "SigLIP scale exp(t') with no upper bound (no clamp at 100)"},
    "stem_activation": {False: "DCFormer stem without activation"},
    "attn_scale": {"legacy_mul": "DCFormer attention multiplies q by sqrt(head_dim) (inverted scale)"},
    "input_layout": {"HWD": "volume permuted to (H, W, D) before the DCFormer stem"},
    "upscale_norm": {"full": "mask decoder upscaling LayerNorm over the full (C, D, H, W) shape"},
    "point_convention": {"segvol": "SegVol's point / box coordinate convention (+0.5, padding point)"},
    "pe_axis_order": {"segvol": "SegVol's positional-encoding axis order"},
    "seg_first_new_token": {
        False: "generate: a [SEG] as the first new token gets no mask (the prefill state is never read)"
    },
    "loss": {"dice_bce_r1seg": "R1Seg-3D Dice loss for further training: 1 - (2 sum(pt) + 1) / (sum(p) + sum(t) + 1)"},
}


def _fields(config: Any) -> Iterator[tuple[str, Any]]:
    """``(name, value)`` of every field of a config, nested mappings included."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    elif hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        return
    for key, value in config.items():
        yield str(key), value
        if isinstance(value, Mapping):
            yield from _fields(value)


def quirks_on(model) -> list[str]:
    """``"field=value: description"`` of every published quirk switched on in ``model``'s configs
    (its own and those of its sub-modules, e.g. the vision tower's)."""
    seen: dict[str, None] = {}
    configs = [getattr(model, "config", None)] + [getattr(m, "config", None) for m in model.modules()]
    for config in configs:
        if config is None:
            continue
        items = dict(_fields(config))
        for name, value in items.items():
            table = QUIRKS.get(name)
            if table is None or not _hashable(value) or value not in table:
                continue
            if name == "logit_scale_max" and items.get("logit_scale_mode") != "exp":
                continue  # no exp, nothing to clamp
            seen[f"{name}={value!r}: {table[value]}"] = None
    return list(seen)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


__all__ = ["PUBLISHED", "PublishedRelease", "QUIRKS", "RELEASE_TOKENS", "quirks_on"]
