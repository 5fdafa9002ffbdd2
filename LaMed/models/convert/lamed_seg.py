"""Published M3D-LaMed *with its segmentation module* -> :class:`~LaMed.models.reasoning.LaMedSegForCausalLM` keys.

Layout (BAAI-DCAI/M3D, arXiv 2404.00578; ``base_model.model.`` PEFT prefixes and unmerged LoRA pairs
are handled as in ``m3d_lamed``):

| published                                           | LaMed                                   |
|-----------------------------------------------------|-----------------------------------------|
| ``model.{embed_tokens,layers,norm}.*``, ``lm_head`` | ``language_model.{model.*,lm_head}``    |
| ``model.vision_tower.vision_tower.*`` (138)         | ``vision_tower.*``                      |
| ``model.mm_projector.projector.{0,2}.*``            | ``mm_projector.projector.{0,2}.*``      |
| ``model.seg_projector.{0,2}.*``                     | ``seg_projector.{0,2}.*``               |
| ``model.seg_module.{image_encoder,prompt_encoder,mask_decoder}.*`` (137 + 17 + 122) | ``seg_module.*`` (SegVol names) |

Load into a model built with :func:`m3d_lamed_seg_fields` (SegVol's published decoder quirks, no
text encoder) and :func:`~LaMed.models.convert.mllm.legacy_config_fields` (positional image splice).
"""

from __future__ import annotations

from LaMed.models.convert.base import convert_state_dict, register_converter
from LaMed.models.convert.mllm import convert_m3d_lamed, strip_peft

SEG_PROJECTOR = "model.seg_projector."


def seg_head_keys(sd: dict, module_prefix: str, shared: bool) -> dict:
    """``seg_projector.*`` and the SAM parts under ``module_prefix`` in LaMed names (``image_encoder.*``
    -> ``vision_tower.*`` when the encoder is shared)."""
    out = {f"seg_projector.{k[len(SEG_PROJECTOR) :]}": v for k, v in sd.items() if k.startswith(SEG_PROJECTOR)}
    sam = convert_state_dict("segvol", sd, prefix=module_prefix, include_text=False)
    for k, v in sam.items():
        if shared and k.startswith("image_encoder."):
            out[f"vision_tower.{k[len('image_encoder.') :]}"] = v
        else:
            out[f"seg_module.{k}"] = v
    return out


@register_converter("m3d_lamed_seg")
def convert_m3d_lamed_seg(state_dict: dict, lora_scaling: float = 2.0, allow_partial: bool = False) -> dict:
    """M3D-LaMed (Phi-3 / Llama-2) full or PEFT checkpoint, seg module included -> LaMed keys."""
    sd = strip_peft(state_dict, lora_scaling)
    out = convert_m3d_lamed(sd, lora_scaling, allow_partial)
    if not any(k.startswith(SEG_PROJECTOR) for k in sd) and not allow_partial:
        raise KeyError(
            "m3d_lamed_seg: no model.seg_projector.* tensors (a checkpoint without segmentation? "
            "use the m3d_lamed family)"
        )
    out.update(seg_head_keys(sd, "model.seg_module.", shared=False))
    return out


def m3d_lamed_seg_fields() -> dict:
    """``LaMedSegConfig`` fields of the published M3D-LaMed segmentation head (SegVol ViT-B decoder
    on 32x256x256, published LayerNorm / axis conventions, averaged [SEG] states)."""
    return {
        "seg_variant": "segvol_published",
        "shared_encoder": False,
        "seg_reduce": "mean",
        "seg_token_state": "predicting",
        "seg_first_new_token": False,
    }


__all__ = ["convert_m3d_lamed_seg", "m3d_lamed_seg_fields", "seg_head_keys"]
