"""M3D-Cap (``GoodBaiBai88/M3D-Cap``): Radiopaedia image series (2D slice files) with reports.

Raw layout::

    M3D_Cap/{ct_case,ct_quizze}/<case_id>/<series>/<n>.jpeg|png     one folder of slices a series
    M3D_Cap/{ct_case,ct_quizze}/<case_id>/*.txt                      the case's report text
    M3D_Cap.json (optional)  {"train"|"validation"|"test"|<test subsets>: [{"image": <case>/<series>.npy,
                              "text": <case>/text.txt}, ...]}   paths relative to the data root

``--in`` is the folder holding ``M3D_Cap/`` (or ``M3D_Cap`` itself); with ``M3D_Cap.json`` its
splits (and extra lists such as ``test1k``, each written as its own manifest) are used, the image
path naming the series folder (``.npy`` dropped; ``--in`` may also hold the released
``M3D_Cap_npy`` arrays, which are then read directly); without it every series is a case and the
split is a deterministic hash of the case id (no case in two splits).

Image (M3D ``m3d_cap_data_prepare.py``): each slice grey-scaled and divided by 255, slices sorted
by the integer in their file name, only those of the most common shape kept, stacked; then the
``m3d_cap`` preset: min-max, foreground crop, trilinear resize to 32x256x256 (``--size 128 256 256``
for Med3DVLM). No HU window: the PNGs are already display-windowed.
Text: the part after ``study_findings:``; if shorter than 5 characters, the part after
``discussion:``; otherwise the whole text; whitespace collapsed.

Gaps fixed: a case's several series no longer leak across splits in the no-JSON mode; a series
with unreadable slices is reported (the published script crashes or skips it silently); non-ASCII
series names are matched to the JSON's transliterated names.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from Data.common import (
    Case,
    Loaded,
    PrepareError,
    Preparer,
    clean_text,
    hash_split,
    metadata_path_ok,
    normalize_split,
    safe_name,
)

__all__ = ["M3DCapPreparer", "PREPARER", "extract_findings", "read_slice_series"]

_SLICE_EXT = (".jpeg", ".jpg", ".png")


def _register_presets() -> None:
    from LaMed.data.presets import Preset, list_presets, register_preset

    if "m3d_cap" not in list_presets():
        register_preset(
            Preset(
                "m3d_cap",
                (32, 256, 256),
                window=None,
                normalize="minmax",
                description=(
                    "M3D-Cap: display-windowed 2D slices /255 -> min-max -> CropForeground (>0) -> "
                    "trilinear resize 32x256x256 (no HU window)."
                ),
            )
        )


_register_presets()


def extract_findings(text: str) -> str:
    """M3D's report rule: the text after ``study_findings:``; when that is under 5 characters, the
    text after ``discussion:``; without the markers the whole text (whitespace collapsed)."""
    low = text.lower()
    i = low.find("study_findings:")
    if i < 0:
        return clean_text(text)
    out = clean_text(text[i + len("study_findings:") :])
    if len(out) < 5:
        j = low.find("discussion:")
        if j < 0:
            return clean_text(text)
        end = low.find("study_findings:", j)  # the discussion section ends where the findings start
        out = clean_text(text[j + len("discussion:") : end if end > j else None])
    return out


def _slice_key(p: Path) -> tuple[int, str]:
    m = re.search(r"\d+", p.stem)
    return (int(m.group()) if m else 1 << 30, p.name)


def read_slice_series(folder: Path) -> np.ndarray:
    """A folder of 2D slice images -> ``(N, H, W)`` float32 in [0, 1] (grey / 255), slices sorted by
    the number in their file name, only those of the most common shape kept."""
    from PIL import Image

    files = sorted((f for f in folder.iterdir() if f.suffix.lower() in _SLICE_EXT), key=_slice_key)
    if not files:
        raise ValueError(f"{folder}: no .jpeg/.jpg/.png slices")
    slices = []
    for f in files:
        try:
            with Image.open(f) as im:
                slices.append(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
        except Exception as exc:  # PIL raises many types for a broken file
            raise ValueError(f"{f}: unreadable slice image ({type(exc).__name__}: {exc})") from None
    shape, _ = Counter(s.shape for s in slices).most_common(1)[0]
    return np.stack([s for s in slices if s.shape == shape])


class M3DCapPreparer(Preparer):
    name = "m3d_cap"
    title = "M3D-Cap"
    raw_layout = "M3D_Cap/{ct_case,ct_quizze}/<case>/<series>/<n>.png + <case>/*.txt [+ M3D_Cap.json]"
    default_preset = "m3d_cap"
    has_splits = False
    default_val_fraction = 0.05
    default_test_fraction = 0.05

    def _root(self, src: Path) -> tuple[Path, Path]:
        """(data root the JSON paths are relative to, folder holding the case folders' parents)."""
        if (src / "M3D_Cap").is_dir():
            return src, src / "M3D_Cap"
        return src.parent, src

    def scan(self, src: Path, args) -> tuple[list[Case], list[dict]]:
        data_root, cap = self._root(src)
        json_path = next(
            (
                p
                for p in (src / "M3D_Cap.json", cap / "M3D_Cap.json", src / "M3D_Cap_npy" / "M3D_Cap.json")
                if p.is_file()
            ),
            None,
        )
        if json_path is not None:
            return self._scan_json(json_path, data_root, cap, args)
        return self._scan_folders(cap, args)

    def _text_of(self, case_dir: Path, txt: Path | None) -> str:
        files = [txt] if txt is not None and txt.is_file() else sorted(case_dir.glob("*.txt"))
        return " ".join(extract_findings(f.read_text(encoding="utf-8", errors="replace")) for f in files).strip()

    def _case(self, split: str, series: Path, npy: Path | None, text: str, rel_id: str) -> Case:
        source = npy if npy is not None else series
        inputs = [str(npy)] if npy is not None else sorted(str(f) for f in series.iterdir())
        load = {"npy": str(npy)} if npy is not None else {"series": str(series)}
        item = {"text": text} if text else {}
        return Case(safe_name(rel_id, 120), split, str(source), inputs, load, item)

    def _scan_folders(self, cap: Path, args) -> tuple[list[Case], list[dict]]:
        cases, errors = [], []
        for group in sorted(p for p in cap.iterdir() if p.is_dir()):
            for case_dir in sorted(p for p in group.iterdir() if p.is_dir()):
                text = self._text_of(case_dir, None)
                split = hash_split(f"{group.name}/{case_dir.name}", args.seed, args.val_fraction, args.test_fraction)
                for series in sorted(p for p in case_dir.iterdir() if p.is_dir()):
                    if not text:
                        errors.append({"file": str(series), "error": f"no report text (*.txt) in {case_dir}"})
                        continue
                    cases.append(self._case(split, series, None, text, f"{group.name}/{case_dir.name}/{series.name}"))
        if not cases and not errors:
            raise PrepareError(f"{cap}: no M3D-Cap series found (expected <group>/<case_id>/<series>/<n>.png)")
        return cases, errors

    def _scan_json(self, json_path: Path, data_root: Path, cap: Path, args) -> tuple[list[Case], list[dict]]:
        try:
            spec = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PrepareError(f"{json_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(spec, dict) or not any(isinstance(v, list) for v in spec.values()):
            raise PrepareError(f"{json_path}: expected {{split: [{{'image', 'text'}}, ...]}}")
        cases, errors, seen = [], [], {}
        for key, entries in spec.items():
            if not isinstance(entries, list):
                continue
            split = normalize_split(key) or safe_name(key)
            for k, e in enumerate(entries):
                where = f"{json_path}: {key}[{k}]"
                if not isinstance(e, dict) or "image" not in e or "text" not in e:
                    errors.append({"file": str(json_path), "error": f"{key}[{k}]: expected {{'image', 'text'}}"})
                    continue
                rel = str(e["image"])
                npy = self._find(data_root, cap, rel, suffix=".npy")
                series = self._find_series(data_root, cap, rel)
                if npy is None and series is None:
                    errors.append({"file": rel, "error": f"{where}: neither the series folder nor the .npy exists"})
                    continue
                txt = self._find(data_root, cap, str(e["text"]))
                text = self._text_of(series.parent if series else npy.parent, txt)
                if not text:
                    errors.append({"file": str(e["text"]), "error": f"{where}: empty or missing report text"})
                    continue
                c = self._case(split, series, npy, text, re.sub(r"\.npy$", "", rel))
                if c.id in seen:  # the same series listed in two test subsets: one item a split
                    c.id = f"{c.id}__{split}"
                seen[c.id] = c
                cases.append(c)
        return cases, errors

    @staticmethod
    def _find(data_root: Path, cap: Path, rel: str, suffix: str = "") -> Path | None:
        if not metadata_path_ok(rel):
            return None
        for base in (data_root, cap, cap.parent):
            p = base / rel
            if p.is_file() and (not suffix or p.suffix == suffix):
                return p
        return None

    @staticmethod
    def _find_series(data_root: Path, cap: Path, rel: str) -> Path | None:
        if not metadata_path_ok(rel):
            return None
        stem = re.sub(r"\.npy$", "", rel)
        for base in (data_root, cap, cap.parent):
            p = base / stem
            if p.is_dir():
                return p
            # Series names were transliterated (unidecode) in the JSON: match on the ASCII form.
            parent = p.parent
            if parent.is_dir():
                want = safe_name(p.name)
                for d in parent.iterdir():
                    if d.is_dir() and safe_name(d.name) == want:
                        return d
        return None

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


PREPARER = M3DCapPreparer()
