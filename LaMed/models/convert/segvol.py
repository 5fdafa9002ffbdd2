"""Published SegVol checkpoints -> :class:`~LaMed.models.segmentation.SegVolModel` keys.

Accepted layouts (BAAI-DCAI/SegVol, and the seg module inside BAAI-DCAI/M3D's LaMed):

* GitHub / Drive ``SegVol_v1.pth``: ``{"model": {...}, "optimizer", "epoch", "scheduler"}`` with
  keys ``module.{image_encoder,prompt_encoder,mask_decoder}.*``,
  ``module.text_encoder.clip_text_model.text_model.*`` and ``module.text_encoder.dim_align.*``;
* Hugging Face ``BAAI/SegVol`` ``pytorch_model.bin``: the same under ``model.``;
* the seg module inside M3D-LaMed (``model.seg_module.*``, optionally under ``base_model.model.``),
  which has no text encoder (build the model with ``text_config=None``).

Renames: ``text_encoder.clip_text_model.text_model.`` -> ``text_encoder.model.`` (the releases were
saved with transformers 4.x, whose ``CLIPTextModel`` nests everything under ``text_model.``; the
transformers 5 class has no such level and only its own ``from_pretrained`` renames it; a v5-style
``clip_text_model.embeddings...`` is accepted too), ``text_encoder.dim_align.`` ->
``text_encoder.proj.``. Dropped (each reported by :func:`~LaMed.models.convert.base.account`):
CLIP's ``position_ids`` buffer (persistent in the transformers 4.18 that saved SegVol, not in ours),
MONAI >= 1.4's unused ViT cross-attention extras and R1Seg-3D's never-used ``mm_vision_proj``,
``mm_language_proj``, ``logit_scale``. Load into variant ``segvol_published`` (full-shape LayerNorm, SegVol's axis conventions).
"""

from __future__ import annotations

from collections.abc import Mapping

from LaMed.models.convert.base import note_dropped, register_converter
from LaMed.models.convert.vit import _UNUSED, UNUSED_REASON

ANCHOR = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_CONTAINERS = ("model", "state_dict", "module")
_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.", "text_encoder.")


def unwrap(sd: Mapping) -> Mapping:
    """Descend into ``{"model": {...}}`` / ``{"state_dict": {...}}`` wrappers until the anchor key shows."""
    while not any(k.endswith(ANCHOR) for k in sd):
        inner = [sd[k] for k in _CONTAINERS if isinstance(sd.get(k), Mapping)]
        if not inner:
            raise KeyError(f"no SAM-style decoder found: no key ends with {ANCHOR!r}; first keys: {list(sd)[:5]}")
        sd = inner[0]
    return sd


def find_prefix(sd: Mapping, prefix: str | None = None) -> str:
    found = sorted(k[: -len(ANCHOR)] for k in sd if k.endswith(ANCHOR))
    if prefix is not None:
        if prefix not in found:
            raise KeyError(f"no key {prefix + ANCHOR!r}; decoder prefixes present: {found}")
        return prefix
    if len(found) != 1:
        raise KeyError(f"several SAM decoders in this checkpoint, pass prefix= one of {found}")
    return found[0]


# Keys of the step-1 R1Seg-3D SAM that its CLIP-style pre-training left behind; nothing reads them.
_CLIP_EXTRAS = ("mm_vision_proj.", "mm_language_proj.", "logit_scale")
_TEXT_PREFIXES = (  # transformers 4.x CLIPTextModel nests its modules under ``text_model.``; v5 does not
    ("text_encoder.clip_text_model.text_model.", "text_encoder.model."),
    ("text_encoder.clip_text_model.", "text_encoder.model."),
)


def sam_key(key: str) -> tuple[str | None, str | None]:
    """One key (prefix already cut) -> ``(our name, None)``, or ``(None, reason)`` when it is dropped
    on purpose, or ``(None, None)`` when it is not a SAM key at all (left for the caller to report)."""
    if key.startswith(_CLIP_EXTRAS):
        return None, "CLIP-style heads of R1Seg-3D's step-1 pre-training, never used by the segmenter"
    if not key.startswith(_PARTS):
        return None, None
    if key.startswith("image_encoder.") and _UNUSED.match(key[len("image_encoder.") :]):
        return None, UNUSED_REASON
    if key.endswith("embeddings.position_ids"):
        return None, "position_ids buffer saved by transformers 4.x, rebuilt by the model"
    for old, new in _TEXT_PREFIXES:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    key = key.replace("text_encoder.dim_align.", "text_encoder.proj.", 1)
    key = key.replace("prompt_encoder.mask3D_downscaling.", "prompt_encoder.mask_downscaling.", 1)
    return key, None


def rename_sam_key(key: str) -> str | None:
    """One key (prefix already cut) -> ours, or None to drop it."""
    return sam_key(key)[0]


def convert_sam_family(state_dict: Mapping, prefix: str | None = None, include_text: bool = True) -> dict:
    sd = unwrap(state_dict)
    prefix = find_prefix(sd, prefix)
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name, reason = sam_key(key[len(prefix) :])
        if reason is not None:
            note_dropped(value, reason)
        if name is None or (not include_text and name.startswith("text_encoder.")):
            continue
        out[name] = value
    return out


@register_converter("segvol")
def convert_segvol(state_dict: dict, prefix: str | None = None, include_text: bool = True) -> dict:
    """SegVol (``SegVol_v1.pth``, HF ``BAAI/SegVol``, M3D-LaMed seg module) -> ``SegVolModel`` keys."""
    return convert_sam_family(state_dict, prefix, include_text)
