"""``LaMedConfig``: one configuration for every 3D multimodal LLM (M3D-LaMed, Med3DVLM, HSENet, ...).

A LaMed model is three parts, each named here and built by its own factory:

* ``vision_tower``: one registered encoder name (``LaMed.models.encoders``) or a list of names
  (HSENet: a 3D ViT and a 2E3 ViT), with ``vision_overrides`` (a dict, or one dict per tower);
  ``vision_feature_stages`` picks several stages of one hierarchical encoder (Med3DVLM: DCFormer
  stages 3 and 4), each stage becoming one token stream;
* ``projector``: one registered projector name with ``projector_overrides``; its input geometry
  (``in_dim`` / ``grid_size`` / ``in_dims`` / ``grid_sizes`` / ``num_streams``) and ``out_dim``
  (the LLM width) are filled in from the tower and the LLM, and the number of image tokens is the
  projector's ``num_tokens``, never a number typed by hand;
* ``text_config``: the HF config of any causal LM (Phi-3, Phi-4-mini, Llama 2/3, Qwen2.5, ...),
  built with ``AutoModelForCausalLM.from_config``.

Image features replace the ``<im_patch>`` placeholder tokens (``image_token_id``) by id. The
published splice by position (``image_insertion="legacy_offset"``: features written over positions
``legacy_image_offset ..`` whatever the tokens are) is kept only for converted checkpoints whose
weights were trained that way. ``segmentation`` is reserved for the ``[SEG]`` head of the
reasoning-segmentation models (``None``: plain MLLM).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

IMAGE_INSERTIONS = ("placeholder", "legacy_offset")
SLICE_FEATURE_SOURCES = ("input", "pooled")
LOSS_REDUCTIONS = ("token", "sample")
FEATURE_NORMS = ("none", "batch")


class LaMedConfig(PreTrainedConfig):
    """Configuration of :class:`~LaMed.models.mllm.modeling.LaMedForCausalLM` (``model_type="lamed"``).

    Args:
        text_config: the language model's config (a ``PreTrainedConfig`` or a dict with ``model_type``).
        vision_tower: encoder name, or a list of names (one token stream each).
        vision_overrides: config overrides of the tower (a dict, or a list with one dict per tower).
        vision_feature_stages: stage indices of a hierarchical tower whose tokens feed the projector
            (one stream per stage); ``None`` uses the tower's ``forward`` output.
        projector: projector name; ``projector_overrides``: its config overrides.
        image_token_id / seg_token_id / box_start_token_id / box_end_token_id: ids of the added tokens.
        image_insertion: ``"placeholder"`` (by id, checked) or ``"legacy_offset"`` (published splice).
        legacy_image_offset: first position overwritten in ``legacy_offset`` mode (1: after BOS).
        slice_feature_source: for 2E3 towers, ``"input"`` (``slice_features`` passed to forward, e.g.
            precomputed BiomedCLIP features) or ``"pooled"`` (a parameter-free stand-in: each of the S
            axial slabs average-pooled to ``sqrt(slice_dim)`` squared, for tests and phantom demos).
        segmentation: config of an optional ``[SEG]``-driven segmentation head (None here).
        vision_feature_norm: ``"none"`` (published) or ``"batch"``: each token stream is standardised per
            channel (``BatchNorm1d`` without affine: batch statistics in training, running ones in
            evaluation) before the projector. A tower trained from scratch puts most of its output
            in an offset shared by every volume (~95 % at initialisation for the tiny DCFormer); the
            LLM then sees near-identical image tokens and learns to ignore them. Pretrained towers
            (CLIP) do not need it.
        loss_reduction: how the next-token loss is averaged. ``"token"`` (HF, every published recipe):
            over all answer tokens of the batch, so one 200-token report outweighs a hundred one-word
            VQA answers. ``"sample"``: over each row's answer tokens, then over the rows, so every
            sample weighs the same (short answers, which need the image, are not drowned out).
    """

    model_type = "lamed"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    vision_tower: str | list[str] = "vit3d_base"
    vision_overrides: dict[str, Any] | list[dict[str, Any]] | None = None
    vision_feature_stages: list[int] | None = None
    projector: str = "spp"
    projector_overrides: dict[str, Any] | None = None
    image_token_id: int | None = None
    seg_token_id: int | None = None
    box_start_token_id: int | None = None
    box_end_token_id: int | None = None
    image_insertion: str = "placeholder"
    legacy_image_offset: int = 1
    slice_feature_source: str = "input"
    segmentation: dict[str, Any] | None = None
    vision_feature_norm: str = "none"
    loss_reduction: str = "token"
    tie_word_embeddings: bool = False
    # What a scanner volume goes through before the tower: a record of LaMed.data.presets.preset_spec
    # ({"preset": "m3d", "window": [...], "size": [...], ...}); set by recipes (from the prepared
    # data's manifest) and by `lamed import`; inference uses it unless told otherwise.
    preprocessing: dict[str, Any] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_insertion not in IMAGE_INSERTIONS:
            raise ValueError(
                f"LaMedConfig.image_insertion must be one of {IMAGE_INSERTIONS}, got {self.image_insertion!r}"
            )
        if self.slice_feature_source not in SLICE_FEATURE_SOURCES:
            raise ValueError(
                f"LaMedConfig.slice_feature_source must be one of {SLICE_FEATURE_SOURCES}, got {self.slice_feature_source!r}"
            )
        if self.vision_feature_norm not in FEATURE_NORMS:
            raise ValueError(
                f"LaMedConfig.vision_feature_norm must be one of {FEATURE_NORMS}, got {self.vision_feature_norm!r}"
            )
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"LaMedConfig.loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}"
            )
        towers = self.tower_names
        overrides = self.tower_overrides
        if len(overrides) != len(towers):
            raise ValueError(
                f"LaMedConfig.vision_overrides has {len(overrides)} entries for {len(towers)} tower(s) {towers}"
            )
        if self.vision_feature_stages is not None:
            if len(towers) != 1:
                raise ValueError("LaMedConfig.vision_feature_stages needs exactly one (hierarchical) vision_tower")
            self.vision_feature_stages = [int(i) for i in self.vision_feature_stages]
        if self.legacy_image_offset < 0:
            raise ValueError(f"LaMedConfig.legacy_image_offset must be >= 0, got {self.legacy_image_offset}")
        # The output head follows the language model: a tied LLM (Phi-4-mini) keeps its tie.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def tower_names(self) -> list[str]:
        """The vision tower names as a list (one entry for a single tower)."""
        return [self.vision_tower] if isinstance(self.vision_tower, str) else list(self.vision_tower)

    @property
    def tower_overrides(self) -> list[dict[str, Any]]:
        """One overrides dict per tower."""
        ov = self.vision_overrides
        if ov is None:
            return [{} for _ in self.tower_names]
        if isinstance(ov, dict):
            return [dict(ov)] if isinstance(self.vision_tower, str) else [dict(ov) for _ in self.tower_names]
        return [dict(o or {}) for o in ov]


__all__ = ["LaMedConfig", "FEATURE_NORMS", "IMAGE_INSERTIONS", "LOSS_REDUCTIONS", "SLICE_FEATURE_SOURCES"]
