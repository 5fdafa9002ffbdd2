"""M3D-RefSeg (``GoodBaiBai88/M3D-RefSeg``): 210 TotalSegmentator CTs with referring texts and region masks.

Raw layout::

    M3D_RefSeg/<case>/ct.nii.gz        the CT
    M3D_RefSeg/<case>/mask.nii.gz      region ids 1..N on the CT grid
    M3D_RefSeg/<case>/text.json        {"<id>": "<English description of region id>", ...}
    M3D_RefSeg_train.csv (or M3D_RefSeg.csv), M3D_RefSeg_test.csv
        Image, Mask, Mask_ID, Question_Type (0 description, 1 reasoning), Question, Answer [, Text]

Written: the CT with the ``m3d_refseg`` preset (0.5-99.5 percentile scaling, foreground crop,
32x256x256), one mask a region present (``region_<id>``), its box, and ``refer`` entries: the
region's description (``type`` ``description``) and every question of the CSVs about it (with its
``answer``, which holds ``[SEG]``; ``type`` ``description`` or ``reasoning``). Splits: the CSVs
(train / test); cases in no CSV, or all cases when there is none, get a deterministic hash split.

Gaps fixed: the volume is read in the canonical (S, P, L) orientation with its mask on the same
grid, checked (M3D's ``transpose(2, 0, 1)`` swaps the in-plane axes relative to its own M3D-Seg);
the answers' ``<SEG>`` spelling (mixed into the generated data) is normalised to ``[SEG]``;
a question whose region is missing from the mask is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from Data.common import Case, Loaded, PrepareError, Preparer, clean_text, find_files, hash_split, read_csv

__all__ = ["M3DRefSegPreparer", "PREPARER"]


class M3DRefSegPreparer(Preparer):
    name = "m3d_refseg"
    title = "M3D-RefSeg"
    raw_layout = "M3D_RefSeg/<case>/{ct.nii.gz, mask.nii.gz, text.json} + M3D_RefSeg_{train,test}.csv"
    default_preset = "m3d_refseg"
    has_splits = False
    default_val_fraction = 0.0
    default_test_fraction = 0.2

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        cts = sorted(p for p in src.rglob("ct.nii.gz") if (p.parent / "mask.nii.gz").is_file())
        if not cts:
            raise PrepareError(f"{src}: no M3D-RefSeg case found (expected <case>/ct.nii.gz + mask.nii.gz)")
        by_case = {p.parent.name: p.parent for p in cts}
        csvs = find_files(src, (".csv",))
        errors: list[dict] = []
        split_of: dict[str, str] = {}
        questions: dict[str, list[dict]] = {}
        for name, paths in sorted(csvs.items()):
            if not name.startswith("M3D_RefSeg"):
                continue
            split = "test" if "test" in name.lower() else "train"
            path = paths[0]
            for i, row in enumerate(read_csv(path, ["Image", "Mask_ID", "Question", "Answer"])):
                case = Path(str(row["Image"]).strip()).parent.name
                if case not in by_case:
                    errors.append(
                        {"file": str(path), "error": f"row {i + 2}: case {case!r} of {row['Image']!r} not found"}
                    )
                    continue
                try:
                    mid = int(float(row["Mask_ID"]))
                except ValueError:
                    errors.append(
                        {"file": str(path), "error": f"row {i + 2}: Mask_ID {row['Mask_ID']!r} is not an integer"}
                    )
                    continue
                split_of.setdefault(case, split)
                qt = str(row.get("Question_Type", "")).strip()
                kind = {"0": "description", "1": "reasoning"}.get(qt.split(".")[0], "question")
                answer = clean_text(row["Answer"]).replace("<SEG>", "[SEG]")
                questions.setdefault(case, []).append(
                    {"text": clean_text(row["Question"]), "target": f"region_{mid}", "answer": answer, "type": kind}
                )
        cases = []
        for case, folder in sorted(by_case.items()):
            split = split_of.get(case) or hash_split(case, args.seed, args.val_fraction, args.test_fraction)
            refer = []
            tj = folder / "text.json"
            if tj.is_file():
                try:
                    texts = json.loads(tj.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    errors.append({"file": str(tj), "error": f"not valid JSON ({exc.msg} at line {exc.lineno})"})
                    continue
                if isinstance(texts, list):
                    texts = {str(i + 1): t for i, t in enumerate(texts)}
                for k, t in texts.items() if isinstance(texts, dict) else []:
                    try:
                        refer.append({"text": clean_text(t), "target": f"region_{int(k)}", "type": "description"})
                    except ValueError:
                        errors.append({"file": str(tj), "error": f"key {k!r} is not a region id"})
            refer += questions.get(case, [])
            files = [str(folder / "ct.nii.gz"), str(folder / "mask.nii.gz")]
            cases.append(
                Case(
                    case,
                    split,
                    str(folder / "ct.nii.gz"),
                    files,
                    {
                        "ct": str(folder / "ct.nii.gz"),
                        "mask": str(folder / "mask.nii.gz"),
                        "wanted": sorted({r["target"] for r in refer}),
                    },
                    {"refer": refer} if refer else {},
                )
            )
        return cases, errors

    def load(self, case: dict) -> Loaded:
        from LaMed.data.io import VolumeError, load_mask, load_volume

        ld = case["load"]
        ct = load_volume(ld["ct"])
        mask = load_mask(ld["mask"], ct).array
        ids = [int(v) for v in np.unique(mask) if v != 0]
        masks = {f"region_{i}": (mask == i).astype(np.uint8) for i in ids}
        missing = [w for w in ld.get("wanted", []) if w not in masks]
        if missing:
            raise VolumeError(
                ld["mask"],
                f"region id(s) {', '.join(m.split('_')[1] for m in missing)} referred to by "
                f"the texts are absent from the mask (ids present: {ids})",
            )
        return Loaded(ct.array, tuple(ct.spacing), masks, {"labels": sorted(masks)})


PREPARER = M3DRefSegPreparer()
