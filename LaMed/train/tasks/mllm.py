"""Training task ``mllm``: report generation / VQA / positioning with :class:`LaMedForCausalLM`.

A recipe names the parts and the data; the stage switches (projector pretraining, LoRA
instruction tuning) are the recipe's ``stage:`` section::

    task: mllm
    model: {llm: microsoft/Phi-3-mini-4k-instruct, vision_tower: vit3d_base, projector: spp,
            pretrained_vision: "m3d_vit:pretrained/M3D-CLIP/pretrained_ViT.bin"}
    data:  {train_manifest: data/m3d/train.json, tasks: [caption, vqa_closed, vqa_open]}
    stage: {freeze: ["*"], trainable: [mm_projector, language_model.model.embed_tokens]}

Where the model comes from, in order: ``pretrained_model`` (a saved LaMed folder, e.g. the stage-1
output: its projector *and* embeddings are carried into stage 2), else assembled from ``llm`` (hub id
/ path; ``from_pretrained``) or ``text_config`` (a dict; ``from_config``, tiny recipes), the vision
tower (optionally loaded from ``pretrained_vision`` = ``converter_family:path``) and a fresh projector,
optionally overwritten by ``pretrained_mm`` (a published stage-1 ``mm_projector.bin``, converted).
An assembled model is saved once to ``<output_dir>/base_model`` and recorded as the base checkpoint,
so a LoRA run's ``trainable.safetensors`` can always be merged back (``lamed merge-lora``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from LaMed.data.mllm_dataset import MixtureDataset, MLLMDataset, flare_items, radgenome_items
from LaMed.models.mllm import LaMedForCausalLM, LaMedProcessor, MLLMCollator
from LaMed.models.mllm.factory import MLLMModelArguments, create_mllm, create_tokenizer
from LaMed.train.tasks import TaskBundle, register_task, store_preprocessing

logger = logging.getLogger("LaMed.train")
BASE_MODEL_DIR = "base_model"


@dataclass
class MLLMDataArguments:
    train_manifest: str = ""
    eval_manifest: str = ""
    tasks: list[str] = field(default_factory=lambda: ["caption", "vqa_closed", "vqa_open"])
    task_weights: list[float] = field(
        default_factory=list, metadata={"help": "mixture weights, one per task (default equal)"}
    )
    eval_tasks: list[str] = field(default_factory=list, metadata={"help": "default: tasks"})
    data_format: str = field(default="prepared", metadata={"help": "'prepared', 'flare' or 'radgenome'"})
    image_root: str = field(
        default="", metadata={"help": "flare: folder of <case_id>.npy; radgenome: root of the image paths"}
    )
    augment: bool = False
    closed_answer: str = field(
        default="letter", metadata={"help": "closed VQA answers: 'letter' ('B. arterial', M3D) or 'text'"}
    )
    max_eval_samples: int = 0
    conversation_turns: int = field(
        default=1,
        metadata={
            "help": "VQA tasks: up to this many of a volume's questions "
            "per multi-turn training sample (1 = one each, published)"
        },
    )


def build_tokenizer(m: MLLMModelArguments, d: MLLMDataArguments):
    """The recipe's tokenizer (``model.tokenizer: train`` trains one on ``data.train_manifest``)."""
    return create_tokenizer(m, d.train_manifest)


def assemble_model(m: MLLMModelArguments, tokenizer):
    """A fresh model from the recipe's parts (float32, what training starts from)."""
    return create_mllm(m, tokenizer)


def _dataset(manifest: str, d: MLLMDataArguments, processor, tasks: list[str], train: bool, seed: int):

    kw = dict(
        train=train,
        seed=seed,
        augment=d.augment and train,
        closed_answer=d.closed_answer,
        conversation_turns=d.conversation_turns if train else 1,
    )
    if d.data_format == "prepared":
        parts = [MLLMDataset(manifest, processor, task=t, **kw) for t in tasks]
    elif d.data_format in ("flare", "radgenome"):
        items = (
            flare_items(manifest, "")
            if d.data_format == "flare"
            else radgenome_items(manifest, split="train" if train else "validation", seed=seed)
        )
        root = Path(d.image_root) if d.image_root else Path(manifest).parent
        parts = [MLLMDataset.from_items(items, root, processor, task=t, **kw) for t in tasks]
    else:
        raise ValueError(f"data.data_format: expected 'prepared', 'flare' or 'radgenome', got {d.data_format!r}")
    return mix_tasks(parts, d.task_weights, tasks, seed)


def mix_tasks(parts, task_weights, tasks, seed: int):
    """One dataset per task -> that dataset, or a weighted :class:`MixtureDataset` of them.

    No weights: proportional to the sizes, i.e. a plain concatenation in expectation (as published).
    """

    if len(parts) == 1 and not task_weights:
        return parts[0]
    weights = task_weights or [len(p) for p in parts]
    if len(weights) != len(parts):
        raise ValueError(f"data.task_weights: {len(weights)} weights for {len(parts)} tasks {tasks}")
    return MixtureDataset(parts, weights, seed=seed)


@register_task("mllm", model_args=MLLMModelArguments, data_args=MLLMDataArguments)
def build_mllm(m: MLLMModelArguments, d: MLLMDataArguments, training_args) -> TaskBundle:
    """Multimodal LLM (M3D-LaMed, Med3DVLM, HSENet, tiny twins): report generation, VQA, positioning."""

    tokenizer = build_tokenizer(m, d)
    base: dict[str, str] = {}
    if m.pretrained_model:
        model = LaMedForCausalLM.from_pretrained(m.pretrained_model, attn_implementation=m.attn_implementation)
        base[""] = m.pretrained_model
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise ValueError(
                f"{m.pretrained_model}: its vocabulary ({model.get_input_embeddings().weight.shape[0]}) "
                f"is smaller than the tokenizer's ({len(tokenizer)}); use the tokenizer saved with it"
            )
    else:
        model = assemble_model(m, tokenizer)
        if m.save_base:
            out = Path(training_args.output_dir) / BASE_MODEL_DIR
            if training_args.process_index == 0:
                model.save_pretrained(out)
            base[""] = str(out)
    model.config.use_cache = False  # training
    model.config.loss_reduction = m.loss_reduction  # a training choice, also for a loaded stage-1 model
    store_preprocessing(model, d.train_manifest if d.data_format == "prepared" else "")
    processor = LaMedProcessor(
        tokenizer,
        model.num_image_tokens,
        prompt_format=m.prompt_format,
        system_prompt=m.system_prompt or None,
        max_length=m.max_length or None,
        image_position=m.image_position,
    )
    if m.save_base and not m.pretrained_model and training_args.process_index == 0:
        processor.save_pretrained(Path(training_args.output_dir) / BASE_MODEL_DIR)
    if not d.train_manifest:
        raise ValueError("data.train_manifest: required (a prepared manifest, or a FLARE / RadGenome JSON)")
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train = _dataset(d.train_manifest, d, processor, list(d.tasks), True, seed)
    evals = None
    if d.eval_manifest:
        evals = _dataset(d.eval_manifest, d, processor, list(d.eval_tasks or d.tasks), False, seed)
        if d.max_eval_samples and len(evals) > d.max_eval_samples:
            import torch.utils.data as tud

            evals = tud.Subset(evals, range(d.max_eval_samples))
    return TaskBundle(
        model=model,
        train_dataset=train,
        eval_dataset=evals,
        data_collator=MLLMCollator(processor.pad_token_id),
        base_checkpoints=base,
        processing_class=processor,
    )
