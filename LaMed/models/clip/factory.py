"""Building a 3D CLIP from named parts: ``create_clip(spec) -> (model, tokenizer, base_checkpoints)``.

The spec (:class:`ClipModelArguments`, the ``model:`` section of a ``clip`` recipe) names the vision
encoder (a registry name + overrides), the text tower (a pretrained folder / hub id, ``"minilm"``
for the offline MiniLM, or a config dict for a randomly initialised one), the loss and, for HSENet
stage 2, the frozen stage-1 teacher and the checkpoint the student starts from. Training, Bench and
the Python API all build a CLIP through here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from LaMed.models.checkpoint_files import resolve_text_path
from LaMed.models.clip import LamedClipConfig, LamedClipModel
from LaMed.models.convert.base import load_converted
from LaMed.utils.mapping import parse_mapping

logger = logging.getLogger("LaMed.models")

__all__ = ["LOSSES", "ClipModelArguments", "create_clip"]

LOSSES = ("infonce", "siglip", "hsenet_consistency")


def _as_dict(value: dict | str | None, name: str) -> dict[str, Any]:
    """A dict from a recipe mapping or a YAML / JSON string given on the command line."""

    if value is None or isinstance(value, dict):
        return dict(value or {})
    return parse_mapping(value, f"model.{name}")


@dataclass
class ClipModelArguments:
    """The ``model:`` section of a CLIP recipe (see ``LamedClipConfig`` for the meaning of each field)."""

    vision_encoder: str = field(default="vit3d_base", metadata={"help": "registered encoder name"})
    vision_overrides: dict | str | None = field(
        default=None, metadata={"help": "encoder config fields (mapping / JSON)"}
    )
    vision_pooling: str = field(default="cls", metadata={"help": "cls | mean | flatten (see LamedClipConfig)"})
    text_model_path: str = field(
        default="",
        metadata={
            "help": "HF folder / hub id of the pretrained text encoder "
            "(weights + tokenizer); 'minilm' = the offline MiniLM"
        },
    )
    text_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "build a randomly initialised text encoder from this HF config (mapping with model_type) instead "
            "of loading text_model_path's weights"
        },
    )
    tokenizer_path: str = field(default="", metadata={"help": "default: text_model_path"})
    text_pooling: str = field(default="cls", metadata={"help": "cls | mean"})
    projection_dim: int = 768
    loss: str = field(default="infonce", metadata={"help": "infonce | siglip | hsenet_consistency"})
    logit_scale_mode: str = field(
        default="exp", metadata={"help": "exp (clamped exp, default) | raw (published M3D / HSENet)"}
    )
    logit_scale_init: float | None = None
    logit_bias_init: float | None = None
    gather_features: bool = True
    local_loss: bool = False
    siglip_symmetric: bool = False
    teacher_path: str = field(
        default="", metadata={"help": "hsenet_consistency: the stage-1 CLIP (LaMed folder or published)"}
    )
    teacher_family: str = field(
        default="", metadata={"help": "converter family when teacher_path is a published checkpoint"}
    )
    init_from: str = field(
        default="",
        metadata={
            "help": "CLIP checkpoint whose matching weights initialise the model "
            "(HSENet stage 2: M3D-CLIP); loaded non-strictly, reported"
        },
    )
    init_from_family: str = field(default="", metadata={"help": "converter family when init_from is published"})
    consistency_weight: float = 0.1
    consistency_steps: int = 5000


def _load_clip(path: str, family: str = ""):
    """A CLIP from a LaMed folder (``from_pretrained``) or, with ``family``, a published checkpoint."""

    if family:
        from LaMed.models.convert.clip import load_published_clip

        return load_published_clip(family, path)[0]
    return LamedClipModel.from_pretrained(path)


def create_clip(args: ClipModelArguments):
    """``(model, tokenizer, base_checkpoints)`` for the model section of a recipe."""
    from transformers import AutoConfig, AutoTokenizer

    if args.loss not in LOSSES:
        raise ValueError(f"model.loss: expected one of {LOSSES}, got {args.loss!r}")
    text_path = resolve_text_path(args.text_model_path)
    text_config = _as_dict(args.text_config, "text_config")
    if not text_path and not text_config:
        raise ValueError("model: set text_model_path (pretrained text encoder) or text_config (random init)")
    tok_path = resolve_text_path(args.tokenizer_path) or text_path
    if not tok_path:
        raise ValueError("model.tokenizer_path: required when the text encoder is built from text_config")
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    if not text_config:
        text_config = AutoConfig.from_pretrained(text_path).to_dict()
    teacher = None
    if args.loss == "hsenet_consistency":
        if not args.teacher_path:
            raise ValueError("model.teacher_path: required for loss 'hsenet_consistency' (the stage-1 CLIP)")
        teacher = _load_clip(args.teacher_path, args.teacher_family)
    config = LamedClipConfig(
        vision_encoder=args.vision_encoder,
        vision_overrides=_as_dict(args.vision_overrides, "vision_overrides"),
        vision_pooling=args.vision_pooling,
        text_config=text_config,
        text_model_path=args.text_model_path or None,
        text_pooling=args.text_pooling,
        projection_dim=args.projection_dim,
        loss_type="siglip" if args.loss == "siglip" else "infonce",
        logit_scale_mode=args.logit_scale_mode,
        logit_scale_init=args.logit_scale_init,
        logit_bias_init=args.logit_bias_init,
        gather_features=args.gather_features,
        local_loss=args.local_loss,
        siglip_symmetric=args.siglip_symmetric,
        consistency_weight=args.consistency_weight,
        consistency_steps=args.consistency_steps,
        teacher_config=None if teacher is None else teacher.config.to_dict(),
    )
    load_text = text_path if not _as_dict(args.text_config, "text_config") else None
    model = LamedClipModel.from_encoders(config, text_model_path=load_text)
    bases = {"text_model": args.text_model_path} if load_text else {}
    if teacher is not None:
        load_converted(model.teacher, teacher.state_dict(), strict=True, source=args.teacher_path)
        bases["teacher"] = args.teacher_path
    if args.init_from:
        source = _load_clip(args.init_from, args.init_from_family)
        sd = {k: v for k, v in source.state_dict().items() if not k.startswith("teacher.")}
        report = load_converted(model, sd, strict=False, source=args.init_from)
        missing = [k for k in report.missing if not k.startswith("teacher.")]
        logger.info(
            "init_from %s: %d tensors loaded; left at their initialisation: %s",
            args.init_from,
            len(sd) - len(report.unexpected) - len(report.mismatched),
            missing or "none",
        )
        bases["init_from"] = args.init_from
    return model, tokenizer, bases
