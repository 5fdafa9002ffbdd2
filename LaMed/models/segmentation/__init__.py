"""Text-prompted 3D segmentation: SegVol, Text3DSAM, RefSAM3D and their shared parts.

Shared parts (reused by the reasoning-segmentation models, which feed an LLM ``[SEG]`` state as
the prompt embedding): :class:`PromptEncoder3D`, :class:`TwoWayTransformer`,
:class:`MaskDecoder3D` / :class:`HighResMaskDecoder3D`, :class:`TextPromptEncoder`, the losses.

Models are ``PreTrainedModel`` s registered with ``AutoConfig`` / ``AutoModel`` under the model
types ``lamed_segvol``, ``lamed_text3dsam`` and ``lamed_refsam3d``; variants (published sizes and
tiny test twins) are data in :data:`SEG_VARIANTS`, built with :func:`create_seg_model`.
"""

from __future__ import annotations

from LaMed.models.segmentation.base import ImageFeatures, PromptableSegModel, Prompts, SegOutput
from LaMed.models.segmentation.configuration import (
    RefSAM3DConfig,
    SegVolConfig,
    Text3DSAMConfig,
    parse_prompt_type,
)
from LaMed.models.segmentation.losses import SegLoss, bce_loss, binary_dice_loss, dice_loss_monai, focal_loss_monai
from LaMed.models.segmentation.mask_decoder import HighResMaskDecoder3D, MaskDecoder3D
from LaMed.models.segmentation.prompt_encoder import PromptEncoder3D
from LaMed.models.segmentation.refsam3d import RefSAM3DModel
from LaMed.models.segmentation.segvol import SegVolModel
from LaMed.models.segmentation.text3dsam import Text3DSAMModel
from LaMed.models.segmentation.text_encoder import TEXT_CONFIGS, TextPromptEncoder
from LaMed.models.segmentation.transformer import TwoWayTransformer
from LaMed.models.segmentation.variants import SEG_VARIANTS, create_seg_model, list_seg_models

FAMILIES = {
    "segvol": (SegVolConfig, SegVolModel),
    "text3dsam": (Text3DSAMConfig, Text3DSAMModel),
    "refsam3d": (RefSAM3DConfig, RefSAM3DModel),
}


def _register_auto() -> None:
    from transformers import AutoConfig, AutoModel

    for config_cls, model_cls in FAMILIES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)


_register_auto()

__all__ = [
    "FAMILIES",
    "HighResMaskDecoder3D",
    "ImageFeatures",
    "MaskDecoder3D",
    "PromptEncoder3D",
    "Prompts",
    "PromptableSegModel",
    "RefSAM3DConfig",
    "RefSAM3DModel",
    "SEG_VARIANTS",
    "SegLoss",
    "SegOutput",
    "SegVolConfig",
    "SegVolModel",
    "TEXT_CONFIGS",
    "Text3DSAMConfig",
    "Text3DSAMModel",
    "TextPromptEncoder",
    "TwoWayTransformer",
    "bce_loss",
    "binary_dice_loss",
    "create_seg_model",
    "dice_loss_monai",
    "focal_loss_monai",
    "list_seg_models",
    "parse_prompt_type",
]
