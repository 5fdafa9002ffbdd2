"""Training task ``reasoning_seg``: a LaMed LLM whose ``[SEG]`` token prompts a 3D mask decoder.

Loss = LM cross-entropy + Dice + BCE on the masks of the ``[SEG]`` tokens (logged as ``loss_lm``,
``loss_dice``, ``loss_bce``), over a mixture of reasoning-segmentation samples (``refer``: M3D-RefSeg
style referring expressions / reasoning questions; ``seg``: M3D-Seg class questions) and the MLLM's
report / VQA samples (``caption``, ``vqa_closed``, ...). The published stages are recipes over this
one task (``configs/recipes/m3d_lamed_seg_*.yaml``, ``r1seg3d_*.yaml``)::

    task: reasoning_seg
    model: {pretrained_model: runs/m3d_lamed_phi3_stage1,      # a LaMed (stage-1) or LaMed-seg folder
            seg_variant: segvol, seg_init: "segvol:pretrained/SegVol_v1.pth", shared_encoder: false}
    data:  {train_manifest: data/m3d_refseg/train.json, tasks: [refer, seg, caption, vqa_closed]}
    stage: {lora: {...}, trainable: [seg_projector, seg_module.mask_decoder, ...]}

Where the model comes from, in order: ``pretrained_model`` naming a saved reasoning model
(``lamed_seg``: loaded as is), or a plain LaMed folder (``lamed``, e.g. the stage-1 output: its tower,
projector, embeddings and LLM are kept and a segmentation head is added), else assembled from
``llm`` / ``text_config`` and the vision parts exactly as the ``mllm`` task does. The head's decoder
(and, with ``shared_encoder``, the vision tower) is then loaded from ``seg_init`` when given (a LaMed
segmentation folder, e.g. R1Seg-3D step 1 trained with ``task: seg``, or ``family:path`` of a
published SegVol / R1Seg-3D SAM file). An assembled model is saved to ``<output_dir>/base_model``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LaMed.data.mllm_dataset import MLLMDataset
from LaMed.data.reasoning_dataset import ReasonSegCollator, ReasonSegDataset
from LaMed.models.mllm import LaMedForCausalLM, LaMedProcessor
from LaMed.models.reasoning import LaMedSegForCausalLM
from LaMed.models.reasoning.build import load_seg_weights
from LaMed.train.tasks import TaskBundle, register_task
from LaMed.train.tasks.mllm import BASE_MODEL_DIR, MLLMModelArguments, assemble_model, build_tokenizer, mix_tasks

logger = logging.getLogger("LaMed.train")
REASON_TASKS = ("refer", "seg")
MLLM_TASKS = ("caption", "vqa", "vqa_closed", "vqa_open", "vqa_yes_no", "rec", "reg")


@dataclass
class ReasonSegModelArguments(MLLMModelArguments):
    seg_variant: str = field(default="segvol", metadata={"help": "segmentation decoder: a name of SEG_VARIANTS"})
    seg_overrides: dict[str, Any] | None = field(
        default=None, metadata={"help": "seg config fields (img_size, refine_passes, ...)"}
    )
    shared_encoder: bool = field(
        default=False, metadata={"help": "R1Seg-3D: the vision tower is the decoder's encoder"}
    )
    seg_init: str = field(
        default="", metadata={"help": "decoder weights: a LaMed seg folder or 'family:path' (segvol, r1seg_sam)"}
    )
    seg_reduce: str = field(default="each", metadata={"help": "'each' (a mask per [SEG]) or 'mean' (published)"})
    seg_token_state: str = field(default="predicting", metadata={"help": "'predicting' (published) or 'at'"})
    seg_projector_dropout: float = 0.1
    lm_loss_weight: float = 1.0
    seg_loss_weight: float = 1.0
    preprocess_preset: str = field(default="m3d", metadata={"help": "preset lamed predict applies to scanner volumes"})
    presence_gate: bool = field(
        default=False, metadata={"help": "generation checks each [SEG] with the decoder's presence rule"}
    )


@dataclass
class ReasonSegDataArguments:
    train_manifest: str = ""
    eval_manifest: str = ""
    tasks: list[str] = field(
        default_factory=lambda: ["refer", "seg"], metadata={"help": f"of {REASON_TASKS + MLLM_TASKS}"}
    )
    task_weights: list[float] = field(
        default_factory=list, metadata={"help": "mixture weights, one per task (default: sizes)"}
    )
    eval_tasks: list[str] = field(default_factory=list, metadata={"help": "default: the reasoning tasks of tasks"})
    classes: list[str] = field(default_factory=list, metadata={"help": "structures to segment (default: all masks)"})
    negatives: bool = field(
        default=True, metadata={"help": "questions about absent structures, answered without [SEG]"}
    )
    negative_repeat: int = field(default=1, metadata={"help": "times each absent-structure question is seen per epoch"})
    absent_probes: int = field(
        default=0,
        metadata={"help": "decoder-only probes per absent-structure question: '[SEG]' with an empty target"},
    )
    multi_target: float = field(default=0.0, metadata={"help": "share of seg samples asking for two structures"})
    answer_style: str = field(
        default="auto", metadata={"help": "'auto', 'short' or 'named' (name the target before [SEG])"}
    )
    augment: bool = False
    closed_answer: str = "letter"
    max_eval_samples: int = 0


def seg_fields(m: ReasonSegModelArguments) -> dict[str, Any]:
    """The ``LaMedSegConfig`` fields a recipe sets."""
    return {
        "seg_variant": m.seg_variant,
        "seg_overrides": dict(m.seg_overrides or {}),
        "shared_encoder": m.shared_encoder,
        "seg_reduce": m.seg_reduce,
        "seg_token_state": m.seg_token_state,
        "seg_projector_dropout": m.seg_projector_dropout,
        "lm_loss_weight": m.lm_loss_weight,
        "seg_loss_weight": m.seg_loss_weight,
        "preprocess_preset": m.preprocess_preset,
        "presence_gate": m.presence_gate,
    }


# Fields a recipe may change on a saved reasoning model it continues from: how it is trained and how
# it generates, never its architecture (which the saved weights fix).
LOSS_FIELDS = ("dice_weight", "bce_weight", "focal_weight", "presence_weight", "presence_topk", "presence_on")


def continue_training(model, m: ReasonSegModelArguments) -> None:
    """Apply the recipe's loss fields of ``seg_overrides`` and ``presence_gate`` to a loaded
    ``lamed_seg`` model (a second stage, e.g. the absent-probe stage); other overrides that differ
    from the saved model are refused (they would describe a model the weights do not fit)."""

    saved = dict(model.config.seg_overrides or {})
    for key, value in dict(m.seg_overrides or {}).items():
        if key in LOSS_FIELDS:
            setattr(model.seg_module.config, key, value)
            saved[key] = value
        elif saved.get(key, getattr(model.seg_module.config, key, None)) != value:
            raise ValueError(
                f"model.seg_overrides.{key}: {m.pretrained_model} was saved with "
                f"{saved.get(key, getattr(model.seg_module.config, key, None))!r}; a continued training may "
                f"change only {LOSS_FIELDS}"
            )
    model.seg_module.config.__post_init__()  # the new values are validated like a fresh config's
    model.config.seg_overrides = saved
    model.config.presence_gate = bool(m.presence_gate) or bool(getattr(model.config, "presence_gate", False))


def build_model(m: ReasonSegModelArguments, tokenizer):
    """``(model, sources)``: the reasoning model as the recipe describes (see the module docstring)."""
    from transformers import AutoConfig

    sources: dict[str, str] = {}
    if m.pretrained_model:
        kind = AutoConfig.from_pretrained(m.pretrained_model).model_type
        if kind == "lamed_seg":
            model = LaMedSegForCausalLM.from_pretrained(m.pretrained_model, attn_implementation=m.attn_implementation)
        elif kind == "lamed":
            mllm = LaMedForCausalLM.from_pretrained(m.pretrained_model, attn_implementation=m.attn_implementation)
            model = LaMedSegForCausalLM.from_mllm(mllm, **seg_fields(m))
        else:
            raise ValueError(
                f"model.pretrained_model: {m.pretrained_model} is a {kind!r} model, expected 'lamed' or 'lamed_seg'"
            )
        sources[""] = m.pretrained_model
        if kind == "lamed_seg":
            continue_training(model, m)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise ValueError(
                f"{m.pretrained_model}: its vocabulary ({model.get_input_embeddings().weight.shape[0]}) is smaller "
                f"than the tokenizer's ({len(tokenizer)}); use the tokenizer saved with it"
            )
    else:
        model = LaMedSegForCausalLM.from_mllm(assemble_model(m, tokenizer), **seg_fields(m))
    if m.seg_init:
        reports = load_seg_weights(model, m.seg_init)
        logger.info(
            "segmentation head loaded from %s (%s)", m.seg_init, "; ".join(f"{k}: {r}" for k, r in reports.items())
        )
        sources["seg_module"] = m.seg_init
    return model, sources


def build_datasets(manifest: str, d: ReasonSegDataArguments, processor, tasks: list[str], train: bool, seed: int):
    """One dataset per task (reasoning or MLLM), mixed by ``task_weights`` (default: proportional to sizes)."""

    parts = []
    for t in tasks:
        if t in REASON_TASKS:
            parts.append(
                ReasonSegDataset(
                    manifest,
                    processor,
                    task=t,
                    train=train,
                    seed=seed,
                    classes=d.classes or None,
                    negatives=d.negatives,
                    negative_repeat=d.negative_repeat,
                    absent_probes=d.absent_probes,
                    multi_target=d.multi_target if train else 0.0,
                    answer_style=d.answer_style,
                    augment=d.augment and train,
                )
            )
        elif t in MLLM_TASKS:
            parts.append(
                MLLMDataset(
                    manifest,
                    processor,
                    task=t,
                    train=train,
                    seed=seed,
                    augment=d.augment and train,
                    closed_answer=d.closed_answer,
                )
            )
        else:
            raise ValueError(f"data.tasks: unknown task {t!r}; known: {REASON_TASKS + MLLM_TASKS}")

    return mix_tasks(parts, d.task_weights, tasks, seed)


@register_task("reasoning_seg", model_args=ReasonSegModelArguments, data_args=ReasonSegDataArguments)
def build_reasoning_seg(m: ReasonSegModelArguments, d: ReasonSegDataArguments, training_args) -> TaskBundle:
    """Reasoning segmentation (M3D-LaMed seg, R1Seg-3D): LLM answers with [SEG], a 3D decoder draws the masks."""

    if not d.train_manifest:
        raise ValueError("data.train_manifest: required (a prepared manifest with masks / refer entries)")
    tokenizer = build_tokenizer(m, d)
    model, sources = build_model(m, tokenizer)
    model.config.use_cache = False  # training
    processor = LaMedProcessor(
        tokenizer,
        model.num_image_tokens,
        prompt_format=m.prompt_format,
        system_prompt=m.system_prompt or None,
        max_length=m.max_length or None,
    )
    if not m.pretrained_model and m.save_base:
        out = Path(training_args.output_dir) / BASE_MODEL_DIR
        if training_args.process_index == 0:
            model.save_pretrained(out)
            processor.save_pretrained(out)
        sources[""] = str(out)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train = build_datasets(d.train_manifest, d, processor, list(d.tasks), True, seed)
    evals = None
    if d.eval_manifest:
        eval_tasks = list(d.eval_tasks or [t for t in d.tasks if t in REASON_TASKS] or d.tasks)
        evals = build_datasets(d.eval_manifest, d, processor, eval_tasks, False, seed)
        if d.max_eval_samples and len(evals) > d.max_eval_samples:
            import torch.utils.data as tud

            evals = tud.Subset(evals, range(d.max_eval_samples))
    return TaskBundle(
        model=model,
        train_dataset=train,
        eval_dataset=evals,
        data_collator=ReasonSegCollator(processor.pad_token_id),
        base_checkpoints=sources,
        processing_class=processor,
    )
