"""Published projector layouts -> LaMed projectors (``LaMed.models.projectors``).

Families (each accepts a bare projector state dict, a stage-1 ``mm_projector.bin`` or a full /
PEFT-prefixed VLM checkpoint; keys outside the projector, e.g. ``embed_tokens``, are left out):

* ``m3d_projector``: M3D-LaMed and R1Seg-3D ``mm_projector`` (``spp``: ``projector.{0,2}``, kept;
  M3D ``linear``: ``linear.*`` -> ``projector.0.*``) -> ``spp`` / ``r1seg_pool_mlp`` / ``linear``.
* ``med3dvlm_projector``: Med3DVLM ``mixer`` (``{low,high}_mixer.{i}.{ln1,ln2,mlp1,mlp2}``) ->
  ``mixer`` (``streams.{0,1}.{i}.{ln1,ln2,token_mlp,channel_mlp}``); its ``mlp``
  (``mm_projector.{0,1.1,...}``) and ``linear`` (bare Linear) types -> ``mlp`` / ``linear``.
* ``hsenet_packer``: HSENet ``mm_projector`` / ``mm_projector2`` (``resolution_attention.{Wq,Wk,Wv,
  output_linear,norm}``, ``proj_mpls``) -> ``hsenet_packer`` / ``packer`` (``streams.{s}.attn.{q,k,v,out,norm}``,
  ``streams.{s}.projector``).
"""

from __future__ import annotations

import re

from LaMed.models.convert.base import register_converter


def _split(key: str, names: tuple[str, ...]) -> tuple[str, str] | None:
    """``(segment, rest)`` at the first dotted segment of ``key`` that is one of ``names``."""
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in names:
            return p, ".".join(parts[i + 1 :])
    return None


def _projector_keys(sd: dict, names: tuple[str, ...] = ("mm_projector",)) -> list[tuple[str, str, object]]:
    """``(segment, key below it, tensor)`` for keys under a ``names`` segment; all keys if none has one."""
    hits = [(*s, v) for k, v in sd.items() if (s := _split(k, names))]
    return hits or [("", k, v) for k, v in sd.items()]


@register_converter("m3d_projector")
def convert_m3d_projector(state_dict: dict) -> dict:
    """M3D-LaMed / R1Seg-3D ``mm_projector`` -> ``SpatialPoolProjector`` / ``TokenMLPProjector``."""
    out = {}
    for _, key, value in _projector_keys(state_dict):
        out["projector.0." + key[len("linear.") :] if key.startswith("linear.") else key] = value
    return out


# Med3DVLM builds each MLP as Sequential(Linear, Sequential(GELU, Linear), ...): Linear i sits at
# ``mm_projector.0`` (i = 0) or ``mm_projector.i.1``; ours is flat, Linear i at index 2 * i.
_M3V_MLP = re.compile(r"(^|\.)mm_projector\.(\d+)\.(?:1\.)?")
# Its projector attribute and the MLPs inside it are both called ``mm_projector``, so the projector's
# own keys are found by their roots: the mixer streams, an MLP (``mm_projector.<i>``), a bare Linear.
_M3V_ROOT = re.compile(r"(?:^|\.)((?:low_mixer|high_mixer)\..+|mm_projector\.\d+\..+|mm_projector\.(?:weight|bias))$")


def _flat_mlp(key: str) -> str:
    return _M3V_MLP.sub(lambda m: f"{m.group(1)}{2 * int(m.group(2))}.", key, count=1)


@register_converter("med3dvlm_projector")
def convert_med3dvlm_projector(state_dict: dict) -> dict:
    """Med3DVLM ``mm_projector`` (``mixer``, ``mlp`` or ``linear`` type) -> LaMed projector keys."""
    out = {}
    for full_key, value in state_dict.items():
        if full_key in ("weight", "bias"):  # a bare nn.Linear (``linear`` type) state dict
            out[f"projector.0.{full_key}"] = value
            continue
        m = _M3V_ROOT.search(full_key)
        if not m:
            continue  # LLM, vision tower, embeddings
        key = m.group(1)
        if key.startswith(("low_mixer.", "high_mixer.")):
            stream, rest = key.split(".", 1)
            rest = rest.replace(".mlp1.", ".token_mlp.").replace(".mlp2.", ".channel_mlp.")
            key = f"streams.{0 if stream == 'low_mixer' else 1}.{_flat_mlp(rest)}"
        elif key in ("mm_projector.weight", "mm_projector.bias"):
            key = "projector.0." + key.split(".")[1]
        else:  # the ``mlp`` type (MultiModalProjector)
            key = "projector." + _flat_mlp(key)
        out[key] = value
    return out


_PACKER_NAMES = {"Wq": "q", "Wk": "k", "Wv": "v", "output_linear": "out", "norm": "norm"}


@register_converter("hsenet_packer")
def convert_hsenet_packer(state_dict: dict) -> dict:
    """HSENet ``VisualPacker_3d_phi_v3`` (one or two: ``mm_projector``, ``mm_projector2``) -> ``streams.{0,1}``."""
    out = {}
    for segment, key, value in _projector_keys(state_dict, ("mm_projector", "mm_projector2")):
        if ".lora_" in key:
            continue
        stream = 1 if segment == "mm_projector2" else 0
        if key.startswith("resolution_attention."):
            _, name, rest = key.split(".", 2)
            key = f"attn.{_PACKER_NAMES.get(name, name)}.{rest}"
        elif key.startswith("proj_mpls."):
            key = "projector." + key[len("proj_mpls.") :]
        out[f"streams.{stream}.{key}"] = value
    return out
