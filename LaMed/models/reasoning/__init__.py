"""Reasoning segmentation: a ``[SEG]`` token of the multimodal LLM prompts a 3D mask decoder.

One model class covers both published arrangements (M3D-LaMed: a separate SegVol module re-encodes
the volume; R1Seg-3D: one shared encoder feeds the LLM and the decoder). Importing this package
registers ``model_type="lamed_seg"`` with ``AutoConfig`` / ``AutoModelForCausalLM``.
"""

from LaMed.models.reasoning.configuration import SEG_REDUCTIONS, SEG_TOKEN_STATES, LaMedSegConfig
from LaMed.models.reasoning.modeling import (
    LaMedSegForCausalLM,
    LaMedSegOutput,
    SegGeneration,
    first_stop_mask,
    gather_seg_states,
    register_auto,
    seg_token_positions,
)

__all__ = [
    "LaMedSegConfig",
    "LaMedSegForCausalLM",
    "LaMedSegOutput",
    "SegGeneration",
    "seg_token_positions",
    "gather_seg_states",
    "first_stop_mask",
    "register_auto",
    "SEG_REDUCTIONS",
    "SEG_TOKEN_STATES",
]
