"""CVPR 2025 BiomedSegFM (``junma/CVPR-BiomedSegFM``): text-prompted 3D segmentation (Text3DSAM's data).

Raw layout::

    3D_train_npz_all/<modality>/<dataset>/<case>.npz     imgs (D, H, W), gts (D, H, W) int labels, spacing
    CVPR25_TextSegFMData_with_class.json                  {<dataset>: {"<class id>": [prompt, ...], ...,
                                                           "instance_label": 0 | 1}}
    3D_val_npz/<case>.npz                                 imgs, spacing, text_prompts {"<class id>": prompt,
                                                           "instance_label": 0 | 1}
    3D_val_gt/3D_val_gt_text/<case>.npz                   gts

Written (Text3DSAM recipe): the image through the ``biomedsegfm`` preset (min-max, no crop, whole
volume resized to 128x256x256; masks nearest), one mask per class that is present in ``gts`` and
has prompts (``class_<id>``; instance datasets: the union of all instances as ``class_1``), and
``refer`` = every prompt variant of each class (the training sampler picks one at random).
``modality`` and ``source_dataset`` are kept per item. Splits: the training npz files ->
``train`` (``--val-fraction`` holds out cases), the validation npz with their ground truth ->
``validation``.

Gaps fixed: the npz ``spacing`` is read in its stored (x, y, z) order and reported in (D, H, W)
(Text3DSAM ignores it); the image is min-max normalised to [0, 1] (Text3DSAM feeds the raw values);
classes without prompts and prompts without a class in the volume are reported per case in
``classes_without_prompt``, not silently dropped; a corrupt npz is reported, not retried with
another random file; the validation files' pickled ``text_prompts`` are read without unpickling
(:mod:`Data.npz_objects`), so a crafted file cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from Data.common import Case, Loaded, PrepareError, Preparer, clean_text, hash_split, safe_name
from Data.npz_objects import UnsafeObjectArray, read_object_array

__all__ = ["BiomedSegFMPreparer", "PREPARER"]


def _register_presets() -> None:
    from LaMed.data.presets import Preset, list_presets, register_preset

    if "biomedsegfm" not in list_presets():
        register_preset(
            Preset(
                "biomedsegfm",
                (128, 256, 256),
                window=None,
                normalize="minmax",
                crop_foreground=False,
                description="Text3DSAM on CVPR-BiomedSegFM: min-max -> whole-volume trilinear resize to 128x256x256 "
                "(no crop); masks nearest.",
            )
        )


_register_presets()


def _prompts(v) -> list[str]:
    if isinstance(v, str):
        return [clean_text(v)] if clean_text(v) else []
    if isinstance(v, (list, tuple)):
        return [clean_text(x) for x in v if clean_text(x)]
    return []


class BiomedSegFMPreparer(Preparer):
    name = "biomedsegfm"
    title = "CVPR-BiomedSegFM"
    raw_layout = (
        "3D_train_npz_all/<modality>/<dataset>/*.npz + CVPR25_TextSegFMData_with_class.json [+ 3D_val_npz, 3D_val_gt]"
    )
    default_preset = "biomedsegfm"
    has_splits = True

    def add_dataset_arguments(self, parser) -> None:
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=0.0,
            help="fraction of training cases held out as validation (default 0)",
        )
        parser.add_argument("--modalities", nargs="+", default=None, help="only these modality folders (e.g. CT MRI)")

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        cases, errors = [], []
        pj = next(iter(sorted(src.rglob("CVPR25_TextSegFMData_with_class.json"))), None)
        prompts: dict[str, dict] = {}
        if pj is not None:
            try:
                prompts = json.loads(pj.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise PrepareError(f"{pj}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        train_root = next(iter(sorted(src.rglob("3D_train_npz_all"))), None)
        if train_root is not None:
            if pj is None:
                raise PrepareError(f"{src}: training npz files but no CVPR25_TextSegFMData_with_class.json prompt file")
            for f in sorted(train_root.rglob("*.npz")):
                rel = f.relative_to(train_root).parts
                modality, dataset = (
                    (rel[0], rel[1]) if len(rel) >= 3 else ("unknown", rel[0] if len(rel) == 2 else "unknown")
                )
                if args.modalities and modality not in args.modalities:
                    continue
                spec = prompts.get(dataset)
                if spec is None:
                    errors.append({"file": str(f), "error": f"dataset {dataset!r} has no entry in {pj.name}"})
                    continue
                classes = {k: _prompts(v) for k, v in spec.items() if k != "instance_label"}
                split = (
                    hash_split(f"{dataset}/{f.stem}", args.seed, args.val_fraction, 0.0)
                    if args.val_fraction > 0
                    else "train"
                )
                cases.append(
                    self._case(f, None, split, classes, int(spec.get("instance_label", 0) or 0), modality, dataset)
                )
        val_root = next(iter(sorted(src.rglob("3D_val_npz"))), None)
        if val_root is not None:
            gt_dir = next(iter(sorted(src.rglob("3D_val_gt_text"))), None)
            for f in sorted(val_root.glob("*.npz")):
                gt = gt_dir / f.name if gt_dir is not None else None
                if gt is None or not gt.is_file():
                    errors.append({"file": str(f), "error": "no ground truth in 3D_val_gt/3D_val_gt_text"})
                    continue
                try:
                    # never np.load(allow_pickle=True): a crafted text_prompts pickle would run code
                    tp = read_object_array(f, "text_prompts")
                except KeyError:
                    tp = None
                except UnsafeObjectArray as exc:
                    errors.append({"file": str(f), "error": f"refused text_prompts: {exc}"})
                    continue
                except Exception as exc:
                    errors.append({"file": str(f), "error": f"cannot read text_prompts ({type(exc).__name__}: {exc})"})
                    continue
                if not isinstance(tp, dict):
                    errors.append({"file": str(f), "error": "no 'text_prompts' dict in the npz"})
                    continue
                classes = {str(k): _prompts(v) for k, v in tp.items() if k != "instance_label"}
                cases.append(
                    self._case(f, gt, "validation", classes, int(tp.get("instance_label", 0) or 0), "val", "val")
                )
        if not cases and not errors:
            raise PrepareError(f"{src}: no 3D_train_npz_all/ or 3D_val_npz/ folder with .npz files found")
        return cases, errors

    def _case(self, f: Path, gt, split, classes, instance, modality, dataset) -> Case:
        ld = {"npz": str(f), "gt": str(gt) if gt else None, "classes": sorted(classes), "instance": instance}
        refer = [{"text": p, "target": f"class_{k}"} for k in sorted(classes) for p in classes[k]]
        item = {"modality": modality, "source_dataset": dataset}
        if refer:
            item["refer"] = refer
        inputs = [str(f)] + ([str(gt)] if gt else [])
        return Case(f"{safe_name(dataset)}_{safe_name(f.stem)}", split, str(f), inputs, ld, item)

    def load(self, case: dict) -> Loaded:
        from LaMed.data.io import load_mask, load_volume

        ld = case["load"]
        vol = load_volume(ld["npz"], key="imgs")
        if ld["gt"]:
            # The separate ground-truth file may carry no spacing: compare the grids by shape.
            from LaMed.data.io import VolumeError

            gts = load_volume(ld["gt"], key="gts").array
            if gts.shape != vol.shape:
                raise VolumeError(ld["gt"], f"mask grid differs from its image {ld['npz']}: {gts.shape} vs {vol.shape}")
        else:
            gts = load_mask(ld["npz"], vol, key="gts").array
        present = sorted(int(v) for v in np.unique(gts) if v != 0)
        masks = {}
        if ld["instance"]:
            if present:
                masks["class_1"] = (gts > 0).astype(np.uint8)
        else:
            for k in ld["classes"]:
                if int(k) in present:
                    masks[f"class_{k}"] = (gts == int(k)).astype(np.uint8)
        item = {"labels": sorted(masks)}
        orphans = [v for v in present if str(v) not in ld["classes"]] if not ld["instance"] else []
        if orphans:
            item["classes_without_prompt"] = orphans
        return Loaded(vol.array, tuple(vol.spacing), masks, item)


PREPARER = BiomedSegFMPreparer()
