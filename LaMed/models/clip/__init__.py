"""3D CLIP pretraining: :class:`LamedClipConfig` / :class:`LamedClipModel` and their losses.

Importing this package registers ``model_type="lamed_clip"`` with ``AutoConfig`` and ``AutoModel``,
so ``AutoModel.from_pretrained(folder)`` returns a :class:`LamedClipModel` without
``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel

from LaMed.models.clip.configuration import LamedClipConfig
from LaMed.models.clip.losses import (
    consistency_loss,
    consistency_weight,
    effective_scale,
    gather_features,
    infonce_loss,
    siglip_loss,
)
from LaMed.models.clip.modeling import LamedClipModel, LamedClipOutput

AutoConfig.register(LamedClipConfig.model_type, LamedClipConfig, exist_ok=True)
AutoModel.register(LamedClipConfig, LamedClipModel, exist_ok=True)

__all__ = [
    "LamedClipConfig",
    "LamedClipModel",
    "LamedClipOutput",
    "consistency_loss",
    "consistency_weight",
    "effective_scale",
    "gather_features",
    "infonce_loss",
    "siglip_loss",
]
