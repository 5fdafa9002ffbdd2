"""CT-RATE (Hamamci et al., ``ibrahimhamamci/CT-RATE``): chest CT volumes, reports, 18 abnormality labels.

Raw layout (as downloaded; ``lamed download ct_rate``)::

    dataset/train_fixed/train_<P>/train_<P>_<S>/train_<P>_<S>_<R>.nii.gz   (or dataset/train/...)
    dataset/valid_fixed/valid_<P>/valid_<P>_<S>/valid_<P>_<S>_<R>.nii.gz   (or dataset/valid/...)
    dataset/radiology_text_reports/{train,validation}_reports.csv
        VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN
    dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv
        VolumeName, <18 abnormality columns of 0/1>
    dataset/metadata/{train,validation}_metadata.csv
        VolumeName, ..., RescaleSlope, RescaleIntercept, XYSpacing ("[0.7, 0.7]"), ZSpacing, ...

Written (HSENet / M3D recipes): the 3D volume with the ``hsenet`` preset (clip [-1000, 200] HU,
resample 1.5/0.75/0.75 mm, min-max, foreground crop, 32x256x256; ``--preset`` / ``--size`` for
others), ``text`` = Findings_EN (``--text findings_impressions`` adds the impression, as DCFormer),
``impression``, ``labels`` (positive abnormality names, for label-overlap volume-to-volume
retrieval) and ``label_vector`` (0/1 in the manifest's ``label_names`` order), the 32-slice stack
of the 2D branch (``slices``) and, with ``--slice-model``, its features (``slice_features``).

Splits: CT-RATE ``train`` -> ``train`` minus a patient-grouped ``validation`` hold-out
(``--val-fraction``, default 0.05), CT-RATE ``valid`` -> ``test`` (HSENet and Med3DVLM report on
it; ``--valid-as validation`` names it as HSENet's JSON does).

Gaps of the published scripts fixed here: the metadata rescale is applied only to volumes that need
it (``--hu-source auto``: the ``*_fixed`` volumes are already in HU with corrected geometry,
rescaling them again shifts every value by the intercept); no ``max_rows`` debug limits; the 2D
features are merged into the manifest (no script existed); 2D slices share the 3D branch's
orientation; failures are reported instead of printed and skipped.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np

from Data.common import (
    Case,
    Loaded,
    PrepareError,
    Preparer,
    check_npy,
    clean_text,
    find_files,
    hash_split,
    read_csv,
    volume_stem,
)

__all__ = ["ChestCTPreparer", "CTRatePreparer", "PREPARER", "CT_RATE_LABELS"]

# The 18 abnormality columns of CT-RATE's multi_abnormality_labels CSVs, in file order.
CT_RATE_LABELS = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
_PLAUSIBLE_MM = (0.05, 20.0)


def _float(row: dict, key: str, where: str) -> float:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: column {key!r} = {row.get(key)!r} is not a number") from None


def parse_xy_spacing(value: str, where: str) -> float:
    """CT-RATE's ``XYSpacing`` cell (``"[0.75, 0.75]"``) -> the in-plane spacing (mm)."""
    try:
        v = ast.literal_eval(str(value).strip())
        vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"{where}: XYSpacing {value!r} is not a number or a list of numbers") from None
    if not vals:
        raise ValueError(f"{where}: XYSpacing is empty")
    return vals[0]


class ChestCTPreparer(Preparer):
    """Shared by CT-RATE, BIMCV-R and RadGenome: HU volumes, the HSENet 2D slice branch and its features."""

    default_preset = "hsenet"
    extra_folders = ("slices", "slice_features")

    def add_slice_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--no-slices", action="store_true", help="skip the 2D slice branch (32 slices for HSENet's 2E3 encoder)"
        )
        parser.add_argument(
            "--slice-size", type=int, default=224, help="in-plane size of the stored slices (default 224)"
        )
        parser.add_argument(
            "--slice-model",
            default=None,
            help="open_clip model for the slice features: 'hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-"
            "vit_base_patch16_224' (HSENet), a local open_clip folder, or a config name "
            "(random weights). Default: slices only",
        )

    def dataset_params(self, args) -> dict:
        return {"slices": None if args.no_slices else int(args.slice_size)}

    @staticmethod
    def load_hu(load: dict) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Read the volume and bring it to HU with the metadata rescale when asked (see module doc)."""
        from LaMed.data.io import VolumeError, load_volume

        vol = load_volume(load["path"])
        arr, spacing = vol.array, tuple(vol.spacing)
        if load.get("rescale"):
            slope, inter = load["rescale"]
            if vol.meta.get("slope", 1.0) != 1.0 or vol.meta.get("inter", 0.0) != 0.0:
                raise VolumeError(
                    vol.path,
                    "the header already has a slope/intercept; refusing to apply the "
                    "metadata rescale on top (use --hu-source header)",
                )
            if slope == 1.0 and float(inter).is_integer():
                wide = arr.astype(np.int32) + int(inter)
                arr = wide.astype(np.int16) if wide.min() >= -32768 and wide.max() <= 32767 else wide
            else:
                arr = arr.astype(np.float32) * np.float32(slope) + np.float32(inter)
        if load.get("spacing"):
            spacing = tuple(float(s) for s in load["spacing"])
        if not all(_PLAUSIBLE_MM[0] <= s <= _PLAUSIBLE_MM[1] for s in spacing):
            raise VolumeError(
                vol.path, f"implausible voxel spacing {spacing} mm (D, H, W); the header or the metadata is corrupt"
            )
        return arr, spacing

    def load(self, case: dict) -> Loaded:
        arr, spacing = self.load_hu(case["load"])
        return Loaded(arr, spacing)

    def after_image(self, case, loaded, result, out, item) -> int:
        size = case["load"].get("slice_size")
        if not size:
            return 0
        from Data.slice_features import slice_stack
        from LaMed.data.prepared import save_npy_atomic

        stack = slice_stack(loaded.image, loaded.spacing, int(size))
        rel = f"slices/{case['id']}.npy"
        save_npy_atomic(out / rel, stack)
        item["slices"] = rel
        return 1

    def finish(self, out: Path, args, cases: list[Case], summary) -> None:
        if not getattr(args, "slice_model", None) or args.no_slices:
            return
        import json

        from Data.slice_features import load_slice_encoder
        from LaMed.data.prepare import record_path
        from LaMed.data.prepared import save_npy_atomic, write_json_atomic

        encoder = load_slice_encoder(args.slice_model)
        if encoder.random_weights:
            print(f"warning: slice model {encoder.name}: features of an untrained model (tests / dry runs only)")
        todo = []
        for c in cases:
            p = record_path(out, c.id)
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue  # the case failed; already in the error report
            item = rec["item"]
            if "slices" not in item:
                continue
            feat = out / "slice_features" / f"{c.id}.npy"
            if not args.overwrite and item.get("slice_model") == encoder.name and feat.is_file():
                continue
            todo.append((p, rec))
        from tqdm.auto import tqdm

        for p, rec in tqdm(todo, desc="slice features", unit="vol", disable=True if args.no_progress else None):
            item = rec["item"]
            try:
                stack = np.load(out / item["slices"], allow_pickle=False)
                feats = encoder(stack).astype(np.float32)
                rel = f"slice_features/{item['id']}.npy"
                save_npy_atomic(out / rel, feats)
            except Exception as exc:
                summary.errors.append(
                    {"file": str(out / item["slices"]), "error": f"slice features: {type(exc).__name__}: {exc}"}
                )
                continue
            for key, val in (("slice_features", rel), ("slice_model", encoder.name)):
                item[key] = val
                if key not in rec.setdefault("computed_keys", []):
                    rec["computed_keys"].append(key)
            write_json_atomic(p, rec)

    def manifest_extra(self, args) -> dict:
        extra = {}
        if getattr(self, "_label_names", None):
            extra["label_names"] = list(self._label_names)
        if not args.no_slices:
            extra["slices"] = {
                "count": 32,
                "size": int(args.slice_size),
                "window_hu": [-1000, 1000],
                "spacing_mm": [1.5, 0.75, 0.75],
            }
        if getattr(args, "slice_model", None):
            extra["slice_model"] = args.slice_model
        return extra

    def check_item(self, root: Path, item: dict) -> list[str]:
        problems = []
        if "slices" in item:
            p = check_npy(root, item["slices"], (32, None, None), np.uint8)
            if p:
                problems.append(p)
        if "slice_features" in item:
            p = check_npy(root, item["slice_features"], (32, None), np.float32)
            if p:
                problems.append(p)
        if (
            "label_vector" in item
            and getattr(self, "_label_names", None)
            and len(item["label_vector"]) != len(self._label_names)
        ):
            problems.append(f"label_vector has {len(item['label_vector'])} entries, expected {len(self._label_names)}")
        return problems


class CTRatePreparer(ChestCTPreparer):
    name = "ct_rate"
    title = "CT-RATE"
    raw_layout = (
        "dataset/{train,valid}[_fixed]/**/<VolumeName>.nii.gz + dataset/radiology_text_reports/*.csv + "
        "dataset/multi_abnormality_labels/*.csv + dataset/metadata/*.csv"
    )
    has_splits = True

    def add_dataset_arguments(self, parser) -> None:
        parser.add_argument(
            "--text",
            choices=("findings", "findings_impressions"),
            default="findings",
            help="report text: Findings_EN (HSENet, default) or findings + impression (DCFormer)",
        )
        parser.add_argument(
            "--valid-as",
            choices=("test", "validation"),
            default="test",
            help="split name of CT-RATE's 'valid' set (default test)",
        )
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=0.05,
            help="fraction of training patients held out as 'validation' (default 0.05; 0 = none)",
        )
        parser.add_argument(
            "--hu-source",
            choices=("auto", "metadata", "header"),
            default="auto",
            help="how to get HU: metadata CSV rescale + spacing (original volumes), the NIfTI "
            "header (the *_fixed volumes), or auto (header for *_fixed, else metadata)",
        )
        self.add_slice_arguments(parser)

    def dataset_params(self, args) -> dict:
        return {**super().dataset_params(args), "hu_source": args.hu_source}

    @staticmethod
    def _pick(csvs: dict[str, list[Path]], names) -> Path | None:
        for n in names:
            if n in csvs:
                return sorted(csvs[n], key=lambda p: len(p.parts))[0]
        return None

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        vols = find_files(src, (".nii.gz", ".nii"))
        csvs = find_files(src, (".csv",))
        split_files = {
            "train": (
                ("train_reports.csv",),
                ("train_predicted_labels.csv", "dataset_multi_abnormality_labels_train_predicted_labels.csv"),
                ("train_metadata.csv",),
            ),
            "valid": (
                ("validation_reports.csv", "valid_reports.csv"),
                ("valid_predicted_labels.csv", "dataset_multi_abnormality_labels_valid_predicted_labels.csv"),
                ("validation_metadata.csv", "valid_metadata.csv"),
            ),
        }
        if not any(self._pick(csvs, names[0]) for names in split_files.values()):
            raise PrepareError(
                f"{src}: no CT-RATE report CSV found (expected dataset/radiology_text_reports/"
                f"train_reports.csv and/or validation_reports.csv)"
            )
        cases: list[Case] = []
        errors: list[dict] = []
        self._label_names = None
        for ct_split, (rep_names, lab_names, meta_names) in split_files.items():
            rep_path = self._pick(csvs, rep_names)
            if rep_path is None:
                continue
            reports = read_csv(rep_path, ["VolumeName", "Findings_EN"])
            labels = self._read_labels(self._pick(csvs, lab_names))
            meta_path = self._pick(csvs, meta_names)
            meta = {r["VolumeName"]: r for r in read_csv(meta_path, ["VolumeName"])} if meta_path else {}
            present = {n for n in vols if n.startswith(f"{ct_split}_")}
            if not present:
                print(
                    f"note: no {ct_split} volume found under {src}; the {rep_path.name} rows are skipped "
                    f"(not downloaded?)"
                )
                continue
            seen = set()
            for i, row in enumerate(reports):
                where = f"{rep_path}: row {i + 2}"
                vname = (row.get("VolumeName") or "").strip()
                if not vname:
                    errors.append({"file": str(rep_path), "error": f"row {i + 2}: empty VolumeName"})
                    continue
                fname = vname if vname.endswith((".nii.gz", ".nii")) else vname + ".nii.gz"
                seen.add(fname)
                paths = vols.get(fname)
                if not paths:
                    errors.append({"file": fname, "error": f"{where}: volume {fname} not found under {src}"})
                    continue
                # Prefer the corrected copy when both the original and the *_fixed volume exist.
                path = sorted(paths, key=lambda p: (not any(part.endswith("_fixed") for part in p.parts), str(p)))[0]
                load = {"path": str(path), "slice_size": None if args.no_slices else int(args.slice_size)}
                use_meta = args.hu_source == "metadata" or (
                    args.hu_source == "auto" and not any(part.endswith("_fixed") for part in path.parts)
                )
                if use_meta:
                    m = meta.get(vname) or meta.get(volume_stem(vname) + ".nii.gz")
                    if m is None:
                        errors.append(
                            {
                                "file": str(path),
                                "error": f"no row for {vname} in the metadata CSV "
                                f"({meta_path or 'not found'}), needed for HU and spacing",
                            }
                        )
                        continue
                    try:
                        mw = f"{meta_path}: {vname}"
                        load["rescale"] = [_float(m, "RescaleSlope", mw), _float(m, "RescaleIntercept", mw)]
                        xy = parse_xy_spacing(m.get("XYSpacing"), mw)
                        load["spacing"] = [_float(m, "ZSpacing", mw), xy, xy]
                    except ValueError as exc:
                        errors.append({"file": str(path), "error": str(exc)})
                        continue
                findings = clean_text(row.get("Findings_EN"))
                impression = clean_text(row.get("Impressions_EN"))
                text = findings if args.text == "findings" else " ".join(t for t in (findings, impression) if t)
                item = {}
                if text:
                    item["text"] = text
                if impression:
                    item["impression"] = impression
                lab = labels.get(vname) if labels is not None else None
                if lab is not None:
                    item["labels"] = [n for n, v in zip(self._label_names, lab) if v]
                    item["label_vector"] = lab
                parts = volume_stem(vname).split("_")
                patient = "_".join(parts[:2])
                if ct_split == "valid":
                    split = args.valid_as
                else:
                    split = hash_split(patient, args.seed, args.val_fraction, 0.0) if args.val_fraction > 0 else "train"
                cases.append(Case(volume_stem(vname), split, str(path), [str(path)], load, item))
            for fname in sorted(present - seen):
                errors.append({"file": str(vols[fname][0]), "error": f"no report row in {rep_path.name}"})
        return cases, errors

    def _read_labels(self, path: Path | None) -> dict[str, list[int]] | None:
        if path is None:
            return None
        rows = read_csv(path, ["VolumeName"])
        import csv

        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f))
        names = [h for h in header if h != "VolumeName"]
        if self._label_names is None:
            self._label_names = names
        elif names != list(self._label_names):
            raise PrepareError(
                f"{path}: label columns differ from the other labels CSV ({names} vs {self._label_names})"
            )
        out = {}
        for i, r in enumerate(rows):
            try:
                out[r["VolumeName"].strip()] = [int(float(r[n])) for n in names]
            except (TypeError, ValueError):
                raise PrepareError(
                    f"{path}: row {i + 2}: label values must be 0/1, got {[r.get(n) for n in names]}"
                ) from None
        return out


PREPARER = CTRatePreparer()
