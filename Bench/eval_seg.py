"""Evaluate segmentation masks against the manifest's ``masks``.

Predictions (``--predictions`` is a folder), one of, per item:

* ``<id>_<structure>.npy`` -- ``(D, H, W)`` or ``(1, D, H, W)`` in the prepared (canonical) grid;
  boolean/integer = a binary mask; float = probabilities (``--logits``: logits), thresholded at
  ``--threshold`` for the hard metrics and used as is for M3D's soft Dice;
* ``<id>_<structure>.nii`` / ``.nii.gz`` -- read with SimpleITK and reoriented to LPS, so that the
  array is canonical (D, H, W);
* ``<id>.npz`` with ``segs`` (BiomedSegFM style label map): label ``k`` is the k-th structure of
  the item's ``masks`` (1-based, manifest order).

A structure with no prediction counts as an empty prediction (``missing`` = 1). An item may list
structures absent from its volume (``"absent": ["spleen"]``, e.g. after a splenectomy): they were
prompted too, their ground truth is empty, and an empty prediction is the right answer; the
per-class and overall Dice / NSD / HD95 are over the present structures only.
Detection over all (item, structure) prompts -- precision, recall, F1, and Dice on the true
positives (``LaMed.metrics.segmentation.detection_scores``, the BiomedSegFM definitions) -- is in
the summary's ``detection``; per row ``gt_present`` / ``pred_present``. Per sample:
``dice``, ``nsd`` (tolerance ``--tolerance-mm``), ``hd95`` (mm; inf when one mask is empty),
``soft_dice_m3d`` (M3D's soft Dice, probability/logit predictions only) and, for structures listed
in ``--instance-classes``, lesion-level ``instance_f1``. Spacing is the item's ``spacing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from Bench.common import BenchError, aggregate, base_parser, item_dataset, load_manifest, write_outputs

METRICS = ["dice", "nsd", "hd95", "soft_dice_m3d", "instance_f1", "missing"]


def _squeeze(arr: np.ndarray) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _read_nifti(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    img = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    return sitk.GetArrayFromImage(img)  # (z, y, x) of an LPS image = canonical (D, H, W)


def _find_prediction(folder: Path, item_id: str, structure: str, labels: list[str]):
    for ext in (".npy", ".nii.gz", ".nii"):
        f = folder / f"{item_id}_{structure}{ext}"
        if f.is_file():
            return _squeeze(np.load(f) if ext == ".npy" else _read_nifti(f)), f
    f = folder / f"{item_id}.npz"
    if f.is_file():
        with np.load(f) as z:
            if "segs" not in z:
                raise BenchError(f"{f}: npz prediction must hold the key 'segs'")
            segs = _squeeze(z["segs"])
        return (segs == labels.index(structure) + 1).astype(np.uint8), f
    return None, None


def evaluate_seg(
    predictions: str,
    manifest: str,
    tolerance_mm: float = 2.0,
    threshold: float = 0.5,
    logits: bool = False,
    instance_classes: Sequence[str] = (),
) -> tuple[dict, list[dict]]:
    """Score a folder of predicted masks; returns ``(summary, per_sample_rows)``."""
    from LaMed.metrics import segmentation as S

    man = load_manifest(manifest)
    folder = Path(predictions)
    if not folder.is_dir():
        raise BenchError(f"{folder}: predictions must be a folder of masks")
    rows = []
    for item in man["items"]:
        masks = item.get("masks") or {}
        labels = list(masks) + list(item.get("absent") or [])  # npz label k = k-th of these
        spacing = item.get("spacing")
        if masks and (not isinstance(spacing, list) or len(spacing) != 3):
            raise BenchError(f"{man['_path']}: item {item['id']!r} needs 'spacing' [d, h, w] in mm")
        absent = item.get("absent") or []
        if not isinstance(absent, list) or not all(isinstance(a, str) for a in absent):
            raise BenchError(f"{man['_path']}: item {item['id']!r}: 'absent' must be a list of structure names")
        if absent and not masks:
            raise BenchError(
                f"{man['_path']}: item {item['id']!r} lists 'absent' structures but no 'masks' "
                "(one is needed for the volume's shape)"
            )
        clash = sorted(set(absent) & set(masks))
        if clash:
            raise BenchError(f"{man['_path']}: item {item['id']!r}: {clash} both in 'masks' and 'absent'")
        shape = None
        for structure, rel in list(masks.items()) + [(a, None) for a in absent]:
            if rel is None:
                gt = np.zeros(shape, bool)
            else:
                gt_path = man["_root"] / rel
                if not gt_path.is_file():
                    raise BenchError(f"{man['_path']}: mask {rel!r} of item {item['id']!r} not found at {gt_path}")
                gt = _squeeze(np.load(gt_path, mmap_mode="r")) != 0
                shape = gt.shape
            pred, src = _find_prediction(folder, item["id"], structure, labels)
            row = {
                "id": item["id"],
                "dataset": item_dataset(man, item),
                "class": structure,
                "prediction_file": str(src) if src else "",
            }
            if pred is None:
                pred, row["missing"] = np.zeros(gt.shape, bool), 1.0
            else:
                row["missing"] = 0.0
            if pred.shape != gt.shape:
                raise BenchError(
                    f"{src}: prediction shape {pred.shape} differs from the ground truth {gt.shape} "
                    f"(item {item['id']!r}, {structure!r})"
                )
            if np.issubdtype(pred.dtype, np.floating) and src is not None:
                row["soft_dice_m3d"] = S.m3d_soft_dice(pred, gt, from_logits=logits)
                prob = 0.5 * (1.0 + np.tanh(0.5 * pred)) if logits else pred  # overflow-free sigmoid
                binary = prob > threshold
            else:
                binary = pred != 0
            row["dice"] = S.dice(binary, gt)
            row["nsd"] = S.nsd(binary, gt, spacing, tolerance_mm)
            row["hd95"] = S.hd95(binary, gt, spacing)
            if structure in instance_classes:
                row["instance_f1"] = S.instance_f1(binary, gt)["f1"]
            row["gt_present"], row["pred_present"] = float(gt.any()), float(binary.any())
            rows.append(row)
    if not rows:
        raise BenchError(f"{man['_path']}: no item has 'masks' to evaluate")
    # Dice, NSD and HD95 describe a structure that is there: absent prompts are scored by detection only
    # (their rows stay in per_sample, with Dice 1 for an empty prediction and 0 for a false mask).
    present_rows = [r for r in rows if r["gt_present"] > 0]
    if not present_rows:
        raise BenchError(f"{man['_path']}: every prompted structure is absent; nothing to score Dice on")
    summary = aggregate(present_rows, METRICS, class_field="class")
    summary["detection"] = S.detection_scores(
        [r["pred_present"] > 0 for r in rows], [r["gt_present"] > 0 for r in rows], [r["dice"] for r in rows]
    )
    summary.update(
        {
            "task": "segmentation",
            "manifest": str(man["_path"]),
            "predictions": str(folder),
            "counts": {"evaluated": len(rows), "missing_predictions": int(sum(r["missing"] for r in rows))},
            "unavailable": {},
            "settings": {
                "tolerance_mm": tolerance_mm,
                "threshold": threshold,
                "logits": logits,
                "empty": "both empty: dice = nsd = 1, hd95 = 0; one empty: dice = nsd = 0, hd95 = inf",
                "instance_classes": list(instance_classes),
            },
        }
    )
    return summary, rows


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser("Segmentation metrics (Dice, NSD, HD95, instance F1, M3D soft Dice)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for float predictions")
    p.add_argument("--logits", action="store_true", help="float predictions are logits (sigmoid applied)")
    p.add_argument("--instance-classes", default="", help="comma-separated structures scored with instance F1")
    a = p.parse_args(argv)
    classes = [c for c in a.instance_classes.split(",") if c]
    summary, rows = evaluate_seg(a.predictions, a.manifest, a.tolerance_mm, a.threshold, a.logits, classes)
    write_outputs(
        a.out, summary, rows, ["id", "dataset", "class"] + METRICS + ["prediction_file"], METRICS[:5], "Segmentation"
    )
    return summary


if __name__ == "__main__":
    main()
