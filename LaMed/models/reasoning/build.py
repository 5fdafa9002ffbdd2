"""Loading weights into the segmentation head of a :class:`LaMedSegForCausalLM`.

``load_seg_weights(model, source)`` takes the decoder (and, for the M3D arrangement, its image
encoder) from

* a saved LaMed segmentation model folder (``task: seg`` output, e.g. R1Seg-3D step 1 trained here),
* or a published checkpoint file ``"family:path"`` converted by ``LaMed.models.convert``
  (``segvol``: SegVol_v1.pth / BAAI-SegVol ``pytorch_model.bin``; ``r1seg_sam``: ``r1seg_3dsam.bin``).

Its text encoder is dropped (the ``[SEG]`` state replaces it). With a shared encoder
(R1Seg-3D) the checkpoint's ``image_encoder.*`` goes into the LLM's ``vision_tower``, so the step-1
ViT feeds both paths; otherwise into ``seg_module.image_encoder``. Every part loads strictly.
"""

from __future__ import annotations

from pathlib import Path

from LaMed.models.checkpoint_files import read_state_dict
from LaMed.models.convert.base import KeyReport, convert_state_dict, load_converted


def seg_state_dict(source: str) -> dict:
    """``SegVolModel``-layout tensors of ``source`` (a LaMed seg folder, or ``family:path``), text encoder dropped."""
    family, sep, path = source.partition(":")
    if sep and not Path(source).exists():
        sd = convert_state_dict(family, read_state_dict(path), include_text=False)
    else:
        sd = {k: v for k, v in read_state_dict(source).items() if not k.startswith("text_encoder.")}
    if not any(k.startswith("mask_decoder.") for k in sd):
        raise KeyError(f"{source}: no mask_decoder.* tensors (not a segmentation checkpoint)")
    return sd


def load_seg_weights(model, source: str) -> dict[str, KeyReport]:
    """Load the segmentation head of ``model`` from ``source`` (see the module docstring); returns one
    :class:`KeyReport` per part (all empty: every part is loaded strictly)."""
    sd = seg_state_dict(source)
    encoder = {k[len("image_encoder.") :]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    head = {k: v for k, v in sd.items() if not k.startswith("image_encoder.")}
    reports = {}
    if model.config.shared_encoder:
        if not encoder:
            raise KeyError(f"{source}: no image_encoder.* tensors for the shared vision tower")
        reports["vision_tower"] = load_converted(model.towers[0], encoder, strict=True, source=source)
        reports["seg_module"] = load_converted(model.seg_module, head, strict=True, source=source)
    else:
        reports["seg_module"] = load_converted(model.seg_module, sd, strict=True, source=source)
    return reports


__all__ = ["read_state_dict", "seg_state_dict", "load_seg_weights"]
