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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from LaMed.data.clip_dataset import ClipCollator, ImageReportDataset
from LaMed.metrics.retrieval import recall_at_k_from_embeddings
from LaMed.models.checkpoint_files import MINILM, resolve_text_path  # noqa: F401  (re-exported for recipes' code)
from LaMed.models.clip import LamedClipModel
from LaMed.models.clip.factory import LOSSES, ClipModelArguments, create_clip  # noqa: F401  (re-exported)
from LaMed.train.main import run_training
from LaMed.train.tasks import TaskBundle, register_task, store_preprocessing

logger = logging.getLogger("LaMed.train")

RECIPES_DIR = Path(__file__).resolve().parents[3] / "configs" / "recipes"


@dataclass
class ClipDataArguments:
    """The ``data:`` section of a CLIP recipe."""

    train_manifest: str = field(default="", metadata={"help": "prepared train.json"})
    eval_manifest: str = field(default="", metadata={"help": "prepared validation.json (optional)"})
    max_eval_items: int = field(default=512, metadata={"help": "first N evaluation pairs (published: 512); 0 = all"})
    max_length: int = field(default=512, metadata={"help": "report token budget with special tokens (published 512)"})
    truncation: str = field(
        default="random", metadata={"help": "training truncation of long reports: random | deterministic"}
    )
    augment: bool = field(default=True, metadata={"help": "published train augmentation (rot90, flips, intensity)"})
    slice_features: str = field(default="", metadata={"help": "'' | field:<item key> | pooled:<size> (2E3 encoder)"})
    num_slices: int = 32


def retrieval_metrics(eval_pred) -> dict[str, float]:
    """Recall@1/5/10 of both directions over the whole evaluation split (from the gathered embeddings)."""

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

    if not data_args.train_manifest:
        raise ValueError("data.train_manifest: required (a prepared train.json)")
    model, tokenizer, bases = create_clip(model_args)
    store_preprocessing(model, data_args.train_manifest)
    transform = None
    if data_args.augment:
        from LaMed.data.transforms import train_augmentation

        aug = train_augmentation()
        aug.set_random_state(seed=training_args.seed)
        transform = aug
    common = dict(
        max_length=data_args.max_length, slice_features=data_args.slice_features, num_slices=data_args.num_slices
    )
    train = ImageReportDataset(
        data_args.train_manifest,
        tokenizer,
        truncation=data_args.truncation,
        transform=transform,
        seed=training_args.seed,
        **common,
    )
    val = None
    if data_args.eval_manifest:
        val = ImageReportDataset(
            data_args.eval_manifest,
            tokenizer,
            truncation="deterministic",
            limit=data_args.max_eval_items or None,
            **common,
        )
    callbacks = [_step_callback()] if model_args.loss == "hsenet_consistency" else []
    return TaskBundle(
        model=model,
        train_dataset=train,
        eval_dataset=val,
        data_collator=ClipCollator(tokenizer),
        compute_metrics=retrieval_metrics,
        callbacks=callbacks,
        base_checkpoints=bases,
        processing_class=tokenizer,
    )


def train_clip(recipe: str | Path, prepared_dir: str | Path, output_dir: str | Path, overrides: Sequence[str] = ()):
    """Train a CLIP recipe on a prepared folder from Python; returns ``LaMed.train.main.TrainRun``.

    ``recipe``: a YAML path or the name of a file in ``configs/recipes`` (``"tiny_m3d_clip"``).
    The manifests are ``<prepared_dir>/train.json`` and, when present, ``validation.json``; the final
    model and tokenizer are saved in ``output_dir``. Example (the demo)::

        train_clip("tiny_m3d_clip", "phantoms/", "runs/tiny_clip")
    """

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
