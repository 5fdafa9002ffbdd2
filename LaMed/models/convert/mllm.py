"""Published multimodal-LLM checkpoints -> :class:`~LaMed.models.mllm.LaMedForCausalLM` keys.

Families (each takes a full or PEFT-prefixed state dict, i.e. ``base_model.model.`` keys and
``lora_A/B.default`` tensors are handled; unmerged LoRA pairs are merged into their base weights with
the given ``lora_scaling = alpha / r``, published 32 / 16 = 2):

| family           | published layout                                                            | LaMed layout |
|------------------|-----------------------------------------------------------------------------|--------------|
| ``m3d_lamed``    | ``model.{embed_tokens,layers,norm}``, ``lm_head`` (Phi-3: vocab 32015;     | ``language_model.model.*``, ``language_model.lm_head`` |
|                  | Llama-2: 32004), ``model.vision_tower.vision_tower.*``,                     | ``vision_tower.*`` |
|                  | ``model.mm_projector.projector.{0,2}``, ``model.seg_*`` (dropped here)     | ``mm_projector.projector.{0,2}`` |
| ``med3dvlm``     | same LLM keys (Qwen2.5, vocab 151666), ``model.vision_tower.vision_tower.encoder.*`` (DCFormer), ``model.mm_projector.{low,high}_mixer`` | DCFormer ``vision_tower.encoder.*``, ``mm_projector.streams.{0,1}`` |
| ``hsenet``       | Phi-4-mini LLM keys, ``model.vision_tower.vision_tower_stage{1,2}.*``,       | ``vision_tower.{0,1}.*``, |
|                  | ``model.mm_projector`` + ``model.mm_projector2`` (packers)                  | ``mm_projector.streams.{0,1}`` |

The released HSENet VLM file holds only the packers and LoRA tensors: convert it with
``allow_partial=True`` and load it on top of a model rebuilt from Phi-4-mini and the 2E3 CLIP.
The published models splice image features by position; the converted model must be built with
``image_insertion="legacy_offset"`` (:func:`legacy_config_fields`) to reproduce their outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from LaMed.models.convert.base import convert_state_dict, load_converted, note_derived, note_dropped, register_converter

PEFT_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])\.(?:default\.)?weight$")
_LLM_ROOTS = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


def strip_peft(sd: Mapping, lora_scaling: float = 2.0) -> dict:
    """Remove the PEFT prefix and fold ``lora_A/B`` into their base weight (``W + s * B @ A``).

    ``...base_layer.weight`` becomes ``...weight``; LoRA pairs without a base weight in ``sd`` (a
    LoRA-only file) are kept as ``<module>.lora_{A,B}`` so the caller can report them.
    """
    out: dict = {}
    lora: dict[str, dict[str, object]] = {}
    for key, value in sd.items():
        k = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        m = _LORA.match(k)
        if m:
            lora.setdefault(m.group("mod"), {})[m.group("ab")] = value
            continue
        out[k.replace(".base_layer.", ".")] = value
    for mod, pair in lora.items():
        w = out.get(f"{mod}.weight")
        if w is None or len(pair) != 2:
            for ab, t in pair.items():
                out[f"{mod}.lora_{ab}"] = t
            continue
        out[f"{mod}.weight"] = (w.float() + lora_scaling * (pair["B"].float() @ pair["A"].float())).to(w.dtype)
        note_derived(w, pair["A"], pair["B"], how="LoRA pair merged into its base weight")
    return out


def _llm_keys(sd: Mapping) -> dict:
    return {f"language_model.{k}": v for k, v in sd.items() if k.startswith(_LLM_ROOTS)}


def _sub(sd: Mapping, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


@register_converter("m3d_lamed")
def convert_m3d_lamed(state_dict: dict, lora_scaling: float = 2.0, allow_partial: bool = False) -> dict:
    """M3D-LaMed (Phi-3 / Llama-2) full or PEFT checkpoint -> LaMed keys (seg module left out)."""
    sd = strip_peft(state_dict, lora_scaling)
    out = _llm_keys(sd)
    for k, v in sd.items():
        if k.startswith(("model.seg_module.", "model.seg_projector.")):
            note_dropped(v, "M3D-LaMed's segmentation module (import it with the m3d_lamed_seg family)")
    vit = convert_state_dict("m3d_vit", sd) if any("vision_tower.vision_tower." in k for k in sd) else {}
    out.update({f"vision_tower.{k}": v for k, v in vit.items()})
    proj = _sub(sd, "model.mm_projector.")
    out.update({f"mm_projector.{k}": v for k, v in convert_state_dict("m3d_projector", proj).items()} if proj else {})
    _check(out, allow_partial, "m3d_lamed")
    return out


@register_converter("med3dvlm")
def convert_med3dvlm(state_dict: dict, lora_scaling: float = 2.0, allow_partial: bool = False) -> dict:
    """Med3DVLM-Qwen2.5 (incl. FLARE) merged or PEFT checkpoint -> LaMed keys (DCFormer + mixer)."""
    sd = strip_peft(state_dict, lora_scaling)
    out = _llm_keys(sd)
    tower = _sub(sd, "model.vision_tower.vision_tower.")
    if tower:
        out.update({f"vision_tower.{k}": v for k, v in convert_state_dict("dcformer", tower).items()})
    proj = {k: v for k, v in sd.items() if k.startswith("model.mm_projector.")}
    if proj:
        out.update({f"mm_projector.{k}": v for k, v in convert_state_dict("med3dvlm_projector", proj).items()})
    _check(out, allow_partial, "med3dvlm")
    return out


@register_converter("hsenet")
def convert_hsenet(state_dict: dict, lora_scaling: float = 2.0, allow_partial: bool = False) -> dict:
    """HSENet-Phi-4 VLM (towers, two packers, LLM / LoRA) -> LaMed keys (two towers, two streams)."""
    sd = strip_peft(state_dict, lora_scaling)
    out = _llm_keys(sd)
    for i, (family, name) in enumerate((("hsenet_vit", "vision_tower_stage1"), ("hsenet_2e3", "vision_tower_stage2"))):
        if any(f"vision_tower.{name}." in k for k in sd):
            tower = convert_state_dict(family, sd, prefix=f"model.vision_tower.{name}.")
            out.update({f"vision_tower.{i}.{k}": v for k, v in tower.items()})
    proj = {k: v for k, v in sd.items() if k.startswith(("model.mm_projector.", "model.mm_projector2."))}
    if proj:
        out.update({f"mm_projector.{k}": v for k, v in convert_state_dict("hsenet_packer", proj).items()})
    # A LoRA-only release keeps un-merged pairs: name them under the LLM for the caller's report.
    for k, v in sd.items():
        if ".lora_" in k and k.startswith("model.layers."):
            out[f"language_model.{k}"] = v
    _check(out, allow_partial, "hsenet")
    return out


def _check(out: Mapping, allow_partial: bool, family: str) -> None:
    if allow_partial:
        return
    have = {k.split(".")[0] for k in out}
    need = {"language_model", "vision_tower", "mm_projector"}
    if not need <= have:
        raise KeyError(
            f"{family}: checkpoint lacks {sorted(need - have)} (a partial release? pass allow_partial=True "
            "and load it over a rebuilt base model)"
        )
    dangling = [k for k in out if ".lora_" in k]
    if dangling:
        raise KeyError(f"{family}: LoRA tensors without base weights: {dangling[:3]} (pass allow_partial=True)")


def legacy_config_fields(family: str) -> dict:
    """``LaMedConfig`` fields under which a converted checkpoint reproduces its published outputs."""
    # All three splice image features at positions 1..T regardless of the tokens found there.
    if family not in ("m3d_lamed", "med3dvlm", "hsenet"):
        raise KeyError(f"no legacy settings for family {family!r}")
    return {"image_insertion": "legacy_offset", "legacy_image_offset": 1}


def load_stage1_projector(model, state_dict: Mapping, family: str = "m3d", source: str = "mm_projector.bin") -> dict:
    """Load a published stage-1 file (projector + full ``embed_tokens``) into ``model``, strictly.

    ``family``: ``m3d`` (M3D-LaMed / R1Seg-3D ``spp``), ``med3dvlm`` (mixer) or ``hsenet`` (packers).
    Both parts are loaded (fixing the published stage 2, which dropped the embeddings); the
    embedding matrix must have the model's shape.
    """
    projector_family = {"m3d": "m3d_projector", "med3dvlm": "med3dvlm_projector", "hsenet": "hsenet_packer"}.get(family)
    if projector_family is None:
        raise KeyError(f"{source}: unknown stage-1 family {family!r} (m3d, med3dvlm, hsenet)")
    sd = strip_peft(state_dict)
    proj = {k: v for k, v in sd.items() if "mm_projector" in k}
    load_converted(model.mm_projector, convert_state_dict(projector_family, proj), strict=True, source=source)
    emb = [v for k, v in sd.items() if k.endswith("embed_tokens.weight")]
    if emb:
        target = model.get_input_embeddings().weight
        if tuple(emb[0].shape) != tuple(target.shape):
            raise ValueError(f"{source}: embed_tokens {tuple(emb[0].shape)} vs model {tuple(target.shape)}")
        with __import__("torch").no_grad():
            target.copy_(emb[0])
    return {"projector": len(proj), "embed_tokens": bool(emb)}


__all__ = [
    "strip_peft",
    "legacy_config_fields",
    "load_stage1_projector",
    "convert_m3d_lamed",
    "convert_med3dvlm",
    "convert_hsenet",
]
