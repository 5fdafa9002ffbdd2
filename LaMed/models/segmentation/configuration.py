"""Configs of the text-prompted 3D segmentation models (``PreTrainedConfig`` subclasses).

In transformers v5 a config is a dataclass: each family's typed fields are annotated class
attributes (defaults = the published model) and ``save_pretrained`` / ``from_pretrained``
round-trip them as JSON; ``__post_init__`` validates them.

Shared fields (:class:`SegConfigBase`):
  * geometry: ``img_size`` (D, H, W) of the network input, ``image_encoder`` (a name of
    ``LaMed.models.encoders``) with ``image_encoder_overrides``; ``embed_dim`` = prompt / decoder width;
  * text: ``text_encoder_config`` (a name of ``TEXT_CONFIGS`` or a dict; ``None`` = no text encoder, the
    prompt embedding comes from outside, e.g. an LLM ``[SEG]`` state), pooling, projection,
    ``freeze_text_backbone``, ``prompt_template`` (``{}`` = the structure name);
  * decoder: two-way transformer depth / heads / MLP / downsample rate, prompt-encoder conventions,
    iterative refinement (``refine_passes``, ``refine_input``, ``refine_token``);
  * training: ``loss`` with weights, ``presence_weight`` / ``presence_topk`` (an extra term that
    teaches the mask score to say whether the structure is there at all; 0 = off, as published),
    ``train_prompt_types`` (combinations of ``text``, ``box``,
    ``point`` joined by ``+``), ``encode_once`` (one image encoding serves every class and prompt
    type of a batch; ``False`` re-encodes per class as SegVol's trainer does);
  * inference: ``preprocess_preset`` (a name of ``LaMed.data.presets``; its size is replaced by
    ``img_size``), ``threshold`` on the sigmoid.
"""

from __future__ import annotations

from dataclasses import field

from transformers import PretrainedConfig

PROMPT_PARTS = ("text", "box", "point")
PRESENCE_ON = ("all", "absent")  # which prompts the presence loss scores (see losses.presence_loss)
SEGVOL_PROMPT_TYPES = ("text+point", "text+box", "text", "box", "point", "box+point")


def parse_prompt_type(name: str) -> frozenset:
    """``"text+box"`` -> ``{"text", "box"}``; raises on unknown parts."""
    parts = frozenset(p.strip() for p in str(name).split("+") if p.strip())
    bad = sorted(parts - set(PROMPT_PARTS))
    if not parts or bad:
        raise ValueError(f"prompt type {name!r}: parts must be among {PROMPT_PARTS} joined by '+'")
    return parts


def _tuple(value, n: int, name: str) -> list:
    out = [int(v) for v in value]
    if len(out) != n:
        raise ValueError(f"{name} must have {n} entries, got {value}")
    return out


class SegConfigBase(PretrainedConfig):
    """Fields shared by every family (see module docstring); a v5 config is a dataclass, so the
    annotated class attributes below are its typed fields."""

    model_type = "lamed_seg_base"

    img_size: list = field(default_factory=lambda: [32, 256, 256])
    image_encoder: str = "vit3d_base_segvol"
    image_encoder_overrides: dict = field(default_factory=dict)
    embed_dim: int = 768
    text_encoder_config: str | dict | None = "clip_text"
    text_pooling: str = "pooler"
    text_projection: str = "linear"
    freeze_text_backbone: bool = True
    prompt_template: str = "A computerized tomography of a {}."
    transformer_depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    mask_in_chans: int = 16
    mask_downscaling: str = "segvol_2d"
    point_convention: str = "dhw"
    pe_axis_order: str = "dhw"
    refine_passes: int = 0
    refine_input: str = "logits"
    refine_token: bool = False
    loss: str = "dice_bce"
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    focal_weight: float = 1.0
    presence_weight: float = 0.0
    presence_topk: int = 64
    presence_on: str = "all"
    train_prompt_types: list = field(default_factory=lambda: list(SEGVOL_PROMPT_TYPES))
    encode_once: bool = True
    preprocess_preset: str = "segvol"
    # Full record (LaMed.data.presets.preset_spec) when a recipe or `lamed import` sets one; it wins
    # over preprocess_preset, which names a registered preset only.
    preprocessing: dict | None = None
    threshold: float = 0.5
    hidden_size: int | None = None  # = embed_dim; what DeepSpeed "auto" bucket sizes read

    def __post_init__(self, **kwargs):
        name = type(self).__name__
        self.img_size = _tuple(self.img_size, 3, f"{name}.img_size")
        self.image_encoder_overrides = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dict(self.image_encoder_overrides).items()
        }
        self.train_prompt_types = list(self.train_prompt_types)
        for t in self.train_prompt_types:
            parse_prompt_type(t)
        if self.refine_input not in ("logits", "sigmoid"):
            raise ValueError(f"{name}.refine_input must be 'logits' or 'sigmoid', got {self.refine_input!r}")
        if self.refine_passes and self.mask_downscaling in ("none", "segvol_2d"):
            raise ValueError(
                f"{name}.refine_passes={self.refine_passes} needs a mask path (mask_downscaling 'conv3d' or "
                f"'decomp'), got {self.mask_downscaling!r}"
            )
        if self.presence_on not in PRESENCE_ON:
            raise ValueError(f"{name}.presence_on must be one of {PRESENCE_ON}, got {self.presence_on!r}")
        if float(self.presence_weight) < 0 or int(self.presence_topk) < 1:
            raise ValueError(
                f"{name}: presence_weight must be >= 0 and presence_topk >= 1, "
                f"got {self.presence_weight} and {self.presence_topk}"
            )
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"{name}.threshold is a probability in (0, 1), got {self.threshold}")
        self.hidden_size = self.embed_dim
        super().__post_init__(**kwargs)

    @property
    def args(self):
        """The config itself (kept for symmetry with dataclass-configured modules)."""
        return self


class SegVolConfig(SegConfigBase):
    """SegVol (weights BAAI/SegVol; code BAAI-DCAI/SegVol, arXiv 2311.13385). Defaults: the published model, except
    ``upscale_norm`` / ``point_convention`` / ``pe_axis_order`` (clean; the converter sets the published ones)."""

    model_type = "lamed_segvol"

    upscale_norm: str = "channel"  # "full": the published (C/4, 2d, 2h, 2w) LayerNorm
    point_prompts: bool = True  # False: no point / box embeddings (R1Seg-3D's decoder)
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    text_align: bool = True


class Text3DSAMConfig(SegConfigBase):
    """Text3DSAM (weights MagicXin/Text3DSAM; code mirthAI/Text3DSAM)."""

    model_type = "lamed_text3dsam"

    img_size: list = field(default_factory=lambda: [128, 256, 256])
    image_encoder: str = "dcformer_text3dsam"
    text_encoder_config: str | dict | None = "tiny_clinicalbert"
    text_pooling: str = "cls"
    text_projection: str = "mlp"
    freeze_text_backbone: bool = False
    prompt_template: str = "{}"
    mask_downscaling: str = "decomp"
    refine_passes: int = 2  # train.sh --pass_num 2: one rough pass + two refinements
    refine_input: str = "sigmoid"
    refine_token: bool = True
    loss: str = "dice_focal"
    train_prompt_types: list = field(default_factory=lambda: ["text"])
    preprocess_preset: str = "flare"
    embed_stage: int = 4  # DCFormer stage whose map is the image embedding (2x4x4 on 128x256x256)
    high_res_stages: list = field(default_factory=lambda: [0, 2])  # skips fused by the decoder

    def __post_init__(self, **kwargs):
        self.high_res_stages = _tuple(self.high_res_stages, 2, "Text3DSAMConfig.high_res_stages")
        super().__post_init__(**kwargs)


class RefSAM3DConfig(SegConfigBase):
    """RefSAM3D (arXiv 2412.05605; no public code - see ``refsam3d.py`` for what is inferred)."""

    model_type = "lamed_refsam3d"

    image_encoder: str = "sam3d_adapter_base"
    embed_dim: int = 256  # SAM's prompt / decoder width = the encoder neck width
    text_pooling: str = "mean"
    text_projection: str = "mlp"  # the cross-modal MLP
    prompt_template: str = "perform {} segmentation"
    mask_downscaling: str = "none"
    train_prompt_types: list = field(default_factory=lambda: ["text"])
    cross_attn_heads: int = 8
    level_dim: int = 64  # channels of each encoder level in the multi-level decoder
