"""A dataset over the prepared format (docs/architecture.md, Contracts) that later tasks subclass.

One JSON manifest a split (``{"format": "lamed.prepared/1", "items": [...]}``) with paths relative
to the manifest's folder; one ``(1, D, H, W)`` float16 ``.npy`` a volume in [0, 1], read
memory-mapped so that only the pages a step touches are read; masks as ``(1, D, H, W)`` uint8.

    ds = PreparedDataset("prepared/train.json", fields=("image", "labels", "text"))
    ds[0] -> {"id": "phantom_00000", "image": FloatTensor (1, D, H, W), "labels": [...], "text": "..."}

A task subclasses it and overrides :meth:`build_item` (tokenise the text, pick a VQA pair, turn
labels into a multi-hot vector, ...). A file that is missing, truncated, of the wrong shape or
dtype, or with values outside [0, 1] raises :class:`~LaMed.train.data.SampleError` naming the
file, which the training wrapper skips and counts (``LaMed.train.data.SkipBadSamples``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from LaMed.data.prepared import check_item_paths
from LaMed.train.data import SampleError

MANIFEST_FORMAT = "lamed.prepared/1"
# Fields of a manifest item that a task can ask for. "image" and "masks" are files; the rest is
# carried in the manifest itself.
FILE_FIELDS = ("image", "masks")
TEXT_FIELDS = ("id", "spacing", "text", "vqa", "refer", "boxes", "labels", "source")
KNOWN_FIELDS = FILE_FIELDS + TEXT_FIELDS


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and check a prepared-format manifest; raise ``ValueError`` naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: field 'format' must be '{MANIFEST_FORMAT}', got {got!r}")
    items = manifest.get("items")
    if not isinstance(items, list):
        raise ValueError(f"{path}: field 'items' must be a list of items")

    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise ValueError(f"{path}: items[{i}] must be a mapping with an 'id'")
        check_item_paths(item, path, f"items[{i}]")  # no absolute / '..' paths out of the dataset
    return manifest


def load_volume_npy(path: Path, *, dtype=np.float16, value_range=(0.0, 1.0), as_float32: bool = False) -> np.ndarray:
    """Memory-map a prepared ``(1, D, H, W)`` array and check it; raise :class:`SampleError` if bad.

    With ``as_float32`` the array is read into float32 first and checked there (NumPy's float16
    reductions are slow), which is what a training step needs anyway.
    """
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise SampleError(path, "file not found") from None
    except (OSError, ValueError, EOFError) as exc:  # truncated or not an .npy
        raise SampleError(path, f"unreadable .npy ({exc})") from None
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise SampleError(path, f"expected shape (1, D, H, W), got {tuple(arr.shape)}")
    if arr.dtype != dtype:
        raise SampleError(path, f"expected dtype {np.dtype(dtype).name}, got {arr.dtype.name}")
    if as_float32:
        arr = np.asarray(arr, dtype=np.float32)
    if value_range is not None:
        lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < value_range[0] or hi > value_range[1]:
            raise SampleError(path, f"values must lie in [{value_range[0]}, {value_range[1]}], found [{lo}, {hi}]")
    return arr


class PreparedDataset:
    """Map-style dataset over one prepared manifest.

    Args:
        manifest_path: ``<out>/<split>.json``.
        fields: which item fields to return (see ``KNOWN_FIELDS``); ``"image"`` is returned as a
            float32 tensor ``(1, D, H, W)`` in [0, 1], ``"masks"`` as ``{name: uint8 tensor (1, D, H, W)}``.
        transform: optional ``dict -> dict`` applied last (augmentation, tokenisation).
        require: fields every item must have; items without them are refused at construction
            (a dataset-level error, unlike an unreadable file, which is a per-sample error).
    """

    def __init__(
        self,
        manifest_path: str | Path,
        fields: Sequence[str] = ("image",),
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        require: Sequence[str] = (),
    ):
        self.manifest_path = Path(manifest_path)
        self.manifest = read_manifest(self.manifest_path)
        self.root = self.manifest_path.parent
        unknown = [f for f in fields if f not in KNOWN_FIELDS]
        if unknown:
            raise ValueError(f"{self.manifest_path}: unknown field(s) {unknown}; known: {', '.join(KNOWN_FIELDS)}")
        self.fields = tuple(fields)
        self.transform = transform
        self.items: list[dict[str, Any]] = self.manifest["items"]
        for name in require:
            missing = [it["id"] for it in self.items if name not in it]
            if missing:
                raise ValueError(
                    f"{self.manifest_path}: field '{name}' is missing in {len(missing)} item(s), e.g. {missing[:3]}"
                )

    def __len__(self) -> int:
        return len(self.items)

    def sample_path(self, index: int) -> str:
        """The file that identifies sample ``index`` in error reports (its image, else its id)."""
        item = self.items[index]
        return str(self.root / item["image"]) if "image" in item else f"{self.manifest_path}#{item['id']}"

    def load_item(self, index: int) -> dict[str, Any]:
        """Read the requested fields of item ``index`` (files memory-mapped and checked)."""
        import torch

        item = self.items[index]
        out: dict[str, Any] = {"id": item["id"]}
        for name in self.fields:
            if name == "image":
                if "image" not in item:
                    raise SampleError(self.sample_path(index), "item has no 'image'")
                out["image"] = torch.from_numpy(load_volume_npy(self.root / item["image"], as_float32=True))
            elif name == "masks":
                out["masks"] = {
                    k: torch.from_numpy(np.array(load_volume_npy(self.root / p, dtype=np.uint8, value_range=None)))
                    for k, p in item.get("masks", {}).items()
                }
            elif name != "id" and name in item:
                out[name] = item[name]
        return out

    def build_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """Turn the loaded fields into what the model's collator expects; subclasses override."""
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.build_item(self.load_item(index))
        return self.transform(item) if self.transform is not None else item
