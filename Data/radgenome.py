"""RadGenome-ChestCT (``RadGenome/RadGenome-ChestCT``): region-grounded reports and VQA on CT-RATE volumes.

Raw layout::

    dataset/{train,valid}_preprocessed/<split>_<P>/<split>_<P><S>/<VolumeName>.nii.gz
    dataset/radgenome_files/{train,validation}_region_report.csv   Volumename, Anatomy, Sentence
    dataset/radgenome_files/{train,validation}_vqa_location.csv    Volumename, Anatomy, Abnormality
    dataset/radgenome_files/{train,validation}_vqa_abnormality.csv Volumename, Anatomy, Abnormality
    dataset/radgenome_files/{train,validation}_vqa_presence.csv    Volumename, Anatomy, Finding, Presence
    dataset/radgenome_files/{train,validation}_vqa_size.csv        Volumename, Anatomy, Abnormality, Size
    (an empty Anatomy means the whole scan)

Written (HSENet's RadGenome VQA recipe, no published converter existed): the volume as CT-RATE's
(``hsenet`` preset, HU from the header; ``--metadata`` takes CT-RATE's metadata CSVs for volumes
whose header lacks the rescale), the 2D slice branch, ``findings`` {anatomy: sentences} and
``text`` (all region sentences), and ``vqa``:

* ``location`` (HSENet's task): a ``RADGENOME_TEMPLATES`` question about the abnormality (one
  template per question, drawn with ``--seed``), answer = the anatomy, open;
* ``abnormality``: "What abnormality is seen in the {anatomy}?" -> the abnormality, open;
* ``presence``: "Is there {finding} in the {anatomy}?" -> yes / no;
* ``size``: "What is the size of the {abnormality} in the {anatomy}?" -> the size, open.

``--tasks`` restricts them. Splits: RadGenome ``train`` -> train (``--val-fraction`` patients held
out), ``validation`` (manually verified) -> test, as HSENet evaluates on it (``--valid-as``).
"""

from __future__ import annotations

import random
from pathlib import Path

from Data.common import Case, PrepareError, clean_text, find_files, hash_split, read_csv, volume_stem
from Data.ct_rate import ChestCTPreparer, _float, parse_xy_spacing

__all__ = ["RadGenomePreparer", "PREPARER", "TASKS"]

TASKS = ("location", "abnormality", "presence", "size")
_FILES = {
    "report": "region_report",
    "location": "vqa_location",
    "abnormality": "vqa_abnormality",
    "presence": "vqa_presence",
    "size": "vqa_size",
}
_COLUMNS = {
    "report": ("Volumename", "Anatomy", "Sentence"),
    "location": ("Volumename", "Anatomy", "Abnormality"),
    "abnormality": ("Volumename", "Anatomy", "Abnormality"),
    "presence": ("Volumename", "Anatomy", "Finding", "Presence"),
    "size": ("Volumename", "Anatomy", "Abnormality", "Size"),
}


def _anatomy(row: dict) -> str:
    return clean_text(row.get("Anatomy")) or "whole scan"


def _qa(task: str, row: dict, rng: random.Random) -> dict:
    from LaMed.data.prompts import RADGENOME_TEMPLATES, pick

    anat = _anatomy(row)
    if task == "location":
        ab = clean_text(row["Abnormality"])
        return {
            "question": pick(RADGENOME_TEMPLATES, rng).format(abnormality=ab),
            "answer": anat,
            "type": "open",
            "topic": "location",
            "abnormality": ab,
        }
    if task == "abnormality":
        return {
            "question": f"What abnormality is seen in the {anat}?",
            "answer": clean_text(row["Abnormality"]),
            "type": "open",
            "topic": "abnormality",
            "anatomy": anat,
        }
    if task == "presence":
        ans = clean_text(row["Presence"]).lower()
        ans = {"true": "yes", "1": "yes", "false": "no", "0": "no"}.get(ans, ans)
        return {
            "question": f"Is there {clean_text(row['Finding'])} in the {anat}?",
            "answer": ans,
            "type": "yes_no" if ans in ("yes", "no") else "open",
            "topic": "presence",
            "anatomy": anat,
        }
    ab = clean_text(row["Abnormality"])
    return {
        "question": f"What is the size of the {ab} in the {anat}?",
        "answer": clean_text(row["Size"]),
        "type": "open",
        "topic": "size",
        "anatomy": anat,
    }


class RadGenomePreparer(ChestCTPreparer):
    name = "radgenome"
    title = "RadGenome-ChestCT"
    raw_layout = "dataset/{train,valid}_preprocessed/**/*.nii.gz + dataset/radgenome_files/*.csv"
    has_splits = True

    def add_dataset_arguments(self, parser) -> None:
        parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="VQA kinds to write")
        parser.add_argument(
            "--valid-as",
            choices=("test", "validation"),
            default="test",
            help="split name of RadGenome's validation set (default test)",
        )
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=0.05,
            help="fraction of training patients held out as 'validation' (default 0.05)",
        )
        parser.add_argument(
            "--metadata",
            nargs="*",
            default=None,
            help="CT-RATE metadata CSVs: apply their rescale/spacing (volumes without HU headers)",
        )
        self.add_slice_arguments(parser)

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        vols = find_files(src, (".nii.gz", ".nii"))
        csvs = find_files(src, (".csv",))
        meta: dict[str, dict] = {}
        for m in args.metadata or []:
            meta.update(
                {
                    r["VolumeName"]: r
                    for r in read_csv(m, ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"])
                }
            )
        cases, errors = [], []
        found = False
        for rg_split, prefix, vol_prefix in (("train", "train", "train_"), ("validation", "validation", "valid_")):
            tables = {}
            for kind, stem in _FILES.items():
                p = csvs.get(f"{prefix}_{stem}.csv")
                if p:
                    tables[kind] = (p[0], read_csv(p[0], _COLUMNS[kind]))
            if not tables:
                continue
            found = True
            per_vol: dict[str, dict] = {}
            for kind, (_path, rows) in tables.items():
                if kind != "report" and kind not in args.tasks:
                    continue
                for row in rows:
                    v = volume_stem(clean_text(row.get("Volumename")))
                    if v:
                        per_vol.setdefault(v, {}).setdefault(kind, []).append(row)
            if not any(n.startswith(vol_prefix) for n in vols):
                print(f"note: no {vol_prefix}* volume under {src}; RadGenome {rg_split} rows skipped (not downloaded?)")
                continue
            for v in sorted(per_vol):
                paths = vols.get(v + ".nii.gz") or vols.get(v + ".nii")
                if not paths:
                    errors.append(
                        {"file": v + ".nii.gz", "error": f"RadGenome {rg_split} volume not found under {src}"}
                    )
                    continue
                rng = random.Random(f"{args.seed}:{v}")
                rows = per_vol[v]
                item: dict = {}
                findings: dict[str, list[str]] = {}
                for r in rows.get("report", []):
                    s = clean_text(r.get("Sentence"))
                    if s:
                        findings.setdefault(_anatomy(r), []).append(s)
                if findings:
                    item["findings"] = {k: " ".join(s) for k, s in findings.items()}
                    item["text"] = " ".join(s for ss in findings.values() for s in ss)
                vqa = [_qa(t, r, rng) for t in args.tasks for r in rows.get(t, [])]
                vqa = [q for q in vqa if q["question"] and q["answer"]]
                if vqa:
                    item["vqa"] = vqa
                load = {"path": str(paths[0]), "slice_size": None if args.no_slices else int(args.slice_size)}
                if meta:
                    m = meta.get(v + ".nii.gz")
                    if m is None:
                        errors.append({"file": str(paths[0]), "error": "no row in the --metadata CSVs"})
                        continue
                    try:
                        load["rescale"] = [_float(m, "RescaleSlope", v), _float(m, "RescaleIntercept", v)]
                        xy = parse_xy_spacing(m["XYSpacing"], v)
                        load["spacing"] = [_float(m, "ZSpacing", v), xy, xy]
                    except ValueError as exc:
                        errors.append({"file": str(paths[0]), "error": str(exc)})
                        continue
                if rg_split == "validation":
                    split = args.valid_as
                else:
                    patient = "_".join(v.split("_")[:2])
                    split = hash_split(patient, args.seed, args.val_fraction, 0.0) if args.val_fraction > 0 else "train"
                cases.append(Case(v, split, str(paths[0]), [str(paths[0])], load, item))
        if not found:
            raise PrepareError(
                f"{src}: no RadGenome CSV found (expected dataset/radgenome_files/"
                f"train_region_report.csv, train_vqa_location.csv, ...)"
            )
        return cases, errors


PREPARER = RadGenomePreparer()
