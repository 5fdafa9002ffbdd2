"""Integrity checks of a saved model folder, made before any loader touches it.

A truncated download, a header edited by hand or a ``config.json`` that is not JSON otherwise ends
in a traceback from deep inside safetensors or transformers. These checks read only the headers
(a few KB, never the tensors) and raise ``ValueError`` naming the file and the problem.

safetensors layout (public spec, huggingface/safetensors): 8 bytes little-endian header length N,
N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data; offsets are relative to the end of the header and together must tile the data exactly.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

__all__ = [
    "safetensors_header",
    "check_safetensors",
    "check_config_json",
    "check_model_folder",
    "SAFETENSORS_DTYPE_BYTES",
]

SAFETENSORS_DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}
# A header larger than this is not a real checkpoint header (safetensors itself caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


def safetensors_header(path: str | Path) -> tuple:
    """``(data_start, header)`` of a checked ``.safetensors`` file: the byte offset of the tensor data and
    the parsed JSON header (``{name: {"dtype", "shape", "data_offsets"}}``, ``__metadata__`` removed)."""
    path = Path(path)
    check_safetensors(path)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n).decode("utf-8"))
    header.pop("__metadata__", None)
    return 8 + n, header


def check_safetensors(path: str | Path) -> int:
    """Check the header of one ``.safetensors`` file against its size; returns the number of tensors."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise ValueError(f"{path}: not a safetensors file ({size} bytes; truncated?)")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(
                f"{path}: header length {n} bytes does not fit the file of {size} bytes "
                f"(truncated or not a safetensors file)"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    data_size = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            width = SAFETENSORS_DTYPE_BYTES[dtype]
            nbytes = math.ceil(math.prod(int(s) for s in shape) * width)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor '{name}' has a malformed header entry {info!r}") from None
        if not (0 <= begin <= end) or end - begin != nbytes:
            raise ValueError(
                f"{path}: tensor '{name}' ({dtype} {list(shape)}) should take {nbytes} bytes but its "
                f"offsets [{begin}, {end}] give {end - begin} (header edited or file damaged)"
            )
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError(
                f"{path}: tensor '{name}' starts at byte {begin}, expected {pos} "
                f"(overlapping or gapped data: header edited or file damaged)"
            )
        pos = end
    if pos != data_size:
        raise ValueError(
            f"{path}: the header describes {pos} bytes of tensor data but the file holds {data_size} "
            f"({'truncated' if data_size < pos else 'trailing bytes'}; re-download or re-save it)"
        )
    return len(spans)


def check_config_json(path: str | Path) -> dict:
    """``config.json`` parsed; refused unless it is a JSON object with a ``model_type`` string."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ValueError(f"{path}: no 'model_type' field (not a saved transformers / LaMed model config)")
    return config


def check_model_folder(folder: str | Path) -> dict:
    """Check ``config.json`` and every ``*.safetensors`` of a model folder; returns the config."""
    folder = Path(folder)
    config = check_config_json(folder / "config.json")
    for f in sorted(folder.glob("*.safetensors")):
        check_safetensors(f)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise ValueError(f"{index}: not a valid safetensors index (no 'weight_map')") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ValueError(f"{index}: names shard(s) that are not in the folder: {', '.join(missing)}")
    return config
