"""Building a :class:`LaMedForCausalLM` from named parts: ``create_mllm(spec, tokenizer)``.

The spec (:class:`MLLMModelArguments`, the ``model:`` section of an ``mllm`` recipe) names the
language model (``llm`` hub id / folder, or a ``text_config`` dict for tiny models), the vision
tower(s), the projector and where pretrained parts come from (``pretrained_vision`` =
``converter_family:path`` per tower, ``pretrained_mm`` = a published stage-1 projector file).

The language model is built once: with ``llm`` its weights are loaded first (``from_pretrained``,
in the requested dtype) and handed to the wrapper, which then creates no LLM of its own; a 7B model
is never allocated twice. Training, the CLI, Bench and the Python API all build through here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from LaMed.models.checkpoint_files import read_state_dict
from LaMed.models.convert import convert_state_dict, load_converted
from LaMed.models.mllm.configuration import LaMedConfig
from LaMed.models.mllm.modeling import LaMedForCausalLM
from LaMed.models.mllm.processing import prepare_tokenizer

logger = logging.getLogger("LaMed.models")

__all__ = ["MLLMModelArguments", "create_tokenizer", "create_mllm"]


@dataclass
class MLLMModelArguments:
    pretrained_model: str = field(
        default="", metadata={"help": "saved LaMed model folder to start from (stage-1 output)"}
    )
    llm: str = field(default="", metadata={"help": "base causal LM: hub id or local folder (from_pretrained)"})
    text_config: dict[str, Any] | None = field(
        default=None, metadata={"help": "LLM config dict (from_config) when llm is empty"}
    )
    tokenizer: str = field(
        default="",
        metadata={
            "help": "tokenizer path / hub id; 'train' = train a BPE tokenizer on the train manifest; empty = llm"
        },
    )
    tokenizer_vocab_size: int = 1000
    tokenizer_style: str = "byte_level"
    tokenizer_bos: bool = True
    vision_tower: list[str] = field(default_factory=lambda: ["vit3d_base"], metadata={"help": "encoder name(s)"})
    vision_overrides: dict[str, Any] | None = None
    vision_feature_stages: list[int] | None = None
    projector: str = "spp"
    projector_overrides: dict[str, Any] | None = None
    pretrained_vision: list[str] = field(
        default_factory=list, metadata={"help": "'family:path' per tower (convert_state_dict)"}
    )
    pretrained_mm: str = field(default="", metadata={"help": "'family:path' of a published stage-1 projector file"})
    image_insertion: str = "placeholder"
    legacy_image_offset: int = 1
    slice_feature_source: str = "input"
    prompt_format: str = "raw"
    system_prompt: str = ""
    max_length: int = 512
    image_position: str = field(
        default="before", metadata={"help": "image tokens 'before' the question (published) or 'after' it"}
    )
    attn_implementation: str = "sdpa"
    vision_feature_norm: str = field(
        default="none",
        metadata={"help": "'none' or 'batch': standardise the tower's tokens before the projector (see LaMedConfig)"},
    )
    loss_reduction: str = field(
        default="token",
        metadata={"help": "'token' (HF, published) or 'sample': mean per row, then over rows (see LaMedConfig)"},
    )
    save_base: bool = field(
        default=True, metadata={"help": "save an assembled (not loaded) base model to output_dir/base_model"}
    )


def create_tokenizer(m: MLLMModelArguments, train_manifest: str = ""):
    """The tokenizer ``m.tokenizer`` names (``"train"``: a BPE tokenizer trained offline on the texts of
    ``train_manifest``; empty: the one of ``pretrained_model`` or ``llm``)."""
    if m.tokenizer == "train":
        from LaMed.data.tokenizer import phantom_corpus, train_tokenizer

        if not train_manifest:
            raise ValueError("model.tokenizer: 'train' needs data.train_manifest (the corpus)")
        return train_tokenizer(
            phantom_corpus([train_manifest]),
            vocab_size=m.tokenizer_vocab_size,
            style=m.tokenizer_style,
            bos=m.tokenizer_bos,
            chat_template="chatml" if m.prompt_format == "chat" else None,
        )
    from transformers import AutoTokenizer

    source = m.tokenizer or m.pretrained_model or m.llm
    if not source:
        raise ValueError("model.tokenizer: give a tokenizer path / hub id, 'train', or model.llm")
    return AutoTokenizer.from_pretrained(source)


def _text_config(m: MLLMModelArguments, tokenizer):
    from transformers import CONFIG_MAPPING, AutoConfig

    if m.llm:
        text_config = AutoConfig.from_pretrained(m.llm)
    elif m.text_config:
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
    return text_config


def create_mllm(m: MLLMModelArguments, tokenizer, dtype: torch.dtype | None = None):
    """A fresh :class:`LaMedForCausalLM` assembled from the spec's parts (see the module docstring).

    ``dtype``: the dtype of the loaded LLM weights (default float32, what training starts from).
    """
    from transformers import AutoModelForCausalLM

    ids = prepare_tokenizer(tokenizer)
    text_config = _text_config(m, tokenizer)
    towers = m.vision_tower if len(m.vision_tower) > 1 else m.vision_tower[0]
    overrides = m.vision_overrides
    if isinstance(overrides, dict) and isinstance(towers, list) and set(overrides) <= set(towers):
        overrides = [overrides.get(t, {}) for t in towers]  # {tower name: overrides} for several towers
    config = LaMedConfig(
        text_config=text_config,
        vision_tower=towers,
        vision_overrides=overrides,
        vision_feature_stages=m.vision_feature_stages,
        projector=m.projector,
        projector_overrides=m.projector_overrides,
        image_insertion=m.image_insertion,
        legacy_image_offset=m.legacy_image_offset,
        slice_feature_source=m.slice_feature_source,
        vision_feature_norm=m.vision_feature_norm,
        loss_reduction=m.loss_reduction,
        **ids,
    )
    language_model = None
    if m.llm:
        language_model = AutoModelForCausalLM.from_pretrained(
            m.llm, dtype=dtype or torch.float32, attn_implementation=m.attn_implementation
        )
    model = LaMedForCausalLM(config, language_model=language_model)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        # New rows start at the mean of the old ones (transformers' mean resizing; as published).
        model.resize_token_embeddings(len(tokenizer))
    for tower, spec in zip(model.towers, m.pretrained_vision):
        family, _, path = spec.partition(":")
        report = load_converted(tower, convert_state_dict(family, read_state_dict(path)), strict=True, source=path)
        logger.info("vision tower loaded from %s (%s)", path, report)
    if m.pretrained_mm:
        from LaMed.models.convert.mllm import load_stage1_projector

        family, _, path = m.pretrained_mm.partition(":")
        load_stage1_projector(model, read_state_dict(path), family=family, source=path)
    return model
