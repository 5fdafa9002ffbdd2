"""Writers of tiny fake raw copies of the public datasets, in their exact raw layouts (helpers only)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

SIZE = ["--size", "8", "32", "32"]  # small outputs keep every preparer test fast


def write_nifti(path: Path, arr_dhw: np.ndarray, spacing=(3.0, 1.5, 1.5), dtype=np.int16, affine_diag=True) -> Path:
    """A canonical (D, H, W) = (S, P, L) array written as a RAS NIfTI (x, y, z), as scanners export."""
    import nibabel as nib

    data = np.ascontiguousarray(np.asarray(arr_dhw).transpose(2, 1, 0)[::-1, ::-1, :]).astype(dtype)
    sd, sh, sw = spacing
    img = nib.Nifti1Image(data, np.diag([sw, sh, sd, 1.0]))
    img.header.set_data_dtype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r)
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def chest_hu(seed: int, shape=(8, 24, 24)) -> np.ndarray:
    """A small chest-like HU volume: air outside, soft tissue body, two air lungs, a dense spot."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    hu = np.full(shape, -1000, np.int16)
    hu[1 : d - 1, 3 : h - 3, 3 : w - 3] = 40
    hu[1 : d - 1, 6 : h - 6, 5 : w // 2 - 1] = -850
    hu[1 : d - 1, 6 : h - 6, w // 2 + 1 : w - 5] = -850
    hu[d // 2, h // 2, w // 2] = 700 + 10 * seed
    return (hu + rng.integers(-20, 20, size=shape)).astype(np.int16)


def corrupt_gz(path: Path) -> Path:
    """A file named like a volume whose bytes are not one (gzip magic, then garbage)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x1f\x8b" + b"not a volume" * 10)
    return path


def manifest(out: Path, split: str) -> dict:
    return json.loads((Path(out) / f"{split}.json").read_text(encoding="utf-8"))


def items_by_id(out: Path) -> dict:
    res = {}
    for p in Path(out).glob("*.json"):
        if p.name in ("errors.json", "dataset.json"):
            continue
        m = json.loads(p.read_text(encoding="utf-8"))
        for it in m["items"]:
            res[it["id"]] = dict(it, _split=m["split"])
    return res


def errors(out: Path) -> list:
    p = Path(out) / "errors.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else []


def expected_image(preset_name: str, image: np.ndarray, spacing, size=(8, 32, 32), masks=None) -> dict:
    """What the prepared files must hold: the named preset (at the test size) on the raw array."""
    import dataclasses

    from LaMed.data.transforms import apply_preset, get_preset

    p = dataclasses.replace(get_preset(preset_name), size=tuple(size))
    return apply_preset(p, np.asarray(image), spacing, masks)


def tiny_open_clip_folder(folder: Path, image_size: int = 16) -> Path:
    """An open_clip model folder in BiomedCLIP's published layout (``open_clip_config.json`` +
    ``open_clip_pytorch_model.bin``) holding a tiny random CLIP."""
    import open_clip
    import torch

    model_cfg = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": image_size, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}),
        encoding="utf-8",
    )
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
