"""M3D-Seg (``GoodBaiBai88/M3D-Seg``): 25 public segmentation datasets in SegVol's processed format.

Raw layout (one folder a source dataset, codes ``0000`` .. ``0024``)::

    <code>/<code>.json                  decathlon style: "labels" {"0": "background", "1": "liver", ...},
                                         "train" / "test" [{"image": ..., "label": ...}], "numTraining" | "numTrain"
    <code>/<case>/image.npy             (1, X, Y, Z) float, foreground z-scored by SegVol
    <code>/<case>/mask_(C, X, Y, Z).npz scipy.sparse CSR of the one-hot labels reshaped to (C, X*Y*Z);
                                         the shape is only in the file name

Processing (M3D ``m3d_seg_data_prepare.py``): ``swapaxes(-1, -3)`` -> (Z, Y, X), then the
``m3d_seg_npy`` preset: min-max, foreground crop, resize to 32x256x256 (trilinear image, nearest
masks). One item per case with one mask per class present (``masks``), their boxes on the output
grid, ``labels`` (class names present) and ``refer`` (the class name as the referring text, for
the Seg / PosREC / PosREG tasks that template it). Splits: the JSON's ``train`` / ``test`` (the
8:2 split of SegVol), ``--val-fraction`` carves a validation set out of train.

Gaps fixed: absent classes are left out (M3D writes a (1, 1, 1, 1) zero array for each, which
breaks any shape check); the sparse mask's shape is checked against the image's; ``numTraining``
vs ``numTrain`` does not matter; class channel ``c`` is label ``c + 1`` (background not stored) or
``c`` when the file stores the background channel too; ``--codes`` picks datasets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from Data.common import Case, Loaded, PrepareError, Preparer, hash_split, metadata_path_ok, safe_name

__all__ = ["M3DSegPreparer", "PREPARER", "load_sparse_mask"]

_SHAPE_RE = re.compile(r"mask_\(([\d,\s]+)\)\.npz$")


def _register_presets() -> None:
    from LaMed.data.presets import Preset, list_presets, register_preset

    if "m3d_seg_npy" not in list_presets():
        register_preset(
            Preset(
                "m3d_seg_npy",
                (32, 256, 256),
                window=None,
                normalize="minmax",
                description=(
                    "M3D-Seg from SegVol's z-scored arrays: min-max -> CropForeground (>0) -> resize "
                    "32x256x256 (trilinear image, nearest masks)."
                ),
            )
        )


_register_presets()


def load_sparse_mask(path: str | Path) -> np.ndarray:
    """SegVol's ``mask_(C, X, Y, Z).npz`` -> dense ``(C, X, Y, Z)`` bool."""
    import scipy.sparse

    path = Path(path)
    m = _SHAPE_RE.search(path.name)
    if not m:
        raise ValueError(f"{path}: expected a file name 'mask_(C, X, Y, Z).npz' carrying the mask shape")
    shape = tuple(int(v) for v in m.group(1).split(","))
    try:
        sp = scipy.sparse.load_npz(str(path))
    except Exception as exc:  # zipfile / ValueError / KeyError depending on the damage
        raise ValueError(f"{path}: not a readable scipy sparse .npz ({type(exc).__name__}: {exc})") from None
    if sp.shape[0] != shape[0] or sp.shape[1] != int(np.prod(shape[1:])):
        raise ValueError(f"{path}: sparse matrix {sp.shape} does not match the shape {shape} in the file name")
    return sp.toarray().reshape(shape) != 0


class M3DSegPreparer(Preparer):
    name = "m3d_seg"
    title = "M3D-Seg"
    raw_layout = "<code>/<code>.json + <code>/<case>/image.npy + mask_(C, X, Y, Z).npz"
    default_preset = "m3d_seg_npy"
    has_splits = True

    def add_dataset_arguments(self, parser) -> None:
        parser.add_argument("--codes", nargs="+", default=None, help="only these dataset codes (e.g. 0000 0011)")
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=0.0,
            help="fraction of each dataset's training cases held out as validation (default 0)",
        )

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        specs = sorted(p for p in src.glob("*/*.json") if p.stem == p.parent.name)
        if args.codes:
            specs = [p for p in specs if p.stem in set(args.codes)]
        if not specs:
            raise PrepareError(f"{src}: no M3D-Seg dataset found (expected <code>/<code>.json, e.g. 0000/0000.json)")
        cases, errors = [], []
        for spec_path in specs:
            code = spec_path.stem
            try:
                spec = json.loads(spec_path.read_text(encoding="utf-8"))
                labels = {int(k): str(v) for k, v in spec["labels"].items()}
            except (json.JSONDecodeError, KeyError, AttributeError, ValueError) as exc:
                errors.append({"file": str(spec_path), "error": f"expected a decathlon JSON with 'labels' ({exc})"})
                continue
            for key in ("train", "test", "validation"):
                for k, e in enumerate(spec.get(key) or []):
                    img = self._resolve(src, spec_path.parent, e.get("image") if isinstance(e, dict) else None)
                    lab = self._resolve(src, spec_path.parent, e.get("label") if isinstance(e, dict) else None)
                    if img is None or lab is None:
                        errors.append(
                            {"file": str(spec_path), "error": f"{key}[{k}]: image or label file not found ({e})"}
                        )
                        continue
                    case_name = img.parent.name
                    split = "test" if key == "test" else ("validation" if key == "validation" else "train")
                    if split == "train" and args.val_fraction > 0:
                        split = hash_split(f"{code}/{case_name}", args.seed, args.val_fraction, 0.0)
                    cases.append(
                        Case(
                            f"{code}_{safe_name(case_name)}",
                            split,
                            str(img),
                            [str(img), str(lab)],
                            {
                                "image": str(img),
                                "label": str(lab),
                                "labels": {str(i): n for i, n in labels.items()},
                                "code": code,
                            },
                            {"dataset_code": code},
                        )
                    )
        return cases, errors

    @staticmethod
    def _resolve(src: Path, code_dir: Path, rel) -> Path | None:
        if not rel or not metadata_path_ok(rel):
            return None
        for base in (src, code_dir, code_dir.parent, src.parent):
            p = base / str(rel)
            if p.is_file():
                return p
        return None

    def load(self, case: dict) -> Loaded:
        ld = case["load"]
        img = np.load(ld["image"], allow_pickle=False)
        if img.ndim == 4 and img.shape[0] == 1:
            img = img[0]
        if img.ndim != 3:
            raise ValueError(f"{ld['image']}: expected (1, X, Y, Z), got {img.shape}")
        mask = load_sparse_mask(ld["label"])
        if tuple(mask.shape[1:]) != img.shape:
            raise ValueError(f"{ld['label']}: mask grid {mask.shape[1:]} differs from its image {img.shape}")
        labels = {int(k): v for k, v in ld["labels"].items()}
        named = [i for i in sorted(labels) if i != 0 and labels[i].lower() != "background"]
        offset = 0 if mask.shape[0] == len(labels) and 0 in labels else 1
        if offset == 1 and mask.shape[0] > len(named):
            raise ValueError(
                f"{ld['label']}: {mask.shape[0]} mask channels but only {len(named)} class names in the JSON"
            )
        image = np.swapaxes(img, -1, -3).astype(np.float32)  # (X, Y, Z) -> (Z, Y, X), as M3D
        masks, names = {}, {}
        for c in range(mask.shape[0]):
            label = c + offset
            if label == 0 or label not in labels:
                continue
            m = np.swapaxes(mask[c], -1, -3)
            if m.any():
                key = safe_name(labels[label])
                masks[key] = m.astype(np.uint8)
                names[key] = labels[label]
        return Loaded(
            image,
            (1.0, 1.0, 1.0),
            masks,
            {"labels": [names[k] for k in masks], "refer": [{"text": names[k], "target": k} for k in masks]},
        )


PREPARER = M3DSegPreparer()
