"""``LaMedForCausalLM``: vision tower(s) + projector + any HF causal LM, one class for every LLM.

    volume (B, 1, D, H, W) in [0, 1]
      -> vision tower(s)              one or more token streams (B, N_s, C_s)
      -> projector                    (B, T, H_llm), T = projector.num_tokens
      -> replaces the T <im_patch> embeddings of each row (masked_scatter, count checked)
      -> language model               built from its own config (AutoModelForCausalLM)

Parameters: ``vision_tower.*`` (``vision_tower.{i}.*`` with several towers), ``mm_projector.*``,
``language_model.*`` (the LLM's own names, e.g. ``language_model.model.layers.0.self_attn.qkv_proj``,
``language_model.lm_head``). Generation goes through ``GenerationMixin`` with the LLM's cache: the
volume is encoded once, in the prefill step, and never again for the new tokens.

Hook for ``[SEG]`` heads: :meth:`LaMedForCausalLM.token_hidden_states` returns the hidden states
that predict (or sit at) a chosen token id, the LISA / M3D convention; ``config.segmentation`` is
reserved for a head built on top of it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from LaMed.models.encoders import create_encoder
from LaMed.models.mllm.configuration import LaMedConfig
from LaMed.models.projectors import create_projector
from LaMed.models.projectors.base import projector_inputs


class ImageTokenMismatch(ValueError):
    """The prompt's ``<im_patch>`` count differs from what the projector produces."""


class LaMedPreTrainedModel(PreTrainedModel):
    config_class = LaMedConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only reached for vision / projector modules whose weights were missing from a checkpoint
        # (the towers initialise themselves when built; the LLM has its own _init_weights): give
        # them PyTorch's default initialisation rather than leaving uninitialised memory.
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        for name, p in module.named_parameters(recurse=False):
            if name in ("cls_token",) or name.endswith("position_embeddings"):
                nn.init.trunc_normal_(p, std=0.02)


class LaMedForCausalLM(LaMedPreTrainedModel, GenerationMixin):
    """3D multimodal causal LM.

    ``forward(input_ids (B, L), images (B, 1, D, H, W) | None, attention_mask, labels, ...)`` returns
    a ``CausalLMOutputWithPast`` (loss = the LLM's shifted cross-entropy over ``labels != -100``).
    ``generate(images=..., input_ids=..., attention_mask=...)`` is HF generation (prompt + new ids).
    """

    def __init__(self, config: LaMedConfig, language_model: nn.Module | None = None):
        """``language_model``: an already built (e.g. pretrained) causal LM of ``config.text_config``;
        when given, no second LLM is created (see ``LaMed.models.mllm.factory.create_mllm``)."""
        super().__init__(config)
        text_config = config.text_config
        towers = [create_encoder(n, **o) for n, o in zip(config.tower_names, config.tower_overrides)]
        self.vision_tower = towers[0] if len(towers) == 1 else nn.ModuleList(towers)
        fields = self._projector_fields(towers, text_config)
        self.mm_projector = create_projector(config.projector, **fields)
        self.feature_norm = None
        if config.vision_feature_norm == "batch":
            dims = fields.get("in_dims") or [fields["in_dim"]] * int(fields.get("num_streams", 1))
            self.feature_norm = nn.ModuleList(nn.BatchNorm1d(int(c), affine=False) for c in dims)
        # The towers and projector initialise themselves; mark them so post_init leaves them alone.
        for part in (self.vision_tower, self.mm_projector):
            for m in part.modules():
                m._is_hf_initialized = True
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(text_config)
        else:
            for m in language_model.modules():  # loaded weights: post_init must not re-initialise them
                m._is_hf_initialized = True
        self.language_model = language_model
        self.seg_module = None  # reserved for config.segmentation (reasoning segmentation)
        self.post_init()

    # ---- construction helpers --------------------------------------------------------------
    def _projector_fields(self, towers: Sequence[nn.Module], text_config) -> dict[str, Any]:
        c = self.config
        if c.vision_feature_stages is not None:
            fields = projector_inputs(towers[0], c.vision_feature_stages)
        else:
            fields = projector_inputs(towers[0])
            for t in towers[1:]:
                other = projector_inputs(t)
                if other != fields:
                    raise ValueError(
                        f"vision towers {c.tower_names} give different token geometries "
                        f"({fields} vs {other}); a multi-tower projector needs equal streams"
                    )
            if len(towers) > 1:
                fields["num_streams"] = len(towers)
        fields["out_dim"] = int(text_config.hidden_size)
        fields.update(c.projector_overrides or {})
        return fields

    @property
    def towers(self) -> list[nn.Module]:
        return list(self.vision_tower) if isinstance(self.vision_tower, nn.ModuleList) else [self.vision_tower]

    @property
    def num_image_tokens(self) -> int:
        """Tokens one volume occupies in the LLM input (``projector.num_tokens``)."""
        return int(self.mm_projector.num_tokens)

    # ---- embeddings (delegated to the LLM so resize_token_embeddings works) ------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model.get_decoder()

    # ---- vision ---------------------------------------------------------------------------
    def _slice_features(
        self, tower: nn.Module, images: torch.Tensor, given: torch.Tensor | None
    ) -> torch.Tensor | None:
        if not hasattr(tower, "slice_guided_attention"):
            return None
        if self.config.slice_feature_source == "input" or given is not None:
            return given
        s, dim = tower.config.num_slices, tower.config.slice_dim
        side = math.isqrt(dim)
        if side * side != dim:
            raise ValueError(f"slice_feature_source='pooled' needs a square slice_dim, got {dim}")
        pooled = F.adaptive_avg_pool3d(images[:, :1].float(), (s, side, side))  # (B, 1, S, k, k)
        return pooled.flatten(3).squeeze(1)

    def get_image_features(self, images: torch.Tensor, slice_features: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, D, H, W)`` volumes -> ``(B, T, H_llm)`` LLM-ready image tokens."""
        if images.ndim != 5:
            raise ValueError(f"images must be (B, C, D, H, W), got shape {tuple(images.shape)}")
        dtype = next(self.mm_projector.parameters()).dtype
        images = images.to(dtype)
        streams: list[torch.Tensor] = []
        for tower in self.towers:
            if self.config.vision_feature_stages is not None:
                streams.extend(tower.forward_tokens(images, self.config.vision_feature_stages))
                continue
            sf = self._slice_features(tower, images, slice_features)
            streams.append(tower(images, slice_features=sf) if sf is not None else tower(images))
        if self.feature_norm is not None:  # (B, N, C): standardise each channel over batch and tokens
            streams = [norm(t.transpose(1, 2)).transpose(1, 2) for norm, t in zip(self.feature_norm, streams)]
        return self.mm_projector(streams[0] if len(streams) == 1 else streams)

    def merge_image_features(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        image_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Write ``image_features (B, T, H)`` into ``inputs_embeds (B, L, H)``.

        ``placeholder`` mode: the positions holding ``image_token_id`` are replaced, in order, with
        ``masked_scatter``; every row must hold exactly ``T`` of them. ``legacy_offset`` mode (the
        published splice): positions ``offset .. offset + T`` after the row's left padding.
        """
        b, t, h = image_features.shape
        image_features = image_features.to(inputs_embeds.dtype)
        if self.config.image_insertion == "legacy_offset":
            start = self.config.legacy_image_offset
            pads = (
                (attention_mask == 0).long().cumprod(1).sum(1)
                if attention_mask is not None
                else torch.zeros(b, dtype=torch.long)
            )
            idx = pads.to(inputs_embeds.device)[:, None] + start + torch.arange(t, device=inputs_embeds.device)[None]
            if int(idx.max()) >= inputs_embeds.shape[1]:
                raise ImageTokenMismatch(
                    f"legacy_offset insertion needs {start + t} positions, sequence has {inputs_embeds.shape[1]}"
                )
            return inputs_embeds.scatter(1, idx[..., None].expand(-1, -1, h), image_features)
        token_id = self.config.image_token_id
        if token_id is None:
            raise ValueError(
                "config.image_token_id is not set: build the model with a tokenizer's <im_patch> id "
                "(LaMedProcessor.prepare_tokenizer) before passing images"
            )
        mask = input_ids == token_id
        per_row = mask.sum(1)
        if mask.shape[0] != b or bool((per_row != t).any()):
            raise ImageTokenMismatch(
                f"image placeholder count mismatch: the projector gives {t} tokens for each of {b} volume(s), "
                f"but the rows of input_ids hold {per_row.tolist()} <im_patch> tokens (id {token_id}); "
                f"expand the prompt's image placeholder with LaMedProcessor (num_image_tokens={t})"
            )
        return inputs_embeds.masked_scatter(mask[..., None].to(inputs_embeds.device), image_features.reshape(-1, h))

    # ---- forward ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        images: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        slice_features: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Args beyond the LLM's own: ``images (B, C, D, H, W)`` (or ready ``image_features (B, T, H)``),
        ``slice_features (B, S, C_2d)`` for 2E3 towers. Returns the LLM's output (``loss``, ``logits``
        ``(B, L, V)``, ``past_key_values``, optional ``hidden_states``)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if images is not None and image_features is None:
                image_features = self.get_image_features(images, slice_features)
            if image_features is not None:
                inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features, attention_mask)
        elif images is not None:
            raise ValueError("images need input_ids (the placeholders are found by id), not inputs_embeds")
        per_sample = labels is not None and self.config.loss_reduction == "sample"
        if per_sample:
            kwargs.pop("num_items_in_batch", None)  # a token count: meaningless for a mean over rows
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=None if per_sample else labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if per_sample:
            out.loss = per_sample_lm_loss(out.logits, labels)
        return out

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Whether the Trainer may hand ``num_items_in_batch`` over (token-mean loss only); with a
        per-sample mean the Trainer divides by the accumulation steps itself."""
        return self.config.loss_reduction == "token"

    def prepare_inputs_for_generation(
        self, *args, images=None, slice_features=None, image_features=None, is_first_iteration: bool = False, **kwargs
    ):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # The volume enters only in the prefill step; later steps read its keys/values from the cache.
        if is_first_iteration or not kwargs.get("use_cache", True):
            inputs.update(images=images, slice_features=slice_features, image_features=image_features)
        return inputs

    # ---- hook for [SEG]-driven heads --------------------------------------------------------
    @staticmethod
    def token_hidden_states(
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        token_id: int,
        predicting: bool = True,
        reduce: str = "mean",
    ) -> tuple:
        """Hidden states tied to ``token_id`` in each row.

        ``predicting=True`` (LISA / M3D convention) takes the state one position *before* each
        occurrence, the one whose logits predict the token; ``False`` the state at the token.
        Returns ``(states (B, H), found (B,) bool)``: several occurrences are averaged (``reduce="mean"``)
        or the last one kept (``"last"``); rows without the token get zeros and ``found=False``.
        """
        mask = input_ids == token_id
        if predicting:  # shift left: position i is selected when token i+1 is the target
            mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
        mask = mask[:, : hidden_states.shape[1]]
        found = mask.any(1)
        if reduce == "last":
            pos = torch.where(mask, torch.arange(mask.shape[1], device=mask.device), -1).max(1).values.clamp(min=0)
            states = hidden_states[torch.arange(hidden_states.shape[0]), pos]
        else:
            w = mask.to(hidden_states.dtype)
            states = (w[..., None] * hidden_states).sum(1) / w.sum(1, keepdim=True).clamp(min=1)
        return states * found[:, None].to(states.dtype), found


def per_sample_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy averaged over each row's labelled tokens, then over the rows that have any.

    ``logits (B, L, V)``, ``labels (B, L)`` (unshifted, ``ignore_index`` where no loss). Rows with no
    labelled token are left out of the mean; a batch with none gives 0 attached to the graph.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    tokens = nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=ignore_index, reduction="none"
    )  # (B, L-1), 0 where ignored
    counts = (shift_labels != ignore_index).sum(dim=1)
    rows = counts > 0
    if not bool(rows.any()):
        return shift_logits.sum() * 0.0
    return (tokens.sum(dim=1)[rows] / counts[rows]).mean()


def register_auto() -> None:
    """Register ``lamed`` with AutoConfig / AutoModelForCausalLM (idempotent; no trust_remote_code)."""
    with contextlib.suppress(ValueError):
        AutoConfig.register(LaMedConfig.model_type, LaMedConfig)
    with contextlib.suppress(ValueError):
        AutoModelForCausalLM.register(LaMedConfig, LaMedForCausalLM)


register_auto()

__all__ = ["LaMedForCausalLM", "LaMedPreTrainedModel", "ImageTokenMismatch", "register_auto"]
