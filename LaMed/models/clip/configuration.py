"""Configuration of the 3D CLIP model (:class:`LamedClipConfig`, ``model_type="lamed_clip"``).

One config covers the three published 3D CLIP trainings; they differ only in data:

| field              | M3D-CLIP / HSENet stage 1 | HSENet stage 2            | Med3DVLM DCFormer_SigLIP        |
|--------------------|---------------------------|---------------------------|---------------------------------|
| vision_encoder     | ``vit3d_base``            | ``vit3d_2e3_base``        | ``dcformer_small_med3dvlm``     |
| vision_pooling     | ``cls``                   | ``cls``                   | ``mean`` (of the s4 tokens)     |
| text_config        | BERT-base (uncased)       | BERT-base (uncased)       | DistilBERT (ClinicalBERT)       |
| loss_type          | ``infonce``               | ``infonce`` + consistency | ``siglip`` (symmetrised logits) |
| logit_scale_mode   | ``raw`` (published quirk) | ``raw``                   | ``exp``                         |
| teacher_config     | --                        | the stage-1 CLIP          | --                              |

``logit_scale_mode``: the published M3D-CLIP / HSENet code multiplies the similarities by the
learned parameter itself ("raw", initial inverse temperature 2.66, unclamped); the default for new
training is OpenAI-CLIP / open_clip's ``exp(logit_scale)`` clamped at ``logit_scale_max`` (initial
inverse temperature 14.3). The converters set "raw" for the published weights.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

LOSS_TYPES = ("infonce", "siglip")
TEXT_POOLINGS = ("cls", "mean")
# "flatten": every grid token concatenated in grid order (CT-RATE CLIPs: DCFormer's ``--reduction none``).
VISION_POOLINGS = (*TEXT_POOLINGS, "flatten")
SCALE_MODES = ("exp", "raw")

# Published initial values: CLIP's ln(1/0.07) (M3D, HSENet, Med3DVLM), SigLIP paper's t'=ln 10, b=-10.
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0


class LamedClipConfig(PreTrainedConfig):
    """Typed configuration of :class:`~LaMed.models.clip.modeling.LamedClipModel`.

    Vision tower:
        vision_encoder: registered encoder name (``LaMed.models.encoders.list_encoders()``).
        vision_overrides: encoder config fields that replace the variant's (e.g. ``img_size``).
        vision_pooling: ``"cls"`` (token 0, needs a CLS token; M3D / HSENet), ``"mean"`` over all
            tokens of ``forward_features`` (Med3DVLM: mean of DCFormer's last-stage tokens) or
            ``"flatten"``: the grid tokens (prefix tokens dropped) concatenated in grid order, so
            ``visual_projection`` is ``Linear(prod(grid) * width, projection_dim)`` (the CT-RATE CLIP
            of DCFormer's code, ``--reduction none``). Its linear path weighs each position on its
            own: a mean, whose linear path sums one patch embedding over every position, cannot tell
            a missing left kidney from a missing spleen beside it; a flattened readout can. The
            grid is fixed by ``vision_overrides["img_size"]``: inputs of another size are refused.
    Text tower:
        text_config: the HF config of the text encoder (dict with ``model_type`` or a config
            object; default BERT-base). Built with ``AutoModel.from_config``.
        text_model_path: where the pretrained text weights / tokenizer came from (provenance; the
            weights are loaded by :meth:`LamedClipModel.from_encoders`, never inside ``__init__``).
        text_pooling: ``"cls"`` (token 0 of ``last_hidden_state``, published) or ``"mean"``
            (attention-masked mean, sentence-transformers style).
    Heads and loss:
        projection_dim / projection_bias: the two projections ``Linear(width, projection_dim)``
            (published: 768 -> 768 with bias).
        loss_type: ``"infonce"`` (symmetric cross-entropy) or ``"siglip"`` (pairwise sigmoid).
        logit_scale_init: initial value of the ``logit_scale`` parameter (default: ln(1/0.07) for
            InfoNCE, ln 10 for SigLIP); logit_bias_init: SigLIP bias (default -10).
        logit_scale_mode / logit_scale_max: ``"exp"``: scale = min(exp(logit_scale), max), or
            ``exp(logit_scale)`` unbounded when ``logit_scale_max`` is ``None`` (Med3DVLM's SigLIP,
            ``exp(t')`` as in the SigLIP paper; set by ``lamed import med3dvlm_siglip``);
            ``"raw"``: scale = logit_scale (published M3D / HSENet quirk, no clamp).
        gather_features / local_loss: all-gather embeddings with gradient over processes; with
            ``local_loss`` each process scores only its own rows against every column.
        siglip_symmetric: SigLIP on ``(L + L^T) / 2`` (Med3DVLM) instead of ``L``.
    HSENet stage 2:
        teacher_config: a frozen stage-1 CLIP (``LamedClipConfig`` as a dict) whose logits the
            model is pulled towards; consistency_weight / consistency_steps: weight
            ``w(step) = weight * (1 - step / steps)`` for ``step < steps``, else 0.
    """

    model_type = "lamed_clip"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    # Only the embeddings are gathered by the Trainer at evaluation (logits differ in shape per batch).
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        "logits_per_image",
        "logits_per_text",
        "loss_itc",
        "loss_consistency",
        "loss_teacher_itc",
    ]

    vision_encoder: str = "vit3d_base"
    vision_overrides: dict[str, Any] | None = None
    vision_pooling: str = "cls"
    text_config: Any = None
    text_model_path: str | None = None
    text_pooling: str = "cls"
    projection_dim: int = 768
    projection_bias: bool = True
    loss_type: str = "infonce"
    logit_scale_init: float | None = None
    logit_bias_init: float | None = None
    logit_scale_mode: str = "exp"
    logit_scale_max: float | None = 100.0
    gather_features: bool = True
    local_loss: bool = False
    siglip_symmetric: bool = False
    teacher_config: dict[str, Any] | None = None
    consistency_weight: float = 0.1
    consistency_steps: int = 5000
    # What a scanner volume goes through before the vision tower (LaMed.data.presets.preset_spec
    # record); set by recipes and `lamed import`, used by inference by default.
    preprocessing: dict[str, Any] | None = None
    hidden_size: int | None = None  # = projection_dim; read by DeepSpeed "auto" bucket sizes

    def __post_init__(self, **kwargs):
        if isinstance(self.teacher_config, PreTrainedConfig):
            self.teacher_config = self.teacher_config.to_dict()
        self.vision_overrides = dict(self.vision_overrides or {})
        for key, value in list(self.vision_overrides.items()):
            if isinstance(value, tuple):  # JSON round trip turns tuples into lists; keep one form
                self.vision_overrides[key] = list(value)
        if self.logit_scale_init is None:
            self.logit_scale_init = SIGLIP_LOGIT_SCALE_INIT if self.loss_type == "siglip" else CLIP_LOGIT_SCALE_INIT
        if self.logit_bias_init is None and self.loss_type == "siglip":
            self.logit_bias_init = SIGLIP_LOGIT_BIAS_INIT
        self.hidden_size = self.projection_dim
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the field for an invalid value."""
        choices = {
            "loss_type": LOSS_TYPES,
            "vision_pooling": VISION_POOLINGS,
            "text_pooling": TEXT_POOLINGS,
            "logit_scale_mode": SCALE_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"LamedClipConfig.{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.projection_dim < 1:
            raise ValueError(f"LamedClipConfig.projection_dim: expected >= 1, got {self.projection_dim}")
        if self.logit_scale_max is not None and self.logit_scale_max <= 0:
            raise ValueError(f"LamedClipConfig.logit_scale_max: expected > 0, got {self.logit_scale_max}")
        if self.loss_type == "siglip" and self.siglip_symmetric and self.local_loss:
            raise ValueError(
                "LamedClipConfig: siglip_symmetric needs the square (gathered) logit matrix; "
                "it cannot be combined with local_loss"
            )
        if self.consistency_steps < 1 or self.consistency_weight < 0:
            raise ValueError(
                "LamedClipConfig.consistency_steps must be >= 1 and consistency_weight >= 0, got "
                f"{self.consistency_steps} / {self.consistency_weight}"
            )
        if self.teacher_config is not None and self.teacher_config.get("teacher_config"):
            raise ValueError("LamedClipConfig.teacher_config: a teacher cannot have a teacher of its own")

    @property
    def teacher(self) -> LamedClipConfig | None:
        """The teacher's config as a :class:`LamedClipConfig` (``None`` without a teacher)."""
        if self.teacher_config is None:
            return None
        cfg = {k: v for k, v in self.teacher_config.items() if k not in ("model_type", "transformers_version")}
        return LamedClipConfig(**cfg)
