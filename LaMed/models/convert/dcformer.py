"""DCFormer checkpoints (mirthAI/DCFormer, Med3DVLM, Text3DSAM) -> :class:`LaMed.models.encoders.dcformer.DCFormer`.

Accepted inputs: a bare encoder state dict (``pretrained_ViT.bin`` of Med3DVLM: ``encoder.s0...``)
or any checkpoint that contains one under a prefix (``model.vision_tower.vision_tower.`` in the
Med3DVLM VLM, ``vision_encoder.`` in DCFormer_SigLIP, ``image_encoder.`` in Text3DSAM, the CT-CLIP
wrapper of mirthAI/DCFormer). Other keys of such a checkpoint (LLM, text tower, decoder) are left
out. The original DCFormer layout is normalised: ``gamma`` -> ``scale``; dropped are the ``vq.*``
codebook (unused by the encoder's feature maps) and the BatchNorm aliases: every ``DecompConv3D``
of mirthAI/DCFormer also registers its three branch BatchNorms ``c{1,2,3}.1`` in a ``norm``
ModuleList, so its state dict repeats them as ``<conv>.norm.{0,1,2}.*``, the stem convolutions
``encoder.s0.0.{0..3}`` included, not only the blocks' ``dwconv``. A ``norm.{i}`` key is dropped
only when its twin ``c{i+1}.1`` key is present.

The weights only reproduce the published outputs with the published quirks switched on;
:func:`infer_dcformer_config` reads the architecture from the tensor shapes and adds those flags.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from LaMed.models.convert.base import note_dropped, register_converter

_STAGE_KEY = re.compile(r"^((?:[^.]+\.)*?)encoder\.s[0-4]\.")
_BN_ALIAS = re.compile(r"^(?P<conv>.+)\.norm\.(?P<i>[0-2])\.(?P<rest>[^.]+)$")
_ALIAS_REASON = "duplicate BatchNorm alias of DecompConv3D's c{1,2,3}.1 (mirthAI/DCFormer registers both)"
_VQ_REASON = "DCFormer's VectorQuantize codebook, not used by the encoder features"


def bn_alias_twin(key: str, keys) -> str | None:
    """The branch-BatchNorm key that ``key`` (``<conv>.norm.{i}.<p>``) aliases, if ``keys`` has it."""
    m = _BN_ALIAS.match(key)
    if not m:
        return None
    twin = f"{m.group('conv')}.c{int(m.group('i')) + 1}.1.{m.group('rest')}"
    return twin if twin in keys else None


SOURCES = ("med3dvlm", "dcformer", "text3dsam")


def find_prefix(state_dict: Mapping) -> str:
    """The prefix in front of ``encoder.s0..s4`` (``""`` for a bare encoder); it must be unique."""
    prefixes = {m.group(1) for k in state_dict if (m := _STAGE_KEY.match(k))}
    if not prefixes:
        raise KeyError("no DCFormer weights found: expected keys containing 'encoder.s0.' .. 'encoder.s4.'")
    if len(prefixes) > 1:
        raise KeyError(f"several DCFormer encoders in one checkpoint (prefixes {sorted(prefixes)}); pass prefix=...")
    return prefixes.pop()


@register_converter("dcformer")
def convert_dcformer(state_dict: dict, prefix: str | None = None) -> dict:
    """Published DCFormer layout (any of the three repositories) -> LaMed ``DCFormer`` keys."""
    prefix = find_prefix(state_dict) if prefix is None else prefix
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue  # another part of a full checkpoint
        key = key[len(prefix) :]
        if key.startswith("vq."):
            note_dropped(value, _VQ_REASON)
            continue
        if bn_alias_twin(prefix + key, state_dict):
            note_dropped(value, _ALIAS_REASON)
            continue
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "scale"
        out[key] = value
    return out


def detect_source(state_dict: Mapping) -> str:
    """Which repository a raw DCFormer state dict comes from, by its key pattern.

    Attention blocks -> ``"text3dsam"``; ``gamma`` / ``vq.*`` / BN aliases -> ``"dcformer"`` (some
    Med3DVLM revisions also name the layer scale ``gamma``; both need the same flags); otherwise
    ``"med3dvlm"``.
    """
    keys = list(state_dict)
    if any(".spatial_attention." in k for k in keys):
        return "text3dsam"
    if any(k.endswith(".gamma") or k.startswith("vq.") or ".vq." in k or bn_alias_twin(k, state_dict) for k in keys):
        return "dcformer"
    return "med3dvlm"


def legacy_flags(source: str) -> dict:
    """Config flags under which the released weights of ``source`` reproduce their outputs.

    All three stems lack the activation. Med3DVLM and DCFormer permute the volume to (H, W, D);
    Text3DSAM does not, and its attention multiplies q by sqrt(head_dim).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown DCFormer source {source!r}; expected one of {SOURCES}")
    if source == "text3dsam":
        return dict(stem_activation=False, attn_scale="legacy_mul", input_layout="DHW")
    return dict(stem_activation=False, input_layout="HWD")


def infer_dcformer_config(state_dict: Mapping, source: str | None = None) -> dict:
    """``DCFormerConfig`` fields (architecture read from shapes + legacy flags) for a checkpoint.

    ``state_dict`` may be raw or already converted; ``source`` defaults to :func:`detect_source`.
    Usage: ``DCFormer(DCFormerConfig(**infer_dcformer_config(sd)))`` then ``load_converted``.
    """
    source = source or detect_source(state_dict)
    sd = convert_dcformer(dict(state_dict))
    try:
        stem_w = sd["encoder.s0.0.0.c1.0.weight"]  # (C0, C_in, k, 1, 1)
    except KeyError:
        raise KeyError("DCFormer checkpoint has no stem weight 'encoder.s0.0.0.c1.0.weight'") from None
    channels, num_blocks, kernels, types = [int(stem_w.shape[0])], [1], [], []
    for s in range(1, 5):
        blocks = {int(k.split(".")[2]) for k in sd if k.startswith(f"encoder.s{s}.")}
        if not blocks:
            raise KeyError(f"DCFormer checkpoint has no stage 's{s}'")
        num_blocks.append(max(blocks) + 1)
        channels.append(int(sd[f"encoder.s{s}.0.proj.weight"].shape[0]))
        attn = f"encoder.s{s}.0.spatial_attention.attn.qkv.weight" in sd
        types.append("T" if attn else "C")
        # Attention stages have no depthwise kernel; keep the published default there.
        kernels.append(7 if attn else int(sd[f"encoder.s{s}.0.dwconv.c1.0.weight"].shape[2]))
    stem_depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("encoder.s0.0."))
    return dict(
        num_blocks=tuple(num_blocks),
        channels=tuple(channels),
        kernel_sizes=tuple(kernels),
        block_types=tuple(types),
        in_channels=int(stem_w.shape[1]),
        stem_kernel_size=int(stem_w.shape[2]),
        stem_depth=stem_depth,
        **legacy_flags(source),
    )
