"""Stage switches from a recipe: freeze, LoRA, fully-trained modules; one function, no code edits.

stage:
  freeze: ["*"]                    # everything off ...
  trainable: [model.mm_projector]  # ... except the projector (M3D-LaMed stage 1)
stage:
  lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: [qkv_proj, o_proj, gate_up_proj, down_proj]}
  trainable: [model.mm_projector, "*embed_tokens*", lm_head]      # LaMed stage 2
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable

from LaMed.train.args import StageArguments

logger = logging.getLogger("LaMed.train")

PEFT_PREFIX = "base_model.model."


def param_matches(name: str, pattern: str) -> bool:
    """``pattern`` matches a parameter name itself or any module above it (``a.b`` matches ``a.b.weight``)."""
    for n in (name, name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else None):
        if n is not None and (fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")):
            return True
    return False


def set_requires_grad(model, patterns: Iterable[str], value: bool, what: str) -> list[str]:
    """Set ``requires_grad=value`` on the parameters matching any pattern; return their names.

    Raises ``ValueError`` naming the pattern if one matches no parameter (a typo must not
    silently leave the wrong parts trainable).
    """
    patterns = list(patterns)
    hit = {p: 0 for p in patterns}
    names = []
    for name, param in model.named_parameters():
        matched = [p for p in patterns if param_matches(name, p)]
        for p in matched:
            hit[p] += 1
        if matched:
            param.requires_grad_(value)
            names.append(name)
    unused = [p for p, n in hit.items() if n == 0]
    if unused:
        some = [n for n, _ in list(model.named_parameters())[:8]]
        raise ValueError(
            f"stage.{what}: pattern(s) {unused} match no parameter of {type(model).__name__} (names look like {some})"
        )
    return names


def apply_lora(model, stage: StageArguments):
    """Wrap ``model`` with peft LoRA adapters as ``stage.lora_*`` say; returns the ``PeftModel``."""
    from peft import LoraConfig, get_peft_model

    targets = stage.lora_target_modules
    config = LoraConfig(
        r=stage.lora_r,
        lora_alpha=stage.lora_alpha,
        lora_dropout=stage.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        exclude_modules=list(stage.lora_exclude_modules) or None,
        modules_to_save=list(stage.lora_modules_to_save) or None,
        bias=stage.lora_bias,
        task_type=stage.lora_task_type or None,
    )
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def apply_stage(model, stage: StageArguments, *, activation_checkpointing: bool = False):
    """Apply the stage switches to ``model`` and return the model to train (a ``PeftModel`` with LoRA).

    Order: ``freeze`` -> LoRA -> ``trainable`` (see ``StageArguments``). With LoRA and activation
    checkpointing, the input embeddings are made to require grad (peft / LLaVA practice), or the
    checkpointed blocks would get no gradient.
    """
    if stage.freeze:
        set_requires_grad(model, stage.freeze, False, "freeze")
    if stage.lora_enabled:
        model = apply_lora(model, stage)
        if activation_checkpointing and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if stage.trainable:
        set_requires_grad(model, stage.trainable, True, "trainable")
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise ValueError(
            f"stage: no trainable parameter is left in {type(model).__name__} "
            f"(freeze={stage.freeze}, trainable={stage.trainable}, lora r={stage.lora_r})"
        )
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100.0 * trainable / max(total, 1))
    return model
