"""Multimodal LLM: vision tower(s) + projector + any HF causal LM (M3D-LaMed, Med3DVLM, HSENet).

Importing this package registers ``model_type="lamed"`` with ``AutoConfig`` and
``AutoModelForCausalLM``, so a saved LaMed folder loads with ``AutoModelForCausalLM.from_pretrained``
(no ``trust_remote_code``).
"""

from LaMed.models.mllm.configuration import LaMedConfig
from LaMed.models.mllm.modeling import ImageTokenMismatch, LaMedForCausalLM, LaMedPreTrainedModel, register_auto
from LaMed.models.mllm.processing import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN,
    SEG_TOKEN,
    LaMedProcessor,
    MLLMCollator,
    format_box,
    pad_sequences,
    prepare_tokenizer,
)

__all__ = [
    "LaMedConfig",
    "LaMedForCausalLM",
    "LaMedPreTrainedModel",
    "ImageTokenMismatch",
    "register_auto",
    "LaMedProcessor",
    "MLLMCollator",
    "prepare_tokenizer",
    "pad_sequences",
    "format_box",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN",
    "SEG_TOKEN",
]
