"""3D CLIP: a registered 3D vision encoder + an HF text encoder, two projections, one contrastive loss.

    config = LamedClipConfig(vision_encoder="vit3d_test", text_config=BertConfig(...).to_dict(), projection_dim=64)
    model = LamedClipModel(config)
    out = model(image=(B, 1, D, H, W), input_ids=(B, T), attention_mask=(B, T))
    out.loss, out.image_embeds (B, P), out.text_embeds (B, P)

Embeddings follow the published recipe: the pooled token (CLS by default; the mean of the tokens
or all grid tokens concatenated, see ``LamedClipConfig.vision_pooling``) goes through its
projection and is L2-normalised. (M3D-CLIP projects and normalises every token and then takes
token 0; projection and normalisation act per token, so projecting only the pooled token gives
the same vector at a fraction of the cost.)

Parameter names follow HF ``CLIPModel``: ``vision_model.*`` (the encoder's own names, MONAI-1.3
layout for ViT3D), ``text_model.*`` (the HF text model's names), ``visual_projection``,
``text_projection``, ``logit_scale`` and, for SigLIP, ``logit_bias``; HSENet stage 2 adds the frozen
stage-1 model under ``teacher.*``. ``LaMed.models.convert.clip`` maps the published layouts.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from LaMed.models.clip.configuration import LamedClipConfig
from LaMed.models.clip.losses import consistency_loss, consistency_weight, contrastive_loss, effective_scale
from LaMed.models.convert.base import load_converted
from LaMed.models.encoders import create_encoder


@dataclass
class LamedClipOutput(ModelOutput):
    """Output of :meth:`LamedClipModel.forward`.

    Attributes:
        loss: total loss (contrastive + weighted consistency), 0-d; present with ``return_loss``.
        image_embeds / text_embeds: L2-normalised ``(B, projection_dim)`` of the local batch.
        logits_per_image / logits_per_text: ``(R, N)`` scaled similarities (see ``losses.clip_logits``).
        loss_itc: the contrastive part; loss_consistency: HSENet's relation loss (stage 2);
        loss_teacher_itc: the frozen teacher's contrastive loss (logged only, as published).
    """

    loss: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_consistency: torch.Tensor | None = None
    loss_teacher_itc: torch.Tensor | None = None


def build_text_model(text_config) -> nn.Module:
    """``AutoModel.from_config(text_config)`` without a pooler head where the class has one.

    The published embeddings read token 0 of ``last_hidden_state``; an unused pooler would be a
    trainable parameter without gradient, which DDP refuses (``find_unused_parameters``).
    """
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    cls = MODEL_MAPPING[type(text_config)]
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}
    return AutoModel.from_config(text_config, **kwargs)


class LamedClipModel(PreTrainedModel):
    """3D CLIP (M3D-CLIP, HSENet stage 1 / 2, Med3DVLM SigLIP) from one :class:`LamedClipConfig`.

    Inputs: ``image (B, C, D, H, W)`` in [0, 1]; ``input_ids`` / ``attention_mask (B, T)``;
    ``slice_features (B, S, C_2d)`` for the HSENet 2E3 encoder. ``labels`` is accepted and ignored
    (the pairs are matched by position; the Trainer needs a label field to run ``compute_metrics``).
    """

    config_class = LamedClipConfig
    base_model_prefix = "lamed_clip"
    main_input_name = "image"
    supports_gradient_checkpointing = True
    _no_split_modules = []

    def __init__(self, config: LamedClipConfig):
        super().__init__(config)

        self.vision_model = create_encoder(config.vision_encoder, **dict(config.vision_overrides or {}))
        if config.vision_pooling == "cls" and not getattr(self.vision_model, "num_prefix_tokens", 0):
            raise ValueError(
                f"LamedClipConfig.vision_pooling='cls' but encoder {config.vision_encoder!r} has no "
                "CLS token; use vision_pooling='mean'"
            )
        self.text_model = build_text_model(config.text_config)
        text_width = getattr(config.text_config, "hidden_size", None) or config.text_config.dim  # DistilBERT: dim
        self.visual_projection = nn.Linear(
            self.pooled_image_width(), config.projection_dim, bias=config.projection_bias
        )
        self.text_projection = nn.Linear(text_width, config.projection_dim, bias=config.projection_bias)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        if config.loss_type == "siglip":
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init)))
        teacher = config.teacher
        if teacher is not None:
            self.teacher = LamedClipModel(teacher)
            self.teacher.requires_grad_(False)
        self.training_step = 0  # HSENet's consistency weight decays with the optimizer step
        self.post_init()

    # ---- initialisation -------------------------------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        # Only what this class owns: the encoders initialise themselves in their constructors (and
        # the HF text model through its own _init_weights), which this must not overwrite.
        if module is self:
            with torch.no_grad():
                self.logit_scale.fill_(float(self.config.logit_scale_init))
                if hasattr(self, "logit_bias"):
                    self.logit_bias.fill_(float(self.config.logit_bias_init))
        elif module is getattr(self, "visual_projection", None) or module is getattr(self, "text_projection", None):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        if hasattr(self.text_model, "_set_gradient_checkpointing") and self.text_model.supports_gradient_checkpointing:
            kw = {"gradient_checkpointing_func": gradient_checkpointing_func} if gradient_checkpointing_func else {}
            self.text_model._set_gradient_checkpointing(enable=enable, **kw, **kwargs)
        self.vision_model.set_grad_checkpointing(enable)

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "teacher"):
            self.teacher.eval()  # frozen: no dropout, BatchNorm statistics untouched
        return self

    @classmethod
    def from_encoders(
        cls, config: LamedClipConfig, text_model_path: str | None = None, vision_state_dict: dict | None = None
    ) -> LamedClipModel:
        """Build from ``config`` and load pretrained tower weights (never done inside ``__init__``).

        ``text_model_path``: an HF folder / hub id whose weights replace the text tower (its config
        must equal ``config.text_config`` in shape; the pooler, if any, is left out).
        ``vision_state_dict``: encoder weights in LaMed's layout (see ``LaMed.models.convert``).
        """

        model = cls(config)
        if text_model_path:
            pretrained = AutoModel.from_pretrained(text_model_path)
            sd = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("pooler.")}
            load_converted(model.text_model, sd, strict=True, source=str(text_model_path))
            model.config.text_model_path = str(text_model_path)
        if vision_state_dict is not None:
            load_converted(model.vision_model, vision_state_dict, strict=True, source="vision_state_dict")
        return model

    # ---- towers ---------------------------------------------------------------------------------
    @property
    def scale(self) -> torch.Tensor:
        """The inverse temperature multiplying the cosine similarities (see ``logit_scale_mode``)."""
        return effective_scale(self.logit_scale, self.config.logit_scale_mode, self.config.logit_scale_max)

    def pooled_image_width(self) -> int:
        """Width of the pooled image feature fed to ``visual_projection``: the encoder's width, or
        ``prod(grid) * width`` for ``vision_pooling="flatten"``."""
        width = self.vision_model.hidden_size
        if self.config.vision_pooling == "flatten":
            return math.prod(self.vision_model.grid_size) * width
        return width

    def pool_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` encoder tokens -> ``(B, pooled_image_width())`` per ``vision_pooling``."""
        pooling = self.config.vision_pooling
        if pooling == "cls":
            return tokens[:, 0]
        if pooling == "mean":
            return tokens.mean(dim=1)
        grid = tokens[:, self.vision_model.num_prefix_tokens :]
        expected = math.prod(self.vision_model.grid_size)
        if grid.shape[1] != expected:  # encoders that accept other sizes (DCFormer) must not be read wrongly
            raise ValueError(
                f"vision_pooling='flatten' reads the fixed grid {tuple(self.vision_model.grid_size)} "
                f"({expected} tokens) the model was built for; this input gave {grid.shape[1]} tokens"
            )
        return grid.reshape(grid.shape[0], -1)

    def encode_image(
        self, image: torch.Tensor, slice_features: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> ``(B, projection_dim)`` (L2-normalised unless ``normalize=False``)."""
        extra = {} if slice_features is None else {"slice_features": slice_features}
        tokens = self.vision_model.forward_features(image, **extra)
        emb = self.visual_projection(self.pool_image_tokens(tokens))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """``(B, T)`` token ids -> ``(B, projection_dim)`` (L2-normalised unless ``normalize=False``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.text_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        emb = self.text_projection(pooled)
        return F.normalize(emb, dim=-1) if normalize else emb

    def _loss_options(self) -> dict:
        c = self.config
        return dict(gather=c.gather_features, local_loss=c.local_loss, symmetric=c.siglip_symmetric)

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        slice_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_loss: bool = True,
        step: int | None = None,
    ) -> LamedClipOutput:
        """Embed both modalities and (with ``return_loss``) compute the configured loss.

        ``step``: optimizer step for the consistency weight (default ``self.training_step``, which the
        ``clip`` training task keeps in sync with the Trainer).
        """
        image_emb = self.encode_image(image, slice_features)
        text_emb = self.encode_text(input_ids, attention_mask)
        out = LamedClipOutput(image_embeds=image_emb, text_embeds=text_emb)
        if not return_loss:
            return out
        bias = getattr(self, "logit_bias", None)
        scale = self.scale
        loss, lpi, lpt = contrastive_loss(
            self.config.loss_type, image_emb, text_emb, scale, bias, **self._loss_options()
        )
        out.loss_itc, out.logits_per_image, out.logits_per_text = loss.detach(), lpi, lpt
        if hasattr(self, "teacher"):
            with torch.no_grad():
                t_img = self.teacher.encode_image(image)
                t_txt = self.teacher.encode_text(input_ids, attention_mask)
                # Published: the teacher's logits use the *student's* scale, and are detached.
                t_loss, t_lpi, t_lpt = contrastive_loss(
                    self.config.loss_type,
                    t_img,
                    t_txt,
                    scale.detach(),
                    None if bias is None else bias.detach(),
                    **self._loss_options(),
                )
            rel = consistency_loss((lpi, lpt), (t_lpi, t_lpt))
            w = consistency_weight(
                self.training_step if step is None else step,
                self.config.consistency_weight,
                self.config.consistency_steps,
            )
            loss = loss + w * rel
            out.loss_consistency, out.loss_teacher_itc = rel.detach(), t_loss.detach()
        out.loss = loss
        return out
