"""BIMCV-R (``cyd0806/BIMCV-R``, MICCAI 2024): 8,069 chest CT volumes from BIMCV with bilingual reports.

Raw layout (after unzipping the archives; ``lamed download bimcv_r --extract``)::

    CT<n>/ct/<sub-S..>_<ses-E..>_..._ct.nii.gz     (any folder depth is accepted)
    BIMCV-R.csv   PatientID, ReportID, Report (Spanish), Labels ("['pleural effusion', ...]"),
                  Localizations, ..., Report_en, ct_path (the volume's original path)

Written (HSENet's BIMCV-R recipe): the 3D volume with the ``hsenet`` preset (the CT-RATE pipeline:
clip [-1000, 200] HU, resample to 1.5/0.75/0.75 mm, min-max, crop, 32x256x256; ``--preset
hsenet_bimcv`` reproduces the published script, which does not resample), ``text`` = Report_en,
``report_es`` = Report, ``labels`` (the CSV's finding labels, cleaned: blanks and the ``normal`` /
``exclude`` markers dropped), the 32-slice stack and optional slice features (as CT-RATE).
Splits: none are published; deterministic patient-level hash split 80/10/10 (``--val-fraction``,
``--test-fraction``).

Gaps fixed: one pipeline for every volume (the published script switches on CUDA OOM to a
different strided-slice pipeline with zero padding); the same spacing resampling as CT-RATE;
volumes whose header spacing is implausible (a known BIMCV-R corruption: slice thickness replaced
by the field of view) are reported, not resampled into nonsense; a report row whose ``PatientID`` /
``ReportID`` disagree with the ``sub-`` / ``ses-`` of its volume's file name (about 18% of the
published CSV rows) is reported and left out (``--keep-mismatched`` keeps it); 2D slices share
the 3D orientation (the published BIMCV-R slices are rotated +90 degrees, CT-RATE's -90).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from Data.common import Case, PrepareError, clean_text, find_files, hash_split, read_csv, volume_stem
from Data.ct_rate import ChestCTPreparer

__all__ = ["BIMCVRPreparer", "PREPARER", "parse_labels"]

_SUB = re.compile(r"sub-([A-Za-z0-9]+)")
_SES = re.compile(r"ses-([A-Za-z0-9]+)")


def parse_labels(cell: str) -> list[str]:
    """``"['', ' pleural effusion', 'normal']"`` -> ``['pleural effusion']`` (sorted, unique)."""
    try:
        vals = ast.literal_eval(str(cell)) if str(cell).strip() else []
    except (ValueError, SyntaxError):
        vals = [v for v in re.split(r"[,;]", str(cell).strip("[]"))]
    if isinstance(vals, str):
        vals = [vals]
    out = {clean_text(str(v)).strip("'\" ").lower() for v in vals}
    return sorted(v for v in out if v and v not in ("normal", "exclude"))


class BIMCVRPreparer(ChestCTPreparer):
    name = "bimcv_r"
    title = "BIMCV-R"
    raw_layout = "CT*/ct/*.nii.gz + BIMCV-R.csv (PatientID, ReportID, Report, Labels, Report_en, ct_path)"
    has_splits = False
    default_val_fraction = 0.1
    default_test_fraction = 0.1

    def add_dataset_arguments(self, parser) -> None:
        parser.add_argument("--csv", default=None, help="the report CSV (default: BIMCV-R.csv found under --in)")
        parser.add_argument(
            "--keep-mismatched",
            action="store_true",
            help="keep rows whose PatientID/ReportID disagree with the volume file name",
        )
        self.add_slice_arguments(parser)

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        vols = find_files(src, (".nii.gz", ".nii"))
        csv_path = Path(args.csv) if args.csv else next(iter(sorted(src.rglob("BIMCV-R.csv"))), None)
        if csv_path is None or not csv_path.is_file():
            raise PrepareError(f"{src}: BIMCV-R.csv not found (pass --csv)")
        rows = read_csv(csv_path, ["PatientID", "ReportID", "Report_en", "ct_path"])
        cases, errors, used = [], [], set()
        for i, row in enumerate(rows):
            where = f"{csv_path.name} row {i + 2}"
            fname = Path(str(row["ct_path"]).strip()).name
            paths = vols.get(fname)
            if not paths:
                errors.append({"file": fname or str(csv_path), "error": f"{where}: volume not found under {src}"})
                continue
            pid, rid = str(row["PatientID"]).strip(), str(row["ReportID"]).strip()
            sub, ses = _SUB.search(fname), _SES.search(fname)
            if not args.keep_mismatched and (
                (sub and f"sub-{sub.group(1)}" != pid) or (ses and f"ses-{ses.group(1)}" != rid)
            ):
                errors.append(
                    {
                        "file": str(paths[0]),
                        "error": f"{where}: report of {pid}/{rid} does not belong to this "
                        f"volume (file name says {sub and sub.group(0)}/{ses and ses.group(0)})",
                    }
                )
                continue
            cid = re.sub(r"[^A-Za-z0-9._-]+", "_", volume_stem(fname))
            if cid in used:
                errors.append(
                    {"file": str(paths[0]), "error": f"{where}: a second report row for this volume (ignored)"}
                )
                continue
            used.add(cid)
            item = {}
            text = clean_text(row.get("Report_en"))
            if text:
                item["text"] = text
            if clean_text(row.get("Report")):
                item["report_es"] = clean_text(row["Report"])
            if "Labels" in row:
                item["labels"] = parse_labels(row["Labels"])
            load = {"path": str(paths[0]), "slice_size": None if args.no_slices else int(args.slice_size)}
            split = hash_split(pid, args.seed, args.val_fraction, args.test_fraction)
            cases.append(Case(cid, split, str(paths[0]), [str(paths[0])], load, item))
        return cases, errors


PREPARER = BIMCVRPreparer()
