"""FLARE 2025 Task 5 (``FLARE-MedFM/FLARE-Task5-MLLM-3D``): report generation and VQA on abdominal / chest CT.

Raw layout::

    train/CT-AMOS-1290/<case>.nii.gz           train/CT-AMOS-Tr.json
    train/CT-RATE-2000/<case>.nii.gz           train/CT-RATE-Tr.json
    validation/images/<case>.nii.gz            validation/val.json
    <json>: [{"case_id": "<case>.nii.gz", "findings": {region: text, ...},
              "global_vqa": [{"question", "answer" (str | list), "choices"?}, ...],
              "local_vqa": [{"id", "question", "answer", "choices"?, "follow_up" (-1 for a root)}, ...]}, ...]

Written (Med3DVLM FLARE recipe): the volume with the ``flare`` preset for abdominal (AMOS) cases
(clip [-160, 240] HU) and ``flare_chest`` for the others ([-1350, 150] HU), min-max, anti-aliased
resize to 128x256x256 without crop; MR volumes (``MR`` in the case path) get the percentile
preset instead of a CT window. ``findings`` keeps the per-region dict, ``text`` is the report as
Med3DVLM serialises it ("region: text" lines); ``vqa`` holds every global question (``topic``
``global``; a list answer joined with ", ") and every local question (``topic`` ``local`` with
``chain`` = its root question id and ``follow_up``), closed when its choices are four lettered
options, else open with the choices appended as Med3DVLM does. Split from the JSON's folder
(``train`` / ``validation``; ``--val-fraction`` holds out training cases).

Gaps fixed: the README's ``--data_dir`` / ``--output_dir`` / NIfTI output did not match the code;
MR volumes were clipped with CT windows; every case that fails is reported instead of printed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from Data.common import (
    Case,
    Loaded,
    PrepareError,
    Preparer,
    clean_text,
    find_files,
    hash_split,
    normalize_split,
    volume_stem,
)

__all__ = ["Flare25Preparer", "PREPARER", "flare_vqa"]

_MR_RE = re.compile(r"(^|[^a-z])mri?([^a-z]|$)", re.IGNORECASE)


def _register_presets() -> None:
    import dataclasses

    from LaMed.data.presets import get_preset, list_presets, register_preset

    if "flare_mr" not in list_presets():
        register_preset(
            dataclasses.replace(
                get_preset("m3d_refseg"),
                name="flare_mr",
                size=(128, 256, 256),
                crop_foreground=False,
                antialias=True,
                description="FLARE25 MR cases: 0.5-99.5 percentile scaling instead of a CT window, anti-aliased resize "
                "to 128x256x256, no crop.",
            )
        )


_register_presets()


def _answer(a: Any) -> str:
    return ", ".join(clean_text(x) for x in a) if isinstance(a, (list, tuple)) else clean_text(a)


def _one(q: dict, topic: str) -> dict:
    question = clean_text(q.get("question"))
    answer = _answer(q.get("answer"))
    choices = q.get("choices")
    out: dict
    if isinstance(choices, dict) and sorted(choices) == ["A", "B", "C", "D"]:
        ch = {k: clean_text(v) for k, v in choices.items()}
        a = answer.strip()
        letter = a[0].upper() if a and a[0].upper() in ch and (len(a) == 1 or a[1] in ".):") else None
        letter = letter or next((k for k, v in ch.items() if v.lower() == answer.lower()), None)
        if letter:
            out = {"question": question, "answer": ch[letter], "type": "closed", "choices": ch, "answer_choice": letter}
        else:
            out = {"question": f"{question} Choices: {choices}", "answer": answer, "type": "open"}
    elif choices:
        out = {"question": f"{question} Choices: {choices}", "answer": answer, "type": "open"}
    else:
        yn = answer.lower() in ("yes", "no")
        out = {"question": question, "answer": answer, "type": "yes_no" if yn else "open"}
    out["topic"] = topic
    return out


def flare_vqa(case: dict) -> list[dict]:
    """The case's global and local questions as prepared-format VQA entries."""
    vqa = [_one(q, "global") for q in case.get("global_vqa") or [] if isinstance(q, dict)]
    local = [q for q in case.get("local_vqa") or [] if isinstance(q, dict)]
    by_id = {q.get("id"): q for q in local}
    for q in local:
        root, hops = q, 0
        while root.get("follow_up", -1) not in (-1, None) and root.get("follow_up") in by_id and hops < 50:
            root, hops = by_id[root["follow_up"]], hops + 1
        e = _one(q, "local")
        e.update(chain=root.get("id"), qid=q.get("id"), follow_up=q.get("follow_up", -1))
        vqa.append(e)
    return vqa


class Flare25Preparer(Preparer):
    name = "flare25"
    title = "FLARE 2025 Task 5"
    raw_layout = "train/{CT-AMOS-1290,CT-RATE-2000}/*.nii.gz + train/*-Tr.json, validation/images + validation/val.json"
    default_preset = "flare"
    has_splits = True

    def add_dataset_arguments(self, parser) -> None:
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=0.0,
            help="fraction of training cases held out as validation (default 0)",
        )

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        vols = find_files(src)
        specs = sorted(p for p in src.rglob("*.json") if not p.name.startswith(".") and p.name != "dataset.json")
        cases, errors = [], []
        found_any = False
        for spec_path in specs:
            try:
                data = json.loads(spec_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                errors.append({"file": str(spec_path), "error": "not valid JSON"})
                continue
            if not (isinstance(data, list) and data and isinstance(data[0], dict) and "case_id" in data[0]):
                continue  # not a FLARE case list (README config, ...)
            found_any = True
            rel_parts = [p.lower() for p in spec_path.relative_to(src).parts]
            split = next((normalize_split(p) for p in rel_parts if normalize_split(p)), None)
            if split is None:
                split = "validation" if re.search(r"(^|[-_])(val|valid|validation)", spec_path.stem, re.I) else "train"
            for k, case in enumerate(data):
                cid = str(case.get("case_id", "")).strip() if isinstance(case, dict) else ""
                if not cid:
                    errors.append({"file": str(spec_path), "error": f"case {k}: no case_id"})
                    continue
                stem = volume_stem(cid)
                cand = [p for n, ps in vols.items() if volume_stem(n) == stem for p in ps]
                near = [p for p in cand if spec_path.parent in p.parents]
                path = (near or cand or [None])[0]
                if path is None:
                    errors.append(
                        {"file": cid, "error": f"{spec_path.name} case {k}: volume {cid} not found under {src}"}
                    )
                    continue
                findings = case.get("findings") or {}
                item: dict = {}
                if isinstance(findings, dict) and findings:
                    item["findings"] = {str(r): clean_text(t) for r, t in findings.items()}
                    item["text"] = "\n".join(f"{r}: {clean_text(t)}" for r, t in findings.items())
                elif isinstance(findings, str) and findings.strip():
                    item["text"] = clean_text(findings)
                vqa = flare_vqa(case)
                if vqa:
                    item["vqa"] = vqa
                rel = str(path.relative_to(src))
                preset = "flare_mr" if _MR_RE.search(rel) else ("flare" if "amos" in rel.lower() else "flare_chest")
                s = split
                if s == "train" and args.val_fraction > 0:
                    s = hash_split(stem, args.seed, args.val_fraction, 0.0)
                item["subset"] = spec_path.stem
                cases.append(Case(stem, s, str(path), [str(path)], {"path": str(path)}, item, preset))
        if not found_any:
            raise PrepareError(f"{src}: no FLARE Task 5 JSON (a list of cases with 'case_id') found")
        return cases, errors

    def load(self, case: dict) -> Loaded:
        from LaMed.data.io import load_volume

        vol = load_volume(case["load"]["path"])
        return Loaded(vol.array, tuple(vol.spacing))


PREPARER = Flare25Preparer()
