"""Published Text3DSAM (``MagicXin/Text3DSAM``) -> :class:`~LaMed.models.segmentation.Text3DSAMModel` keys.

Layout (mirthAI/Text3DSAM; 706 keys with the tiny BERT):
``image_encoder.encoder.s0..s4`` (DCFormer; normalised by the ``dcformer`` converter),
``text_encoder.*`` (BertModel) -> ``text_encoder.model.*``, ``text_projector.{0,1,3}`` ->
``text_encoder.proj.{0,1,3}``, ``seg_decoder.prompt_encoder.*`` -> ``prompt_encoder.*``,
``seg_decoder.mask_decoder.*`` -> ``mask_decoder.*``. A BERT ``position_ids`` buffer saved by an
older transformers is dropped. Load into variant ``text3dsam_published``.
"""

from __future__ import annotations

from collections.abc import Mapping

from LaMed.models.convert.base import note_dropped, register_converter
from LaMed.models.convert.dcformer import convert_dcformer

_RENAMES = (
    ("text_projector.", "text_encoder.proj."),
    ("text_encoder.", "text_encoder.model."),
    ("seg_decoder.prompt_encoder.", "prompt_encoder."),
    ("seg_decoder.mask_decoder.", "mask_decoder."),
)


@register_converter("text3dsam")
def convert_text3dsam(state_dict: dict) -> dict:
    """Text3DSAM checkpoint -> ``Text3DSAMModel`` keys."""
    sd: Mapping = state_dict
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
    if not any(k.startswith("image_encoder.encoder.s0.") for k in sd):
        raise KeyError(f"not a Text3DSAM checkpoint: no 'image_encoder.encoder.s0.*' keys; first keys: {list(sd)[:5]}")
    out = {f"image_encoder.{k}": v for k, v in convert_dcformer(dict(sd), prefix="image_encoder.").items()}
    for key, value in sd.items():
        if key.startswith("image_encoder."):
            continue
        if key.endswith("position_ids"):
            note_dropped(value, "position_ids buffer saved by transformers 4.x, rebuilt by the model")
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise KeyError(
                f"Text3DSAM checkpoint: unexpected key {key!r} (not image_encoder / text_encoder / "
                "text_projector / seg_decoder)"
            )
    return out
