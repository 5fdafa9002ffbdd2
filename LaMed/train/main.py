"""The ``lamed train`` entry point: recipe -> task bundle -> stage switches -> Trainer -> train.

    lamed train configs/recipes/m3d_clip.yaml --per_device_train_batch_size 8
    torchrun --nproc_per_node 2 -m LaMed.train tests/recipes/tiny_toy.yaml --max_steps 4
    accelerate launch --config_file default_config.yaml -m LaMed.train RECIPE.yaml [--key value ...]

Seeds: ``training.seed`` seeds Python, NumPy and torch before the model is built (so the initial
weights depend on it) and again in the Trainer; ``data_seed`` (default: ``seed``) fixes the data
order. ``full_determinism: true`` also turns on deterministic torch kernels.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from LaMed.models.card import write_model_card
from LaMed.train import checkpoint as ckpt
from LaMed.train.callbacks import FaultInjectionCallback, ThroughputCallback
from LaMed.train.checkpoint import FAULT_ENV, CheckpointError
from LaMed.train.data import SkipBadCollator, SkipBadSamples, TooManyBadSamples
from LaMed.train.distributed import destroy_process_group
from LaMed.train.recipe import RecipeError, parse_recipe
from LaMed.train.stages import apply_stage
from LaMed.train.tasks import TaskBundle, get_task
from LaMed.train.trainer import LaMedTrainer
from LaMed.utils.atomic import OutputError, atomic_write_text

logger = logging.getLogger("LaMed.train")

RESOLVED_RECIPE_NAME = "lamed_recipe.yaml"


@dataclass
class TrainRun:
    """What :func:`run_training` returns."""

    recipe: Any
    trainer: Any
    output: Any  # transformers.trainer_utils.TrainOutput
    resumed_from: str | None


def resolve_resume(training_args) -> str | None:
    """The checkpoint to continue from, per ``training.resume`` (``auto`` / ``never`` / a path)."""

    value = training_args.resume
    if value == "never":
        return None
    if value == "auto":
        found = ckpt.last_complete_checkpoint(training_args.output_dir)
        if found is not None:
            ckpt.verify_checkpoint(found)
        return str(found) if found is not None else None
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"training.resume: checkpoint folder {path} not found")
    if not ckpt.is_complete(path):
        if (path / ckpt.COMPLETE_MARKER).exists():
            raise ValueError(
                f"training.resume: {path} is incomplete (files listed in {ckpt.COMPLETE_MARKER} "
                "are missing or truncated)"
            )
        logger.warning(
            "training.resume: %s has no %s (not written by LaMed, or interrupted while saving); "
            "resuming from it anyway because it was named explicitly",
            path,
            ckpt.COMPLETE_MARKER,
        )
    else:
        ckpt.verify_checkpoint(path)
    return str(path)


def _setup_logging(training_args) -> None:
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    # LaMed's own messages (resume, trainable counts) at INFO on the main process only;
    # transformers keeps its own level unless training.log_level says otherwise.
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    if training_args.log_level != "passive":
        transformers.utils.logging.set_verbosity(training_args.get_process_log_level())


def _save_resolved_recipe(recipe, training_args) -> None:
    import yaml

    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = recipe.to_dict()
    data["source"] = {"recipe": str(recipe.path) if recipe.path else None, "overrides": recipe.overrides}
    atomic_write_text(out / RESOLVED_RECIPE_NAME, yaml.safe_dump(data, sort_keys=False))


def _write_card(recipe, trainer) -> None:
    """README.md beside the saved model: what it expects (its stored preprocessing) and returns."""

    model = trainer.model
    model = getattr(model, "get_base_model", lambda: model)()  # a PEFT wrapper: describe the model inside
    if getattr(model, "config", None) is None or not hasattr(model.config, "model_type"):
        return
    source = recipe.path or "a recipe given in code"
    write_model_card(
        model,
        trainer.args.output_dir,
        f"LaMed {recipe.task} model",
        [
            "## Training",
            "",
            f"- recipe: `{source}` (resolved values in `{RESOLVED_RECIPE_NAME}`)",
            f"- steps: {trainer.state.global_step}",
        ],
    )


def build_trainer(recipe):
    """Build the task bundle, apply the stage switches and return a ``LaMedTrainer`` (not yet trained)."""
    from transformers import set_seed
    from transformers.trainer_utils import enable_full_determinism

    targs = recipe.training_args
    # Seed before building: the initial weights must depend on training.seed only.
    enable_full_determinism(targs.seed) if targs.full_determinism else set_seed(targs.seed)
    spec = get_task(recipe.task)
    bundle = spec.build(recipe.model_args, recipe.data_args, targs)
    if not isinstance(bundle, TaskBundle):
        raise TypeError(f"task '{recipe.task}': build() must return a TaskBundle, got {type(bundle).__name__}")
    checkpointing = bool(
        getattr(targs, "activation_checkpointing", False) or getattr(targs, "gradient_checkpointing", False)
    )
    model = apply_stage(bundle.model, recipe.stage_args, activation_checkpointing=checkpointing)

    callbacks: list[Any] = [ThroughputCallback(), *bundle.callbacks]
    if os.environ.get(FAULT_ENV):
        callbacks.append(FaultInjectionCallback())
    return LaMedTrainer(
        model=model,
        args=targs,
        train_dataset=SkipBadSamples(bundle.train_dataset) if bundle.train_dataset is not None else None,
        eval_dataset=SkipBadSamples(bundle.eval_dataset) if bundle.eval_dataset is not None else None,
        data_collator=SkipBadCollator(bundle.data_collator),
        compute_metrics=bundle.compute_metrics,
        preprocess_logits_for_metrics=bundle.preprocess_logits_for_metrics,
        processing_class=bundle.processing_class,
        callbacks=callbacks,
        base_checkpoints=bundle.base_checkpoints,
        extra_manifest={"task": recipe.task, "stage": recipe.to_dict()["stage"]},
    )


def run_training(recipe_path: str | None, overrides: Sequence[str] = (), recipe=None) -> TrainRun:
    """Parse the recipe, train (resuming per ``training.resume``), save the final model and state."""

    recipe = recipe if recipe is not None else parse_recipe(recipe_path, overrides)
    targs = recipe.training_args
    _setup_logging(targs)
    trainer = build_trainer(recipe)
    if targs.resume == "auto" and trainer.is_world_process_zero():
        ckpt.remove_incomplete(targs.output_dir)
    resume = resolve_resume(targs)
    if trainer.is_world_process_zero():
        _save_resolved_recipe(recipe, targs)
    if resume:
        logger.info("resuming from %s", resume)
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    except Exception as exc:  # noqa: BLE001 - only a full disk is translated, the rest propagates
        if _disk_full(exc):
            from LaMed.utils.atomic import OutputError

            raise OutputError(
                errno.ENOSPC,
                f"{targs.output_dir}: no space left on the device while saving (step "
                f"{trainer.state.global_step}); the half-written checkpoint is ignored "
                f"at resume: free space and run the same command again to continue "
                f"from the last complete checkpoint",
            ) from exc
        raise
    finally:
        trainer.write_bad_sample_reports()
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        _write_card(recipe, trainer)
    for split, tracker in trainer.bad_samples.items():
        if tracker.bad:
            logger.warning(
                "%d bad %s sample(s) skipped on process %d; see %s",
                len(tracker.bad),
                split,
                trainer.args.process_index,
                targs.output_dir,
            )
    return TrainRun(recipe, trainer, output, resume)


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library wraps it (safetensors reports ``Os { code: 28 ... }``)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def failure_message(exc: BaseException) -> str | None:
    """One screen for a training run that stopped for a known reason (bad recipe, bad data, bad
    checkpoint, full disk); ``None`` for anything else (a bug: let its traceback show)."""

    if isinstance(exc, (RecipeError, CheckpointError, TooManyBadSamples, OutputError, FileNotFoundError)):
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m LaMed.train RECIPE.yaml [--key value ...]`` (what launchers run on every process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        run_training(argv[0], argv[1:])
    except Exception as exc:  # noqa: BLE001 - known failures get one screen, the rest a traceback
        message = failure_message(exc)
        if message is None:
            raise
        print(f"lamed train: error: {message}", file=sys.stderr)
        return 1
    finally:
        destroy_process_group()
    return 0
