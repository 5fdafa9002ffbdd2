"""Published R1Seg-3D LLM (``LamedPhi3ForCausalLMCrossA`` / Llama-3 twin) -> ``LaMedSegForCausalLM`` keys.

Layout (lihaoqin168/R1Seg-3D): the LLM (``model.{embed_tokens,layers,norm}``,
``lm_head``), ``model.mm_projector.projector.{0,2}``, ``model.seg_projector.{0,2}`` and
``model.vision_module.{image_encoder,prompt_encoder,mask_decoder}`` (the step-1 SAM, no text encoder)
plus the never-used ``model.vision_module.{mm_vision_proj,mm_language_proj,logit_scale}`` (dropped).
Step-3/4 ``model_with_lora.bin`` files carry ``base_model.model.`` prefixes and ``lora_A/B.default``
pairs (folded with ``lora_scaling``, published alpha / r = 32 / 16 = 2).

One encoder serves both paths, so ``vision_module.image_encoder.*`` becomes ``vision_tower.*`` and
the decoder ``seg_module.*``. Build the model with :func:`r1seg_llm_fields` plus
``legacy_config_fields("m3d_lamed")`` (positional splice after BOS, as published).
"""

from __future__ import annotations

from LaMed.models.convert.base import convert_state_dict, note_dropped, register_converter
from LaMed.models.convert.lamed_seg import seg_head_keys
from LaMed.models.convert.mllm import _llm_keys, strip_peft

VISION_MODULE = "model.vision_module."
UNUSED = ("mm_vision_proj.", "mm_language_proj.", "logit_scale")


@register_converter("r1seg_llm")
def convert_r1seg_llm(state_dict: dict, lora_scaling: float = 2.0, allow_partial: bool = False) -> dict:
    """R1Seg-3D merged / PEFT LLM checkpoint -> LaMed keys (shared encoder)."""
    sd = strip_peft(state_dict, lora_scaling)
    for k, v in sd.items():
        if k.startswith(VISION_MODULE) and k[len(VISION_MODULE) :].startswith(UNUSED):
            note_dropped(v, "CLIP-style heads of R1Seg-3D's step-1 pre-training, never used by the segmenter")
    sd = {
        k: v for k, v in sd.items() if not (k.startswith(VISION_MODULE) and k[len(VISION_MODULE) :].startswith(UNUSED))
    }
    out = _llm_keys(sd)
    proj = {k[len("model.mm_projector.") :]: v for k, v in sd.items() if k.startswith("model.mm_projector.")}
    if proj:
        out.update({f"mm_projector.{k}": v for k, v in convert_state_dict("m3d_projector", proj).items()})
    out.update(seg_head_keys(sd, VISION_MODULE, shared=True))
    if not allow_partial:
        have = {k.split(".")[0] for k in out}
        need = {"language_model", "vision_tower", "mm_projector", "seg_projector", "seg_module"}
        if not need <= have:
            raise KeyError(
                f"r1seg_llm: checkpoint lacks {sorted(need - have)} (pass allow_partial=True for a partial file)"
            )
        dangling = [k for k in out if ".lora_" in k]
        if dangling:
            raise KeyError(f"r1seg_llm: LoRA tensors without base weights: {dangling[:3]}")
    return out


def r1seg_llm_fields(num_clicks: int = 2) -> dict:
    """``LaMedSegConfig`` fields of the published R1Seg-3D LLM: shared ViT-B (no CLS), SegVol decoder
    without point / box embeddings, 3D mask path, ``num_clicks`` refinement passes (2 in steps 2-4),
    averaged [SEG] states."""
    return {
        "vision_tower": "vit3d_base_segvol",
        "projector": "spp",
        "shared_encoder": True,
        "seg_reduce": "mean",
        "seg_token_state": "predicting",
        "seg_variant": "r1seg_sam_published",
        "seg_first_new_token": False,  # its generate never reads the prefill state
        # R1Seg-3D trains with its own Dice (smoothed numerator); used if the import is trained further
        "seg_overrides": {"refine_passes": int(num_clicks), "loss": "dice_bce_r1seg"},
    }


__all__ = ["convert_r1seg_llm", "r1seg_llm_fields"]
