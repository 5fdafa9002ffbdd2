"""M3D-VQA (``GoodBaiBai88/M3D-VQA``): multiple-choice / open / yes-no questions on M3D-Cap images.

Raw layout::

    M3D_VQA/M3D_VQA_{train,val,test}.csv    Image Path, Text, Question Type, Question, Choice A, Choice B,
                                             Choice C, Choice D, Answer, Answer Choice[, crt (test only)]
    M3D_VQA/M3D_VQA_yn_train.csv            the yes/no questions (same columns, no choices needed)
    <images>/<Image Path>                    M3D-Cap's arrays (``M3D_Cap_npy``), or its raw series
                                             folders (``M3D_Cap/<group>/<case>/<series>/``)

``--in`` holds the CSVs (searched recursively); ``--images`` is the data root the ``Image Path``
column is relative to (default ``--in``; ``<root>/M3D_Cap_npy`` and ``<root>/M3D_Cap`` are tried).
One item per image and split; every row gives a ``closed`` question (choices A-D, answer letter and
text) and the same question ``open`` (answer text), as M3D trains both; yes/no rows give
``yes_no`` questions. ``topic`` is the question type (Plane, Phase, Organ, Abnormality, Location).

Images: an ``.npy`` of the released ``M3D_Cap_npy`` (already 32x256x256 in [0, 1]) is converted
as is (``m3d_cap_npy`` preset: min-max, no crop, resize to the target size); a series folder goes
through the M3D-Cap pipeline (``m3d_cap`` preset).

Gaps fixed: rows whose answer letter does not name one of the four choices are reported (not
trained on); the test set's ``crt`` check column is kept per question (``--checked-only`` keeps the
questions Qwen re-checked as correct); all validation rows are written (the published loader reads
only the first 2048).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from Data.common import (
    Case,
    Loaded,
    PrepareError,
    Preparer,
    clean_text,
    find_files,
    metadata_path_ok,
    normalize_split,
    read_csv,
    safe_name,
)
from Data.m3d_cap import M3DCapPreparer, read_slice_series

__all__ = ["M3DVQAPreparer", "PREPARER", "QUESTION_TYPES"]

QUESTION_TYPES = {1: "Plane", 2: "Phase", 3: "Organ", 4: "Abnormality", 5: "Location"}
_COLUMNS = ("Image Path", "Question", "Answer")


def _register_presets() -> None:
    from LaMed.data.presets import Preset, list_presets, register_preset

    if "m3d_cap_npy" not in list_presets():
        register_preset(
            Preset(
                "m3d_cap_npy",
                (32, 256, 256),
                window=None,
                normalize="minmax",
                crop_foreground=False,
                description="Released M3D_Cap_npy arrays (already cropped, 32x256x256, [0, 1]): min-max and resize only.",
            )
        )


_register_presets()


def _qtype(value: str) -> tuple[int | None, str]:
    try:
        k = int(float(value))
        return k, QUESTION_TYPES.get(k, str(k))
    except (TypeError, ValueError):
        return None, clean_text(value)


class M3DVQAPreparer(Preparer):
    name = "m3d_vqa"
    title = "M3D-VQA"
    raw_layout = "M3D_VQA_{train,val,test}.csv, M3D_VQA_yn_train.csv + the M3D-Cap images (--images)"
    default_preset = "m3d_cap"
    has_splits = True

    def add_dataset_arguments(self, parser) -> None:
        parser.add_argument("--images", default=None, help="data root of the 'Image Path' column (default --in)")
        parser.add_argument(
            "--checked-only", action="store_true", help="test split: keep only questions whose 'crt' check is 1"
        )

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        csvs = {n: p for n, ps in find_files(src, (".csv",)).items() for p in ps[:1] if n.startswith("M3D_VQA")}
        if not csvs:
            raise PrepareError(f"{src}: no M3D_VQA_*.csv file found")
        img_root = Path(args.images).resolve() if args.images else src
        items: dict[tuple[str, str], dict] = {}
        errors: list[dict] = []
        for name in sorted(csvs):
            path = csvs[name]
            stem = Path(name).stem  # M3D_VQA_train / M3D_VQA_yn_train
            yes_no = "_yn_" in stem or stem.endswith("_yn")
            split = normalize_split(stem.rsplit("_", 1)[-1])
            if split is None:
                errors.append(
                    {
                        "file": str(path),
                        "error": "cannot tell the split from the file name (expected ..._train/_val/_test.csv)",
                    }
                )
                continue
            rows = read_csv(
                path,
                _COLUMNS if yes_no else _COLUMNS + ("Choice A", "Choice B", "Choice C", "Choice D", "Answer Choice"),
            )
            for i, row in enumerate(rows):
                where = f"row {i + 2}"
                rel = (row.get("Image Path") or "").strip()
                if (
                    args.checked_only
                    and split == "test"
                    and "crt" in row
                    and str(row["crt"]).strip() not in ("1", "1.0")
                ):
                    continue
                qs, err = self._questions(row, yes_no)
                if err:
                    errors.append({"file": str(path), "error": f"{where}: {err}"})
                    continue
                key = (split, rel)
                if key not in items:
                    found = self._locate(img_root, rel)
                    if found is None:
                        errors.append({"file": rel, "error": f"{path.name} {where}: image not found under {img_root}"})
                        items[key] = {"missing": True}
                        continue
                    items[key] = {"found": found, "vqa": [], "text": clean_text(row.get("Text"))}
                if items[key].get("missing"):
                    continue
                items[key]["vqa"].extend(qs)
        cases, ids = [], {}
        for (split, rel), it in sorted(items.items()):
            if it.get("missing"):
                continue
            kind, p = it["found"]
            cid = safe_name(rel.rsplit(".", 1)[0] if rel.endswith(".npy") else rel, 120)
            if cid in ids:  # an image in two splits: keep both, distinct ids
                cid = f"{cid}__{split}"
            ids[cid] = True
            inputs = [str(p)] if kind == "npy" else sorted(str(f) for f in p.iterdir())
            item = {"vqa": it["vqa"]}
            if it["text"]:
                item["text"] = it["text"]
            cases.append(
                Case(cid, split, str(p), inputs, {kind: str(p)}, item, preset="m3d_cap_npy" if kind == "npy" else None)
            )
        return cases, errors

    @staticmethod
    def _locate(root: Path, rel: str):
        if not metadata_path_ok(rel):
            return None
        for base in (root, root / "M3D_Cap_npy", root.parent):
            p = base / rel
            if p.is_file():
                return "npy", p
        series = M3DCapPreparer._find_series(root, root / "M3D_Cap", rel)
        return ("series", series) if series is not None else None

    @staticmethod
    def _questions(row: dict, yes_no: bool) -> tuple[list[dict], str | None]:
        q = clean_text(row.get("Question"))
        ans = clean_text(row.get("Answer"))
        if not q or not ans:
            return [], "empty Question or Answer"
        k, topic = _qtype(row.get("Question Type", ""))
        base = {"topic": topic} if topic else {}
        if k is not None:
            base["question_type"] = k
        if "crt" in row and str(row["crt"]).strip():
            with contextlib.suppress(ValueError):
                base["crt"] = int(float(row["crt"]))
        if yes_no:
            return [{"question": q, "answer": ans, "type": "yes_no", **base}], None
        choices = {c: clean_text(row.get(f"Choice {c}")) for c in "ABCD"}
        letter = clean_text(row.get("Answer Choice")).upper().rstrip(".")
        if letter not in choices or not choices[letter]:
            return [], f"Answer Choice {row.get('Answer Choice')!r} does not name one of the choices A-D"
        closed = {
            "question": q,
            "answer": choices[letter],
            "type": "closed",
            "choices": choices,
            "answer_choice": letter,
            **base,
        }
        return [closed, {"question": q, "answer": ans, "type": "open", **base}], None

    def load(self, case: dict) -> Loaded:
        ld = case["load"]
        if "npy" in ld:
            arr = np.load(ld["npy"], allow_pickle=False)
            while arr.ndim > 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 3:
                raise ValueError(f"{ld['npy']}: expected a (1, D, H, W) or (D, H, W) array, got {arr.shape}")
            return Loaded(arr.astype(np.float32), (1.0, 1.0, 1.0))
        return Loaded(read_slice_series(Path(ld["series"])), (1.0, 1.0, 1.0))


PREPARER = M3DVQAPreparer()
