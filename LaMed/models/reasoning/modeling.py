"""``LaMedSegForCausalLM``: reasoning segmentation, the ``[SEG]`` token of a LaMed LLM prompts a 3D mask decoder.

    volume (B, 1, D, H, W) ──► vision tower ──► projector ──► <im_patch> embeddings ──► LLM ──► text
                         │            └─ (shared_encoder: unpooled patch tokens) ─┐        │
                         └─► seg_module.image_encoder (M3D-LaMed: re-encode) ─────┤        │ last-layer state that
                                                                                  ▼        ▼ predicts each [SEG]
                                   seg_module.prompt_encoder + mask_decoder ◄── seg_projector (H -> C)
                                                    │
                                                    ▼ logits (N, 1, D, H, W), one per [SEG]

Parameters: everything of :class:`~LaMed.models.mllm.LaMedForCausalLM` (``vision_tower``,
``mm_projector``, ``language_model``) plus ``seg_projector.{0,2}`` (published names) and
``seg_module.{image_encoder,prompt_encoder,mask_decoder}`` (``image_encoder`` absent with a shared
encoder, whose weights are ``vision_tower``).

Training (``forward`` with ``seg_masks (B, K, D, H, W)`` and ``seg_valid (B, K)``): the LM loss over
``labels`` plus, for every ``[SEG]`` of the input ids matched with a valid target (the k-th ``[SEG]``
of a row with target k), Dice + BCE of the decoded mask; the segmentation loss is the mean over the
decoded masks. Rows without ``[SEG]`` or without a target decode nothing and add no segmentation
loss (the published code decoded a mask from a zero prompt for them), and in the M3D arrangement
only rows that decode are re-encoded. The parts are returned as ``loss_lm``, ``loss_dice``,
``loss_bce`` (logged separately by ``LaMedTrainer``).

Generation: :meth:`LaMedSegForCausalLM.generate_with_masks` returns the new token ids and one mask
per generated ``[SEG]``, including a ``[SEG]`` emitted as the first new token, whose predicting state
is the last prompt position (the published ``generate`` dropped that step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from LaMed.models.encoders.layers import tokens_to_grid
from LaMed.models.mllm.modeling import LaMedForCausalLM
from LaMed.models.reasoning.configuration import LaMedSegConfig
from LaMed.models.segmentation import create_seg_model
from LaMed.models.segmentation.base import ImageFeatures, Prompts
from LaMed.models.segmentation.common import upsample_logits


# ---- [SEG] selection (pure functions: the hand-checkable core) -----------------------------------------
def seg_token_positions(
    input_ids: torch.Tensor, seg_token_id: int, predicting: bool = True, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the prompt state of every ``[SEG]`` sits.

    Args:
        input_ids: ``(B, L)`` token ids.
        seg_token_id: id of ``[SEG]``.
        predicting: take the position one before each ``[SEG]`` (the state whose logits predict it,
            LISA / M3D / R1Seg convention); ``False``: the ``[SEG]`` position itself.
        valid: optional ``(B, L)`` bool, positions that may hold a real ``[SEG]`` (e.g. before EOS).
    Returns:
        ``(rows (N,), cols (N,), ordinals (N,))`` in row-major order: the row, the position of the
        hidden state to use, and which ``[SEG]`` of its row it is (0, 1, ...). A ``[SEG]`` at
        position 0 has no predicting state and is left out.
    """
    mask = input_ids == seg_token_id
    if valid is not None:
        mask = mask & valid.bool()
    ordinal = mask.long().cumsum(1) - 1
    rows, pos = mask.nonzero(as_tuple=True)
    ords = ordinal[rows, pos]
    cols = pos - 1 if predicting else pos
    keep = cols >= 0
    return rows[keep], cols[keep], ords[keep]


def gather_seg_states(
    hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, ordinals: torch.Tensor, reduce: str = "each"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states ``(B, L, H)`` at ``(rows, cols)`` -> ``(states (N, H), rows (N,), ordinals (N,))``.

    ``reduce="each"`` keeps one state per ``[SEG]``; ``"mean"`` averages the states of each row
    into one (the published behaviour; ordinal 0).
    """
    states = hidden[rows, cols]
    if reduce == "each":
        return states, rows, ordinals
    if reduce != "mean":
        raise ValueError(f"reduce must be 'each' or 'mean', got {reduce!r}")
    uniq, inv = torch.unique(rows, return_inverse=True)
    total = states.new_zeros(len(uniq), states.shape[-1]).index_add(0, inv, states)
    count = torch.bincount(inv, minlength=len(uniq)).to(states.dtype)
    return total / count[:, None], uniq, torch.zeros_like(uniq)


def first_stop_mask(ids: torch.Tensor, stop_ids) -> torch.Tensor:
    """``(B, T)`` bool: positions strictly before the first stop token (EOS) of each row."""
    stop = torch.zeros_like(ids, dtype=torch.bool)
    for s in stop_ids:
        stop |= ids == int(s)
    return stop.long().cumsum(1) == 0


@dataclass
class LaMedSegOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the loss parts and, on request, the decoded masks.

    ``loss_lm`` / ``loss_dice`` / ``loss_bce``: scalar parts (``None`` when absent);
    ``seg_logits`` ``(N, 1, D, H, W)`` with ``seg_index`` ``(N, 2)`` = (row, ordinal) when
    ``return_seg_logits=True``.
    """

    loss_lm: torch.Tensor | None = None
    loss_dice: torch.Tensor | None = None
    loss_bce: torch.Tensor | None = None
    seg_logits: torch.Tensor | None = None
    seg_index: torch.Tensor | None = None


@dataclass
class SegGeneration:
    """Result of :meth:`LaMedSegForCausalLM.generate_with_masks`.

    ``sequences`` ``(B, T)``: the new token ids (prompt removed); ``seg_index`` ``(N, 2)``: (row,
    ordinal) of each decoded ``[SEG]``; ``seg_prompts`` ``(N, C)``: their projected prompt embeddings
    (reusable on other windows of the same volume); ``seg_logits`` ``(N, 1, D, H, W)``.
    """

    sequences: torch.Tensor
    seg_index: torch.Tensor
    seg_prompts: torch.Tensor
    seg_logits: torch.Tensor

    def masks_of(self, row: int) -> torch.Tensor:
        """Logits ``(K, D, H, W)`` of row ``row`` in ``[SEG]`` order (K = 0 when it emitted none)."""
        sel = (self.seg_index[:, 0] == row).nonzero().squeeze(1)
        sel = sel[torch.argsort(self.seg_index[sel, 1])]
        return self.seg_logits[sel, 0]


class _LastHidden:
    """Forward hook on the LLM's decoder that keeps its last-layer output (what ``lm_head`` reads)."""

    def __init__(self, keep_last_only: bool = False):
        self.keep_last_only = keep_last_only
        self.calls: list[torch.Tensor] = []

    def __call__(self, module, args, output):
        hs = output[0] if isinstance(output, tuple) else output.last_hidden_state
        self.calls.append(hs[:, -1] if self.keep_last_only else hs)

    @property
    def value(self) -> torch.Tensor:
        if not self.calls:
            raise RuntimeError("the language model's decoder did not run")
        return self.calls[-1]


class LaMedSegForCausalLM(LaMedForCausalLM):
    """LaMed multimodal LLM with a ``[SEG]``-prompted 3D mask decoder (M3D-LaMed seg, R1Seg-3D).

    See the module docstring for the data flow; :class:`LaMedSegConfig` for the options.
    """

    config_class = LaMedSegConfig
    # The loss is a plain batch mean (LM CE + mean over masks); the Trainer must not rescale it by
    # num_items_in_batch (forward accepts **kwargs for the LLM's own arguments).
    accepts_loss_kwargs = False

    def __init__(self, config: LaMedSegConfig):
        super().__init__(config)
        self._attach_seg(config)

    def _attach_seg(self, config: LaMedSegConfig) -> None:
        """Build ``seg_module`` and ``seg_projector`` on top of the MLLM parts already present."""

        seg = create_seg_model(config.seg_variant, **config.seg_config_fields())
        seg_img, tower_img = tuple(seg.config.img_size), self._tower_img_size()
        if tower_img is not None and tuple(tower_img) != seg_img:
            raise ValueError(
                f"LaMedSegConfig: the vision tower sees {tuple(tower_img)} volumes but seg variant "
                f"{config.seg_variant!r} expects {seg_img}; set seg_overrides.img_size (or the tower's img_size)"
            )
        if config.shared_encoder:
            self._check_shared(seg)
            # R1Seg-3D: the LLM's tower is the decoder's encoder; the variant's own encoder is not kept.
            seg.image_encoder = None
        self.seg_module = seg
        h, c = int(config.text_config.hidden_size), int(seg.config.embed_dim)
        # Published seg_projector: Linear(H, H), ReLU, Linear(H, C), Dropout(0.1) (keys 0.* and 2.*).
        self.seg_projector = nn.Sequential(
            nn.Linear(h, h), nn.ReLU(inplace=True), nn.Linear(h, c), nn.Dropout(config.seg_projector_dropout)
        )
        for part in (self.seg_module, self.seg_projector):  # they initialise themselves (SAM / PyTorch schemes)
            for m in part.modules():
                m._is_hf_initialized = True

    @classmethod
    def from_mllm(cls, mllm: LaMedForCausalLM, **seg_fields) -> LaMedSegForCausalLM:
        """Turn a built :class:`LaMedForCausalLM` (e.g. a stage-1 model) into a reasoning model *in place*:
        its tower, projector and LLM are kept as they are (no copy of a multi-GB LLM) and a fresh
        segmentation head is added. ``seg_fields``: :class:`LaMedSegConfig` fields."""
        if isinstance(mllm, LaMedSegForCausalLM):
            raise TypeError("from_mllm: the model already has a segmentation head")
        fields = {
            k: v
            for k, v in mllm.config.to_dict().items()
            if k not in ("model_type", "architectures", "transformers_version", "segmentation")
        }
        config = LaMedSegConfig.from_dict({**fields, **seg_fields})
        config.text_config = mllm.config.text_config  # keep the live LLM config (attention implementation, ...)
        mllm.__class__ = cls
        mllm.config = config
        mllm._attach_seg(config)
        ref = next(mllm.mm_projector.parameters())
        mllm.seg_module.to(device=ref.device, dtype=ref.dtype)
        mllm.seg_projector.to(device=ref.device, dtype=ref.dtype)
        return mllm

    # ---- construction helpers ----------------------------------------------------------------
    def _tower_img_size(self):
        cfg = getattr(self.towers[0], "config", None)
        return getattr(cfg, "img_size", None)

    def _check_shared(self, seg) -> None:
        tower, enc = self.towers[0], seg.image_encoder
        if tuple(tower.grid_size) != tuple(enc.grid_size) or int(tower.hidden_size) != int(seg.config.embed_dim):
            raise ValueError(
                f"shared_encoder: tower {self.config.tower_names[0]!r} gives a {tuple(tower.grid_size)} grid of "
                f"{tower.hidden_size} channels, the decoder of {self.config.seg_variant!r} needs "
                f"{tuple(enc.grid_size)} x {seg.config.embed_dim}"
            )
        cfg = getattr(tower, "config", None)
        if getattr(cfg, "feature_select", "patch") != "patch" or getattr(cfg, "feature_layer", -1) != -1:
            raise ValueError(
                "shared_encoder: the tower must give its final patch tokens (feature_select='patch', "
                "feature_layer=-1) so the LLM and the decoder see the same features"
            )

    @property
    def seg_token_id(self) -> int:
        if self.config.seg_token_id is None:
            raise ValueError(
                "config.seg_token_id is not set: build the model with the tokenizer's [SEG] id "
                "(LaMed.models.mllm.prepare_tokenizer)"
            )
        return int(self.config.seg_token_id)

    # ---- vision ----------------------------------------------------------------------------------
    def encode_shared(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared encoder: ``images (B, 1, D, H, W)`` -> ``(LLM tokens (B, T, H_llm), dense (B, C, d, h, w))``,
        one encoder pass for both."""
        tower = self.towers[0]
        dtype = next(self.mm_projector.parameters()).dtype
        tokens = tower.forward_features(images.to(dtype))[:, tower.num_prefix_tokens :]
        return self.mm_projector(tokens), tokens_to_grid(tokens, tower.grid_size)

    def seg_image_features(self, images: torch.Tensor, dense: torch.Tensor | None = None):
        """Decoder image features of ``images`` (M3D: the seg module's own encoder; shared: ``dense``
        from :meth:`encode_shared`, computed here if not given)."""

        if self.config.shared_encoder:
            if dense is None:
                dense = self.encode_shared(images)[1]
            return ImageFeatures(embeddings=dense)
        dtype = next(self.seg_module.parameters()).dtype
        return self.seg_module.encode_image(images.to(dtype))

    def decode_prompts(self, features, prompts: torch.Tensor, image_index: torch.Tensor, size) -> torch.Tensor:
        """Projected prompts ``(N, C)`` on ``features`` (volume ``image_index[n]``) -> logits ``(N, 1, *size)``."""

        low = self.seg_module.decode(
            features, Prompts(text_embedding=prompts.to(features.embeddings.dtype)), image_index=image_index
        )
        return upsample_logits(low, tuple(size))

    @contextlib.contextmanager
    def capture_last_hidden(self, keep_last_only: bool = False) -> Iterator[_LastHidden]:
        """Context in which every forward of the LLM's decoder records its last-layer output."""
        rec = _LastHidden(keep_last_only)
        handle = self.language_model.get_decoder().register_forward_hook(rec)
        try:
            yield rec
        finally:
            handle.remove()

    # ---- forward ----------------------------------------------------------------------------------
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
        seg_masks: torch.Tensor | None = None,
        seg_valid: torch.Tensor | None = None,
        return_seg_logits: bool = False,
        **kwargs,
    ) -> LaMedSegOutput:
        """:meth:`LaMedForCausalLM.forward` plus ``seg_masks (B, K, D, H, W)`` (0/1 targets of the
        k-th ``[SEG]`` of each row, at the volume's size) and ``seg_valid (B, K)`` (which targets
        exist; default all). Without ``seg_masks`` and ``return_seg_logits`` it is the plain MLLM."""
        want_seg = seg_masks is not None or return_seg_logits
        dense = None
        if want_seg and (input_ids is None or images is None):
            raise ValueError("segmentation needs input_ids (to find [SEG]) and images")
        if self.config.shared_encoder and images is not None and image_features is None and inputs_embeds is None:
            image_features, dense = self.encode_shared(images)
        with self.capture_last_hidden() if want_seg else contextlib.nullcontext() as rec:
            out = super().forward(
                input_ids=input_ids,
                images=images,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                slice_features=slice_features,
                image_features=image_features,
                **kwargs,
            )
        result = LaMedSegOutput(
            loss=out.loss,
            logits=out.logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            loss_lm=out.loss,
        )
        if not want_seg:
            return result
        seg = self._segment_from_hidden(rec.value, input_ids, images, dense, seg_masks, seg_valid, attention_mask)
        w_lm, w_seg = float(self.config.lm_loss_weight), float(self.config.seg_loss_weight)
        loss = None if out.loss is None else w_lm * out.loss
        if seg["loss"] is not None:
            loss = w_seg * seg["loss"] if loss is None else loss + w_seg * seg["loss"]
            result.loss_dice, result.loss_bce = seg["dice"], seg["bce"]
        elif loss is not None and self.training and seg_masks is not None:
            # No mask in this batch: touch the segmentation parameters with weight 0 so that every
            # data-parallel process reduces the same set of gradients (DDP hangs otherwise).
            loss = loss + 0.0 * sum(p.sum() for p in self._seg_parameters() if p.requires_grad)
        result.loss = loss
        if return_seg_logits:
            result.seg_logits, result.seg_index = seg["logits"], seg["index"]
        return result

    def _seg_parameters(self):
        yield from self.seg_projector.parameters()
        yield from self.seg_module.parameters()

    def _segment_from_hidden(self, hidden, input_ids, images, dense, seg_masks, seg_valid, attention_mask) -> dict:
        """Select ``[SEG]`` states, match them with targets, decode and score them."""
        c = self.config
        valid_pos = attention_mask.bool() if attention_mask is not None else None
        rows, cols, ords = seg_token_positions(
            input_ids, self.seg_token_id, c.seg_token_state == "predicting", valid_pos
        )
        states, rows, ords = gather_seg_states(hidden, rows, cols, ords, c.seg_reduce)
        if seg_masks is not None:
            if seg_masks.ndim != 5 or tuple(seg_masks.shape[2:]) != tuple(images.shape[2:]):
                raise ValueError(
                    f"seg_masks must be (B, K, D, H, W) at the volume size {tuple(images.shape[2:])}, "
                    f"got {tuple(seg_masks.shape)}"
                )
            k = seg_masks.shape[1]
            ok = (
                seg_valid.bool()
                if seg_valid is not None
                else torch.ones(seg_masks.shape[:2], dtype=torch.bool, device=seg_masks.device)
            )
            in_range = ords < k
            keep = in_range.clone()
            keep[in_range] = ok[rows[in_range], ords[in_range]]
            states, rows, ords = states[keep], rows[keep], ords[keep]
        out = {
            "loss": None,
            "dice": None,
            "bce": None,
            "index": torch.stack([rows, ords], 1),
            "logits": images.new_zeros((0, 1) + tuple(images.shape[2:])),
        }
        if rows.numel() == 0:
            return out
        uniq, inv = torch.unique(rows, return_inverse=True)
        features = self.seg_image_features(images[uniq], None if dense is None else dense[uniq])
        prompts = self.seg_projector(states.to(next(self.seg_projector.parameters()).dtype))
        logits = self.decode_prompts(features, prompts, inv, images.shape[2:])
        out["logits"] = logits
        if seg_masks is not None:
            parts = self.seg_module.loss_fn(logits, seg_masks[rows, ords].unsqueeze(1))
            out.update(loss=parts["loss"].mean(), dice=parts["dice"].mean(), bce=parts["bce"].mean())
        return out

    # ---- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_with_masks(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        slice_features: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> SegGeneration:
        """Generate answers and decode one mask per generated ``[SEG]``.

        ``input_ids (B, L)`` left-padded prompts, ``images (B, 1, D, H, W)``; ``generate_kwargs`` go to
        HF ``generate`` (``max_new_tokens``, ``do_sample``, ``eos_token_id``, ``pad_token_id``, ...).
        The volume is encoded once (with a shared encoder, that one pass also gives the decoder's
        features). With greedy / sampling decoding the ``[SEG]`` states are read from the decoding
        steps themselves; beam search and ``seg_token_state="at"`` re-read them with one teacher-forced
        pass over prompt + answer.
        """
        if generate_kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("generate_with_masks: num_return_sequences must be 1")
        dense = None
        if self.config.shared_encoder:
            image_features, dense = self.encode_shared(images)
        else:
            image_features = self.get_image_features(images, slice_features)
        prompt_len = input_ids.shape[1]
        stepwise = generate_kwargs.get("num_beams", 1) == 1 and self.config.seg_token_state == "predicting"
        with self.capture_last_hidden(keep_last_only=True) if stepwise else contextlib.nullcontext() as rec:
            seqs = self.generate(
                input_ids=input_ids, attention_mask=attention_mask, image_features=image_features, **generate_kwargs
            )
        if isinstance(seqs, dict) or hasattr(seqs, "sequences"):
            seqs = seqs.sequences
        new = seqs[:, prompt_len:]
        eos = generate_kwargs.get("eos_token_id", self.generation_config.eos_token_id)
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        valid = first_stop_mask(new, eos)
        seg_valid = valid  # new tokens whose [SEG] is read
        if not self.config.seg_first_new_token:  # published quirk: the prefill state is never read
            seg_valid = valid.clone()
            seg_valid[:, :1] = False
        if stepwise:
            # Call t of the decoder ends with the state that predicts new token t (call 0 = prefill:
            # its last prompt position predicts the first new token, which the published code missed).
            steps = torch.stack(rec.calls[: new.shape[1]], 1)  # (B, T, H)
            never = torch.zeros_like(valid[:, :1])  # a filler column that can never count as a [SEG]
            rows, cols, ords = seg_token_positions(
                torch.cat([new[:, :1], new], 1), self.seg_token_id, True, torch.cat([never, seg_valid], 1)
            )
            states, rows, ords = gather_seg_states(steps, rows, cols, ords, self.config.seg_reduce)
        else:
            full_mask = torch.cat(
                [attention_mask if attention_mask is not None else torch.ones_like(input_ids), valid.long()], 1
            )
            with self.capture_last_hidden() as rec2:
                super().forward(
                    input_ids=seqs, attention_mask=full_mask, image_features=image_features, use_cache=False
                )
            hidden = rec2.value[:, prompt_len - (1 if self.config.seg_token_state == "predicting" else 0) :]
            ids = (
                torch.cat([seqs[:, prompt_len - 1 : prompt_len], new], 1)
                if self.config.seg_token_state == "predicting"
                else new
            )
            v = (
                torch.cat([torch.zeros_like(valid[:, :1]), seg_valid], 1)
                if self.config.seg_token_state == "predicting"
                else seg_valid
            )
            rows, cols, ords = seg_token_positions(
                ids, self.seg_token_id, self.config.seg_token_state == "predicting", v
            )
            states, rows, ords = gather_seg_states(hidden, rows, cols, ords, self.config.seg_reduce)
        size = tuple(images.shape[2:])
        if rows.numel() == 0:
            c = int(self.seg_module.config.embed_dim)
            return SegGeneration(
                new,
                torch.zeros(0, 2, dtype=torch.long, device=new.device),
                images.new_zeros(0, c),
                images.new_zeros((0, 1) + size),
            )
        prompts = self.seg_projector(states.to(next(self.seg_projector.parameters()).dtype))
        uniq, inv = torch.unique(rows, return_inverse=True)
        features = self.seg_image_features(images[uniq], None if dense is None else dense[uniq])
        logits = self.decode_prompts(features, prompts, inv, size)
        return SegGeneration(new, torch.stack([rows, ords], 1), prompts, logits)

    def segment_with_prompts(self, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Decode ready prompt embeddings ``(N, C)`` (e.g. ``SegGeneration.seg_prompts``) on each of
        ``images (1 or N, 1, D, H, W)``: logits ``(N, 1, D, H, W)``. Used to reuse one answer's
        ``[SEG]`` on every window of a larger volume without generating text again."""
        n = prompts.shape[0]
        index = (
            torch.zeros(n, dtype=torch.long, device=prompts.device)
            if images.shape[0] == 1
            else torch.arange(n, device=prompts.device)
        )
        return self.decode_prompts(self.seg_image_features(images), prompts, index, images.shape[2:])


def register_auto() -> None:
    """Register ``lamed_seg`` with AutoConfig / AutoModelForCausalLM (idempotent; no trust_remote_code)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(LaMedSegConfig.model_type, LaMedSegConfig, exist_ok=True)
    AutoModelForCausalLM.register(LaMedSegConfig, LaMedSegForCausalLM, exist_ok=True)


register_auto()

__all__ = [
    "LaMedSegForCausalLM",
    "LaMedSegOutput",
    "SegGeneration",
    "seg_token_positions",
    "gather_seg_states",
    "first_stop_mask",
    "register_auto",
]
