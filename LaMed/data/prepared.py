"""The prepared data format (docs/architecture.md, Contracts): what every preparer writes and every dataset reads.

Layout of an output folder::

    <out>/<split>.json                  one manifest a split (train / validation / test, or any name)
    <out>/images/<id>.npy               (1, D, H, W) float16 in [0, 1], read memory-mapped
    <out>/masks/<id>/<name>.npy         (1, D, H, W) uint8 (0/1)

Manifest::

    {"format": "lamed.prepared/1", "dataset": "phantom", "split": "train", "preset": "m3d",
     "items": [{"id", "image", "spacing", "masks", "text", "vqa", "refer", "boxes", "labels",
                "source"}, ...]}

Paths inside a manifest are relative to the manifest's folder and must stay inside it: an absolute
path or a ``..`` component is refused when the manifest is read. Fields a dataset lacks are absent.
Every file is written to a temporary name beside its target and moved into place with
``os.replace``, so an interrupted run never leaves a truncated ``.npy``/``.json`` under a final name:
a file that exists is complete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from LaMed.data.presets import preset_spec

from ..utils.atomic import atomic_write_bytes, save_npy_atomic, write_json_atomic

__all__ = [
    "FORMAT",
    "SPLITS",
    "PreparedError",
    "PreparedReport",
    "atomic_write_bytes",
    "save_npy_atomic",
    "write_json_atomic",
    "write_image",
    "write_mask",
    "write_manifest",
    "load_manifest",
    "load_image",
    "load_masks",
    "validate_prepared",
    "manifest_dir",
    "unsafe_relpath",
    "check_item_paths",
    "resolve_in_root",
]

FORMAT = "lamed.prepared/1"
SPLITS = ("train", "validation", "test")
VQA_TYPES = ("closed", "open", "yes_no")


class PreparedError(ValueError):
    """A prepared file or manifest is missing or malformed; the message names the file and field."""


# --------------------------------------------------------------------------- atomic writers
# One writer for every output (LaMed.utils.atomic); re-exported here for the preparers.


def write_image(out_dir: str | Path, item_id: str, image: np.ndarray) -> str:
    """Write ``image`` ((D, H, W) or (1, D, H, W), values in [0, 1]) as float16; returns the relative path."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise PreparedError(f"image '{item_id}': expected shape (1, D, H, W), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise PreparedError(f"image '{item_id}': contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise PreparedError(f"image '{item_id}': values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    rel = f"images/{item_id}.npy"
    save_npy_atomic(Path(out_dir) / rel, np.clip(arr, 0.0, 1.0).astype(np.float16))
    return rel


def write_mask(out_dir: str | Path, item_id: str, name: str, mask: np.ndarray) -> str:
    """Write a binary mask ((D, H, W) or (1, D, H, W)) as uint8 0/1; returns the relative path."""
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise PreparedError(f"mask '{name}' of '{item_id}': expected shape (1, D, H, W), got {arr.shape}")
    rel = f"masks/{item_id}/{name}.npy"
    save_npy_atomic(Path(out_dir) / rel, (arr != 0).astype(np.uint8))
    return rel


def write_manifest(
    out_dir: str | Path,
    split: str,
    items: Sequence[dict],
    *,
    dataset: str,
    preset: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<out_dir>/<split>.json`` (atomically); items are validated first."""
    manifest: dict[str, Any] = {"format": FORMAT, "dataset": dataset, "split": split}
    if preset is not None:
        manifest["preset"] = preset
    manifest.update(extra or {})
    manifest["items"] = list(items)
    path = Path(out_dir) / f"{split}.json"
    _validate_manifest(manifest, path)
    return write_json_atomic(path, manifest)


# --------------------------------------------------------------------------- readers


def manifest_dir(manifest_path_or_dir: str | Path) -> Path:
    p = Path(manifest_path_or_dir)
    return p if p.is_dir() else p.parent


def _fail(path, where: str, problem: str):
    raise PreparedError(f"{path}: {where}: {problem}")


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def unsafe_relpath(rel: str) -> str | None:
    """Why ``rel`` may not be used as a path inside a dataset folder, or None when it is safe.

    Manifest paths are joined to the manifest's folder; an absolute path or a ``..`` component
    would make a training run read (and a crafted manifest expose) any file on the machine.
    """
    if not isinstance(rel, str) or not rel:
        return "missing or not a non-empty string"
    if "\0" in rel:
        return f"{rel!r} contains a NUL character"
    if rel.startswith(("/", "\\")) or PureWindowsPath(rel).drive or Path(rel).is_absolute():
        return f"{rel!r} is an absolute path; paths must be relative to the manifest's folder"
    if ".." in re.split(r"[/\\]", rel):
        return f"{rel!r} leaves the dataset folder ('..'); paths must stay inside the manifest's folder"
    return None


def item_file_fields(item: Mapping) -> dict[str, str]:
    """``{field: relative path}`` of every file an item names: ``image``, each mask, and any other
    string field ending in ``.npy`` (slice stacks, slice features, ...) but ``source``, which
    records where the item came from and is never read."""
    out = {}
    for key, value in item.items():
        if key == "masks" and isinstance(value, dict):
            out.update({f"masks.{k}": v for k, v in value.items()})
        elif key == "image" or (key != "source" and isinstance(value, str) and value.lower().endswith(".npy")):
            out[key] = value
    return out


def check_item_paths(item: Mapping, path, where: str) -> None:
    """Refuse (PreparedError) an item whose file paths are absolute or leave the dataset folder."""
    for key, rel in item_file_fields(item).items():
        problem = unsafe_relpath(rel)
        if problem is not None:
            _fail(path, f"{where}.{key}", problem)


def resolve_in_root(base: Path, rel: str) -> Path:
    """``base / rel`` after refusing an absolute or escaping ``rel`` (PreparedError naming both)."""
    problem = unsafe_relpath(rel)
    if problem is not None:
        raise PreparedError(f"{base}: {problem}")
    return base / rel


def _validate_item(item: Any, path, where: str) -> None:
    if not isinstance(item, dict):
        _fail(path, where, f"expected an object, got {type(item).__name__}")
    for key in ("id", "image"):
        if not isinstance(item.get(key), str) or not item.get(key):
            _fail(path, f"{where}.{key}", "missing or not a non-empty string")
    check_item_paths(item, path, where)
    if "spacing" in item:
        sp = item["spacing"]
        if not (isinstance(sp, list) and len(sp) == 3 and all(_is_num(v) and v > 0 for v in sp)):
            _fail(path, f"{where}.spacing", f"expected 3 positive numbers (mm), got {sp!r}")
    masks = item.get("masks", {})
    if not isinstance(masks, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in masks.items()):
        _fail(path, f"{where}.masks", "expected an object of name -> relative .npy path")
    for key in ("text", "source"):
        if key in item and not isinstance(item[key], str):
            _fail(path, f"{where}.{key}", f"expected a string, got {type(item[key]).__name__}")
    for j, qa in enumerate(item.get("vqa", [])):
        w = f"{where}.vqa[{j}]"
        if not isinstance(qa, dict):
            _fail(path, w, "expected an object")
        for key in ("question", "answer"):
            if not isinstance(qa.get(key), str):
                _fail(path, f"{w}.{key}", "missing or not a string")
        if qa.get("type") not in VQA_TYPES:
            _fail(path, f"{w}.type", f"{qa.get('type')!r} is not one of {', '.join(VQA_TYPES)}")
        if qa["type"] == "closed":
            ch = qa.get("choices")
            if not isinstance(ch, dict) or sorted(ch) != ["A", "B", "C", "D"]:
                _fail(path, f"{w}.choices", f"a closed question needs choices A, B, C, D, got {ch!r}")
            letter = qa.get("answer_choice")
            if letter not in ch:
                _fail(path, f"{w}.answer_choice", f"{letter!r} is not one of the choices A-D")
            if ch[letter] != qa["answer"]:
                _fail(path, f"{w}.answer", f"{qa['answer']!r} differs from choice {letter} = {ch[letter]!r}")
    for j, ref in enumerate(item.get("refer", [])):
        w = f"{where}.refer[{j}]"
        if not isinstance(ref, dict) or not isinstance(ref.get("text"), str) or not isinstance(ref.get("target"), str):
            _fail(path, w, 'expected {"text": str, "target": str}')
        if masks and ref["target"] not in masks:
            _fail(path, f"{w}.target", f"{ref['target']!r} is not one of the item's masks")
    boxes = item.get("boxes", {})
    if not isinstance(boxes, dict):
        _fail(path, f"{where}.boxes", "expected an object of name -> [d0, h0, w0, d1, h1, w1]")
    for name, b in boxes.items():
        ok = isinstance(b, list) and len(b) == 6 and all(_is_num(v) and -1e-6 <= v <= 1 + 1e-6 for v in b)
        if not ok or any(b[i] > b[i + 3] for i in range(3)):
            _fail(
                path,
                f"{where}.boxes.{name}",
                f"expected [d0, h0, w0, d1, h1, w1] in [0, 1] with starts <= ends, got {b!r}",
            )
    labels = item.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        _fail(path, f"{where}.labels", "expected a list of strings")


def _validate_manifest(m: Any, path) -> dict:
    if not isinstance(m, dict):
        _fail(path, "top level", "expected a JSON object")
    if m.get("format") != FORMAT:
        _fail(path, "format", f"expected {FORMAT!r}, got {m.get('format')!r}")
    for key in ("dataset", "split"):
        if not isinstance(m.get(key), str) or not m.get(key):
            _fail(path, key, "missing or not a non-empty string")
    items = m.get("items")
    if not isinstance(items, list):
        _fail(path, "items", "missing or not a list")
    seen = set()
    for i, item in enumerate(items):
        _validate_item(item, path, f"items[{i}]")
        if item["id"] in seen:
            _fail(path, f"items[{i}].id", f"duplicate id {item['id']!r}")
        seen.add(item["id"])
    return m


def load_manifest(path: str | Path) -> dict:
    """Read and validate one manifest; ``PreparedError`` names the file and the field on any problem."""
    path = Path(path)
    if path.is_dir():
        raise PreparedError(f"{path}: is a folder; pass a manifest such as {path / 'train.json'}")
    if not path.is_file():
        raise PreparedError(f"{path}: manifest not found")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PreparedError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    return _validate_manifest(m, path)


def _item_path(base: Path, item: Mapping | str, key: str = "image") -> Path:
    rel = item if isinstance(item, str) else item[key]
    return resolve_in_root(base, rel)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise PreparedError(f"{path}: file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PreparedError(f"{path}: cannot be read as .npy ({exc})") from None


def load_image(manifest_path_or_dir: str | Path, item: Mapping | str, mmap: bool = True) -> np.ndarray:
    """The item's image, ``(1, D, H, W)`` float16 (a read-only memmap unless ``mmap=False``).

    ``item`` is a manifest item or its relative image path; paths resolve against the manifest's folder.
    """
    path = _item_path(manifest_dir(manifest_path_or_dir), item, "image")
    arr = _load_npy(path, mmap)
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise PreparedError(f"{path}: expected an image of shape (1, D, H, W), got {arr.shape}")
    if arr.dtype != np.float16:
        raise PreparedError(f"{path}: expected dtype float16, got {arr.dtype}")
    return arr


def load_masks(
    manifest_path_or_dir: str | Path, item: Mapping, names: Iterable[str] | None = None, mmap: bool = True
) -> dict[str, np.ndarray]:
    """The item's masks (all, or ``names``), each ``(1, D, H, W)`` uint8."""
    base = manifest_dir(manifest_path_or_dir)
    masks = item.get("masks", {})
    names = list(masks) if names is None else list(names)
    out = {}
    for name in names:
        if name not in masks:
            raise PreparedError(f"item {item.get('id')!r}: no mask named {name!r} (has: {', '.join(masks) or 'none'})")
        path = resolve_in_root(base, masks[name])
        arr = _load_npy(path, mmap)
        if arr.ndim != 4 or arr.shape[0] != 1 or arr.dtype not in (np.uint8, np.bool_):
            raise PreparedError(f"{path}: expected a uint8 mask of shape (1, D, H, W), got {arr.dtype} {arr.shape}")
        out[name] = arr
    return out


# --------------------------------------------------------------------------- validation


@dataclass
class PreparedReport:
    """Result of ``validate_prepared``: items per split, files checked and the problems found."""

    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items()) or "no manifests"
        head = f"{self.root}: {counts}; {self.files_checked} files checked"
        if self.ok:
            return head + "; OK"
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        return head + f"; {len(self.problems)} problem(s):\n  " + "\n  ".join(self.problems[:20]) + more


def validate_prepared(root: str | Path, check_values: bool = False, raise_on_error: bool = True) -> PreparedReport:
    """Check every manifest in ``root``: fields, that each image / mask exists, loads as a
    (1, D, H, W) array of the right dtype, masks match their image's shape, and ``shape`` (when an
    item records it) is honoured. ``check_values`` also reads every image to check [0, 1].

    Returns a ``PreparedReport``; raises ``PreparedError`` with every problem listed when
    ``raise_on_error`` and anything is wrong.
    """
    root = Path(root)
    report = PreparedReport(root)
    if not root.is_dir():
        raise PreparedError(f"{root}: prepared folder not found")
    manifests = sorted(p for p in root.glob("*.json") if p.name not in ("errors.json",))
    if not manifests:
        report.problems.append(f"{root}: no <split>.json manifest")
    for mpath in manifests:
        try:
            m = load_manifest(mpath)
        except PreparedError as exc:
            report.problems.append(str(exc))
            continue
        report.counts[m["split"]] = len(m["items"])
        for i, item in enumerate(m["items"]):
            try:
                img = load_image(mpath, item)
                report.files_checked += 1
                if "shape" in item and list(img.shape) != list(item["shape"]):
                    report.problems.append(
                        f"{mpath}: items[{i}].shape: {item['shape']} but the image is {list(img.shape)}"
                    )
                if check_values and img.size:
                    lo, hi = float(img.min()), float(img.max())
                    if lo < 0 or hi > 1 or not np.isfinite([lo, hi]).all():
                        report.problems.append(f"{root / item['image']}: values outside [0, 1]: [{lo}, {hi}]")
                for name, mask in load_masks(mpath, item).items():
                    report.files_checked += 1
                    if mask.shape != img.shape:
                        report.problems.append(
                            f"{root / item['masks'][name]}: mask shape {mask.shape} differs from its image {img.shape}"
                        )
            except PreparedError as exc:
                report.problems.append(f"{mpath.name} items[{i}] ({item.get('id')}): {exc}")
    if raise_on_error and report.problems:
        raise PreparedError(str(report))
    return report


def manifest_preprocessing(path: str | Path) -> dict | None:
    """The preprocessing that produced a prepared split, as a model config stores it
    (:func:`LaMed.data.presets.preset_spec`), so a model trained on it is later fed scanner volumes the
    same way; ``None`` when the manifest does not say (then nothing is stored).

    A manifest names its ``preset``. Phantoms are drawn at their final size and mapped linearly from
    an HU ``window`` without a crop: that is the ``m3d`` preset with that window and no foreground crop.
    """

    if not path:
        return None
    manifest = load_manifest(path)
    if manifest.get("preset"):
        return preset_spec(str(manifest["preset"]))
    window = manifest.get("window")
    if manifest.get("dataset") == "phantom" and isinstance(window, list) and len(window) == 2:
        return preset_spec("m3d", window=[float(w) for w in window], crop_foreground=False)
    return None
