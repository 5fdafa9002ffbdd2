"""R1Seg-3D's step-1 SAM (``r1seg_3dsam.bin``) -> ``SegVolModel`` of variant ``r1seg_sam_published``.

Layout (lihaoqin168/R1Seg-3D): ``image_encoder.*`` (137, no CLS),
``prompt_encoder.{pe_layer, mask3D_downscaling.{0,1,3,4,6}, no_mask_embed}`` (no point / box
embeddings), ``mask_decoder.*`` (SegVol's, full-shape LayerNorm), ``text_encoder.clip_text_model.*``
and ``text_encoder.dim_align.*``. Renamed as SegVol's plus ``mask3D_downscaling`` ->
``mask_downscaling``; the never-used CLIP-style ``mm_vision_proj``, ``mm_language_proj`` and
``logit_scale`` are dropped. The same keys inside the R1Seg-3D LLM checkpoint
(``model.vision_module.*`` style prefixes) are found with ``prefix=``.
"""

from __future__ import annotations

from LaMed.models.convert.base import register_converter
from LaMed.models.convert.segvol import convert_sam_family


@register_converter("r1seg_sam")
def convert_r1seg_sam(state_dict: dict, prefix: str | None = None, include_text: bool = True) -> dict:
    """``r1seg_3dsam.bin`` -> ``SegVolModel`` keys (variant ``r1seg_sam_published``)."""
    return convert_sam_family(state_dict, prefix, include_text)
