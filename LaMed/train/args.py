"""Argument dataclasses shared by every task: training (HF ``TrainingArguments`` + LaMed fields)
and stage switches (what is frozen, what is trained, LoRA).

A recipe's ``training:`` section fills :class:`LaMedTrainingArguments`, its ``stage:`` section
:class:`StageArguments`; the task brings its own ``model:`` / ``data:`` dataclasses
(see ``LaMed.train.tasks``). Every field can be overridden on the command line as ``--name value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

RESUME_CHOICES = ("auto", "never")


@dataclass
class LaMedTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` plus what LaMed's Trainer adds.

    Defaults that differ from the stock ones: ``remove_unused_columns=False`` (batches are built
    by the task's collator for the model, so nothing is to be dropped by signature inspection)
    and ``report_to="none"`` (set ``tensorboard`` / ``wandb`` in the recipe; wandb honours
    ``WANDB_MODE=offline``).
    """

    resume: str = field(
        default="auto",
        metadata={
            "help": "'auto': continue from the newest complete checkpoint in output_dir if there is one; "
            "'never': start from scratch; or the path of a checkpoint folder."
        },
    )
    save_trainable_only: bool = field(
        default=False,
        metadata={
            "help": "Save only parameters with requires_grad (trainable.safetensors) plus a JSON manifest "
            "of the frozen base checkpoints, instead of the whole model."
        },
    )
    max_bad_sample_fraction: float = field(
        default=0.01,
        metadata={
            "help": "Stop with an error once more than this fraction of a dataset's samples turned out "
            "unreadable or invalid (each one is skipped, counted and logged with its path)."
        },
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Drop batch keys the model does not take."})
    lr_multipliers: dict[str, float] | None = field(
        default=None,
        metadata={
            "help": "{parameter glob: factor}: these parameters train at factor x learning_rate (same schedule), "
            "e.g. {mm_projector: 10} like LLaVA's mm_projector_lr; the first matching glob wins."
        },
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "'none', 'tensorboard', 'wandb', 'all', ..."}
    )

    def __post_init__(self):
        if not self.resume:
            raise ValueError("training.resume: expected 'auto', 'never' or a checkpoint path, got an empty value")
        if not 0.0 <= self.max_bad_sample_fraction <= 1.0:
            raise ValueError(
                f"training.max_bad_sample_fraction: expected a fraction in [0, 1], got {self.max_bad_sample_fraction}"
            )
        for pattern, factor in (self.lr_multipliers or {}).items():
            if not float(factor) > 0:
                raise ValueError(f"training.lr_multipliers: factor of {pattern!r} must be > 0, got {factor!r}")
        super().__post_init__()


@dataclass
class StageArguments:
    """Stage switches, applied to the built model by ``LaMed.train.stages.apply_stage``.

    Patterns are ``fnmatch`` globs over parameter names (``model.named_parameters()``); a pattern
    also matches everything under a module of that name (``vision_tower`` == ``vision_tower.*``).
    Order: ``freeze`` (requires_grad off), then LoRA wrapping (peft freezes the base and adds
    adapters), then ``trainable`` (requires_grad on; names may omit peft's ``base_model.model.``
    prefix). A pattern that matches nothing is an error, so typos cannot silently train the
    wrong parts. In a recipe, ``lora: {r: 16, alpha: 32, ...}`` fills the ``lora_*`` fields.
    """

    freeze: list[str] = field(default_factory=list, metadata={"help": "globs of parameters to freeze ('*' = all)"})
    trainable: list[str] = field(default_factory=list, metadata={"help": "globs of parameters to train"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 disables LoRA"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "module names (or suffixes) that get adapters; 'all-linear' = every Linear but the head"},
    )
    lora_exclude_modules: list[str] = field(
        default_factory=list, metadata={"help": "modules never adapted (e.g. vision_tower, mm_projector)"}
    )
    lora_modules_to_save: list[str] = field(
        default_factory=list, metadata={"help": "modules trained in full and saved with the adapter"}
    )
    lora_bias: str = field(default="none", metadata={"help": "'none', 'all' or 'lora_only'"})
    lora_task_type: str = field(default="", metadata={"help": "peft task type, e.g. CAUSAL_LM; empty = generic"})

    def __post_init__(self):
        if self.lora_r < 0:
            raise ValueError(f"stage.lora.r: expected >= 0 (0 disables LoRA), got {self.lora_r}")
        if self.lora_bias not in ("none", "all", "lora_only"):
            raise ValueError(f"stage.lora.bias: expected 'none', 'all' or 'lora_only', got {self.lora_bias!r}")

    @property
    def lora_enabled(self) -> bool:
        return self.lora_r > 0
