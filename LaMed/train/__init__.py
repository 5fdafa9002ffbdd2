"""Training: recipes, the task registry, LaMed's Trainer, checkpoints and resume, launch entry.

Importing ``LaMed.train`` is cheap; the names below load their module on first use.

Plug-in API for a model family (see ``docs/training.md``)::

    from LaMed.train import register_task, TaskBundle

    @register_task("my_task", model_args=MyModelArgs, data_args=MyDataArgs)
    def build(model_args, data_args, training_args) -> TaskBundle: ...
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "register_task": "LaMed.train.tasks",
    "get_task": "LaMed.train.tasks",
    "list_tasks": "LaMed.train.tasks",
    "TaskBundle": "LaMed.train.tasks",
    "TaskSpec": "LaMed.train.tasks",
    "LaMedTrainingArguments": "LaMed.train.args",
    "StageArguments": "LaMed.train.args",
    "parse_recipe": "LaMed.train.recipe",
    "load_recipe_yaml": "LaMed.train.recipe",
    "RecipeError": "LaMed.train.recipe",
    "LaMedTrainer": "LaMed.train.trainer",
    "apply_stage": "LaMed.train.stages",
    "PreparedDataset": "LaMed.train.datasets",
    "SampleError": "LaMed.train.data",
    "TooManyBadSamples": "LaMed.train.data",
    "gather_with_grad": "LaMed.train.distributed",
    "save_trainable": "LaMed.train.checkpoint",
    "load_trainable": "LaMed.train.checkpoint",
    "last_complete_checkpoint": "LaMed.train.checkpoint",
    "run_training": "LaMed.train.main",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'LaMed.train' has no attribute '{name}'")
