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
from typing import Any, Dict, List, Optional

from LaMed.train.tasks import TaskBundle, register_task

logger = logging.getLogger("LaMed.train")
BASE_MODEL_DIR = "base_model"


@dataclass
class MLLMModelArguments:
    pretrained_model: str = field(default="", metadata={"help": "saved LaMed model folder to start from (stage-1 output)"})
    llm: str = field(default="", metadata={"help": "base causal LM: hub id or local folder (from_pretrained)"})
    text_config: Optional[Dict[str, Any]] = field(default=None, metadata={"help": "LLM config dict (from_config) when llm is empty"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer path / hub id; 'train' = train a BPE tokenizer on the train manifest; empty = llm"})
    tokenizer_vocab_size: int = 1000
    tokenizer_style: str = "byte_level"
    tokenizer_bos: bool = True
    vision_tower: List[str] = field(default_factory=lambda: ["vit3d_base"], metadata={"help": "encoder name(s)"})
    vision_overrides: Optional[Dict[str, Any]] = None
    vision_feature_stages: Optional[List[int]] = None
    projector: str = "spp"
    projector_overrides: Optional[Dict[str, Any]] = None
    pretrained_vision: List[str] = field(default_factory=list, metadata={"help": "'family:path' per tower (convert_state_dict)"})
    pretrained_mm: str = field(default="", metadata={"help": "'family:path' of a published stage-1 projector file"})
    image_insertion: str = "placeholder"
    legacy_image_offset: int = 1
    slice_feature_source: str = "input"
    prompt_format: str = "raw"
    system_prompt: str = ""
    max_length: int = 512
    image_position: str = field(default="before", metadata={"help": "image tokens 'before' the question (published) or 'after' it"})
    attn_implementation: str = "sdpa"
    vision_feature_norm: str = field(default="none", metadata={"help": "'none' or 'batch': standardise the tower's "
                                                                         "tokens before the projector (see LaMedConfig)"})
    loss_reduction: str = field(default="token", metadata={"help": "'token' (HF, published) or 'sample': mean per row, "
                                                                      "then over rows (see LaMedConfig)"})
    save_base: bool = field(default=True, metadata={"help": "save an assembled (not loaded) base model to output_dir/base_model"})


@dataclass
class MLLMDataArguments:
    train_manifest: str = ""
    eval_manifest: str = ""
    tasks: List[str] = field(default_factory=lambda: ["caption", "vqa_closed", "vqa_open"])
    task_weights: List[float] = field(default_factory=list, metadata={"help": "mixture weights, one per task (default equal)"})
    eval_tasks: List[str] = field(default_factory=list, metadata={"help": "default: tasks"})
    data_format: str = field(default="prepared", metadata={"help": "'prepared', 'flare' or 'radgenome'"})
    image_root: str = field(default="", metadata={"help": "flare: folder of <case_id>.npy; radgenome: root of the image paths"})
    augment: bool = False
    closed_answer: str = field(default="letter", metadata={"help": "closed VQA answers: 'letter' ('B. arterial', M3D) or 'text'"})
    max_eval_samples: int = 0
    conversation_turns: int = field(default=1, metadata={"help": "VQA tasks: up to this many of a volume's questions "
                                                                   "per multi-turn training sample (1 = one each, published)"})


def build_tokenizer(m: MLLMModelArguments, d: MLLMDataArguments):
    """The tokenizer a recipe asks for (``train``: BPE trained offline on the training texts)."""
    if m.tokenizer == "train":
        from LaMed.data.tokenizer import phantom_corpus, train_tokenizer

        if not d.train_manifest:
            raise ValueError("model.tokenizer: 'train' needs data.train_manifest (the corpus)")
        return train_tokenizer(phantom_corpus([d.train_manifest]), vocab_size=m.tokenizer_vocab_size,
                               style=m.tokenizer_style, bos=m.tokenizer_bos,
                               chat_template="chatml" if m.prompt_format == "chat" else None)
    from transformers import AutoTokenizer

    source = m.tokenizer or m.pretrained_model or m.llm
    if not source:
        raise ValueError("model.tokenizer: give a tokenizer path / hub id, 'train', or model.llm")
    return AutoTokenizer.from_pretrained(source)


def _load_file(path: str) -> Dict[str, Any]:
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint file not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    return torch.load(str(p), map_location="cpu", weights_only=True)


def assemble_model(m: MLLMModelArguments, tokenizer):
    """Build a fresh :class:`LaMedForCausalLM` from the recipe's parts (LLM, tower(s), projector)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from LaMed.models.convert import convert_state_dict, load_converted
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM, prepare_tokenizer

    ids = prepare_tokenizer(tokenizer)
    if m.llm:
        text_config = AutoConfig.from_pretrained(m.llm)
    elif m.text_config:
        from transformers import CONFIG_MAPPING

        tc = dict(m.text_config)
        if "model_type" not in tc:
            raise ValueError("model.text_config needs a 'model_type' (e.g. phi3, llama, qwen2)")
        tc.setdefault("vocab_size", len(tokenizer))
        for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
            tc.setdefault(k, getattr(tokenizer, k))
        text_config = CONFIG_MAPPING[tc.pop("model_type")](**tc)
    else:
        raise ValueError("model: give llm (hub id / path), text_config (dict) or pretrained_model")
    text_config._attn_implementation = m.attn_implementation
    towers = m.vision_tower if len(m.vision_tower) > 1 else m.vision_tower[0]
    overrides = m.vision_overrides
    if isinstance(overrides, dict) and isinstance(towers, list) and set(overrides) <= set(towers):
        overrides = [overrides.get(t, {}) for t in towers]  # {tower name: overrides} for several towers
    config = LaMedConfig(
        text_config=text_config, vision_tower=towers, vision_overrides=overrides,
        vision_feature_stages=m.vision_feature_stages, projector=m.projector, projector_overrides=m.projector_overrides,
        image_insertion=m.image_insertion, legacy_image_offset=m.legacy_image_offset,
        slice_feature_source=m.slice_feature_source, vision_feature_norm=m.vision_feature_norm,
        loss_reduction=m.loss_reduction, **ids)
    model = LaMedForCausalLM(config)
    if m.llm:
        model.language_model = AutoModelForCausalLM.from_pretrained(m.llm, dtype=torch.float32,
                                                                    attn_implementation=m.attn_implementation)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        # New rows start at the mean of the old ones (transformers' mean resizing; as published).
        model.resize_token_embeddings(len(tokenizer))
    for tower, spec in zip(model.towers, m.pretrained_vision):
        family, _, path = spec.partition(":")
        report = load_converted(tower, convert_state_dict(family, _load_file(path)), strict=True, source=path)
        logger.info("vision tower loaded from %s (%s)", path, report)
    if m.pretrained_mm:
        from LaMed.models.convert.mllm import load_stage1_projector

        family, _, path = m.pretrained_mm.partition(":")
        load_stage1_projector(model, _load_file(path), family=family, source=path)
    return model


def _dataset(manifest: str, d: MLLMDataArguments, processor, tasks: List[str], train: bool, seed: int):
    from LaMed.data.mllm_dataset import MixtureDataset, MLLMDataset, flare_items, radgenome_items

    kw = dict(train=train, seed=seed, augment=d.augment and train, closed_answer=d.closed_answer,
              conversation_turns=d.conversation_turns if train else 1)
    if d.data_format == "prepared":
        parts = [MLLMDataset(manifest, processor, task=t, **kw) for t in tasks]
    elif d.data_format in ("flare", "radgenome"):
        items = flare_items(manifest, "") if d.data_format == "flare" else radgenome_items(
            manifest, split="train" if train else "validation", seed=seed)
        root = Path(d.image_root) if d.image_root else Path(manifest).parent
        parts = [MLLMDataset.from_items(items, root, processor, task=t, **kw) for t in tasks]
    else:
        raise ValueError(f"data.data_format: expected 'prepared', 'flare' or 'radgenome', got {d.data_format!r}")
    return mix_tasks(parts, d.task_weights, tasks, seed)


def mix_tasks(parts, task_weights, tasks, seed: int):
    """One dataset per task -> that dataset, or a weighted :class:`MixtureDataset` of them.

    No weights: proportional to the sizes, i.e. a plain concatenation in expectation (as published).
    """
    from LaMed.data.mllm_dataset import MixtureDataset

    if len(parts) == 1 and not task_weights:
        return parts[0]
    weights = task_weights or [len(p) for p in parts]
    if len(weights) != len(parts):
        raise ValueError(f"data.task_weights: {len(weights)} weights for {len(parts)} tasks {tasks}")
    return MixtureDataset(parts, weights, seed=seed)


@register_task("mllm", model_args=MLLMModelArguments, data_args=MLLMDataArguments)
def build_mllm(m: MLLMModelArguments, d: MLLMDataArguments, training_args) -> TaskBundle:
    """Multimodal LLM (M3D-LaMed, Med3DVLM, HSENet, tiny twins): report generation, VQA, positioning."""
    from LaMed.models.mllm import LaMedForCausalLM, LaMedProcessor, MLLMCollator

    tokenizer = build_tokenizer(m, d)
    base: Dict[str, str] = {}
    if m.pretrained_model:
        model = LaMedForCausalLM.from_pretrained(m.pretrained_model, attn_implementation=m.attn_implementation)
        base[""] = m.pretrained_model
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise ValueError(f"{m.pretrained_model}: its vocabulary ({model.get_input_embeddings().weight.shape[0]}) "
                             f"is smaller than the tokenizer's ({len(tokenizer)}); use the tokenizer saved with it")
    else:
        model = assemble_model(m, tokenizer)
        if m.save_base:
            out = Path(training_args.output_dir) / BASE_MODEL_DIR
            if training_args.process_index == 0:
                model.save_pretrained(out)
            base[""] = str(out)
    model.config.use_cache = False  # training
    model.config.loss_reduction = m.loss_reduction  # a training choice, also for a loaded stage-1 model
    processor = LaMedProcessor(tokenizer, model.num_image_tokens, prompt_format=m.prompt_format,
                               system_prompt=m.system_prompt or None, max_length=m.max_length or None,
                               image_position=m.image_position)
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
    return TaskBundle(model=model, train_dataset=train, eval_dataset=evals,
                      data_collator=MLLMCollator(processor.pad_token_id), base_checkpoints=base,
                      processing_class=processor)
