"""``LaMedSegConfig``: a LaMed multimodal LLM whose ``[SEG]`` token drives a 3D mask decoder.

It is :class:`~LaMed.models.mllm.LaMedConfig` (vision tower, projector, any HF causal LM) plus the
segmentation head, described as data:

* ``seg_variant`` / ``seg_overrides``: a text-prompted model of ``LaMed.models.segmentation``
  (``SEG_VARIANTS``: ``segvol``, ``segvol_published``, ``r1seg_sam_published``, ``segvol_tiny``, ...)
  whose prompt encoder and mask decoder turn a prompt embedding into a mask. Its text encoder is
  never built: the projected ``[SEG]`` hidden state is the prompt.
* ``shared_encoder``: the two published arrangements.
  ``False`` (M3D-LaMed): the segmentation module owns its own image encoder (SegVol's ViT) and
  re-encodes the volume of every row that asks for a mask.
  ``True`` (R1Seg-3D): one encoder, the LLM's ``vision_tower``, serves both; its unpooled patch
  tokens are the decoder's image embedding and its pooled tokens (the projector) feed the LLM,
  so the volume is encoded once. The segmentation variant's own image encoder is replaced by the
  tower (the decoder's grid and width follow it).
* ``seg_token_state``: ``"predicting"`` (LISA / M3D / R1Seg: the last-layer hidden state one
  position before ``[SEG]``, the one whose logits predict it) or ``"at"`` (the state at ``[SEG]``).
* ``seg_reduce``: ``"each"`` - every ``[SEG]`` of an answer is one prompt and one mask (the k-th
  ``[SEG]`` of a row is matched with the row's k-th target mask); ``"mean"`` - the published
  behaviour: all ``[SEG]`` states of a row are averaged into one prompt, one mask per row.
* ``seg_first_new_token``: whether a ``[SEG]`` generated as the first new token gets a mask
  (:meth:`generate_with_masks`). ``False`` is the published M3D-LaMed / R1Seg-3D ``generate``: it
  reads the states of the decoding steps after the prefill only, so a leading ``[SEG]`` is ignored
  (set by ``lamed import`` for those releases); teacher-forced training reads every ``[SEG]`` either way.
* ``seg_projector_dropout``: the published ``seg_projector`` is Linear(H, H), ReLU, Linear(H, C),
  Dropout(0.1), ``C`` = the decoder's prompt width.
* ``lm_loss_weight`` / ``seg_loss_weight``: total loss = ``lm * CE + seg * mean over masks of
  (Dice + BCE)`` (Dice / BCE weights are the segmentation config's); published: 1 and 1.
* ``preprocess_preset``: the ``LaMed.data.presets`` preset that turns a scanner volume into the
  network input for ``lamed predict`` (its size is replaced by the tower's ``img_size``).
* ``presence_gate``: generation checks every ``[SEG]`` with the segmentation config's presence
  rule (largest logit, calibrated or "mask not empty"); a structure reported absent gets an empty
  mask, and an answer whose every ``[SEG]`` is absent is generated again with ``[SEG]`` forbidden,
  so it says so in words. For models trained with absent probes (``data.absent_probe``); off for
  the published releases (their decoders never saw an empty target).
"""

from __future__ import annotations

from typing import Any

from LaMed.models.mllm.configuration import LaMedConfig

SEG_TOKEN_STATES = ("predicting", "at")
SEG_REDUCTIONS = ("each", "mean")


class LaMedSegConfig(LaMedConfig):
    """Configuration of :class:`~LaMed.models.reasoning.modeling.LaMedSegForCausalLM` (``model_type="lamed_seg"``).

    Every :class:`LaMedConfig` field, plus those described in the module docstring.
    """

    model_type = "lamed_seg"

    seg_variant: str = "segvol"
    seg_overrides: dict[str, Any] | None = None
    shared_encoder: bool = False
    seg_token_state: str = "predicting"
    seg_reduce: str = "each"
    seg_first_new_token: bool = True
    seg_projector_dropout: float = 0.1
    lm_loss_weight: float = 1.0
    seg_loss_weight: float = 1.0
    preprocess_preset: str = "m3d"
    presence_gate: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.seg_token_state not in SEG_TOKEN_STATES:
            raise ValueError(
                f"LaMedSegConfig.seg_token_state must be one of {SEG_TOKEN_STATES}, got {self.seg_token_state!r}"
            )
        if self.seg_reduce not in SEG_REDUCTIONS:
            raise ValueError(f"LaMedSegConfig.seg_reduce must be one of {SEG_REDUCTIONS}, got {self.seg_reduce!r}")
        if not 0.0 <= float(self.seg_projector_dropout) < 1.0:
            raise ValueError(
                f"LaMedSegConfig.seg_projector_dropout must be in [0, 1), got {self.seg_projector_dropout}"
            )
        overrides = dict(self.seg_overrides or {})
        if overrides.get("text_encoder_config") is not None:
            raise ValueError(
                "LaMedSegConfig.seg_overrides: text_encoder_config must stay None (the [SEG] state is the prompt)"
            )
        overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}
        self.seg_overrides = overrides
        if self.shared_encoder and len(self.tower_names) != 1:
            raise ValueError(f"LaMedSegConfig.shared_encoder needs exactly one vision tower, got {self.tower_names}")

    def seg_config_fields(self) -> dict[str, Any]:
        """Overrides for ``create_seg_model(self.seg_variant, ...)``: the text encoder switched off and,
        with a shared encoder, the decoder geometry taken from the vision tower (its name and
        overrides), so the two cannot disagree."""
        fields = {**self.seg_overrides, "text_encoder_config": None}
        if self.shared_encoder:
            tower = dict(self.tower_overrides[0])
            if "img_size" in tower:
                fields["img_size"] = list(tower.pop("img_size"))
            fields["image_encoder"] = self.tower_names[0]
            fields["image_encoder_overrides"] = tower
        return fields


__all__ = ["LaMedSegConfig", "SEG_TOKEN_STATES", "SEG_REDUCTIONS"]
