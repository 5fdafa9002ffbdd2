"""Shared machinery of the public-dataset preparers (``lamed prepare <dataset> --in RAW --out DIR``).

A dataset module only knows its raw layout. It subclasses :class:`Preparer` and implements

* :meth:`Preparer.scan` (main process): read the metadata files (CSV / JSON) and return one
  :class:`Case` a volume, with its split, the files it depends on, JSON-able instructions for
  loading it and the manifest fields the metadata already gives (report, VQA, labels, ...);
  problems found here (a report row without its volume, a mismatched pair) are returned as
  errors and end up in the error report;
* :meth:`Preparer.load` (worker process): turn those instructions into a canonical ``(D, H, W)``
  array, its spacing and optional masks (:class:`Loaded`).

Everything else is here, on top of :mod:`LaMed.data.prepare` (task running, records, manifests)
and :mod:`LaMed.data.prepared` (atomic writers, validation):

* the preset (any registered one, ``--preset`` / ``--size`` overrides) applied to image and masks,
  empty masks dropped, boxes recomputed on the output grid, the prepared files written;
* parallel workers (``--workers``) with a progress bar; every finished case leaves a record, so an
  interrupted run resumes where it stopped and a re-run skips finished cases (unless
  ``--overwrite``); a re-run whose only change is in the metadata (a corrected report, another
  split seed) rewrites the records without touching the volumes;
* a per-file error report (``errors.json`` / ``errors.txt``) that never stops the run;
* deterministic, patient-grouped splits for datasets that have none (:func:`hash_split`: a case's
  split depends only on its group key and the seed, so ``--limit`` or a larger download never moves
  a case to another split);
* ``--limit N`` (at most N cases of each split, for quick trials);
* a final validation pass (every manifest path exists and loads with the expected shape, extra
  files such as slice features included) and the counts per split, also written to
  ``<out>/meta/dataset.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import re
import shutil
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Case",
    "Loaded",
    "Preparer",
    "PrepareError",
    "hash_split",
    "safe_name",
    "read_csv",
    "find_files",
    "normalize_split",
    "clean_text",
    "volume_stem",
    "metadata_path_ok",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".npz")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "tr": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
    "ts": "test",
}


class PrepareError(ValueError):
    """A raw dataset that cannot be prepared as a whole (missing metadata file, wrong columns, ...);
    the message names the file and what is wrong. Per-volume problems go to the error report."""


@dataclass
class Case:
    """One volume to prepare.

    Attributes:
        id: output id (file-name safe, unique in the dataset).
        split: ``train`` / ``validation`` / ``test`` (or any plain name, e.g. ``test1k``).
        source: the file shown in the error report.
        inputs: files whose size and modification time fingerprint the case (an edited source is redone).
        load: JSON-able instructions for :meth:`Preparer.load` (runs in a worker).
        item: manifest fields known from the metadata (``text``, ``vqa``, ``refer``, ``labels``, ...).
        preset: preset name for this case (e.g. FLARE's chest window); ``None`` = the preparer's default.
    """

    id: str
    split: str
    source: str
    inputs: list[str]
    load: dict[str, Any]
    item: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None


@dataclass
class Loaded:
    """A loaded case: canonical ``(D, H, W)`` image (HU for CT), spacing (mm, D/H/W) and masks
    ``{name: (D, H, W) 0/1 array}`` on the same grid; ``item`` adds manifest fields found on loading."""

    image: np.ndarray
    spacing: tuple[float, float, float]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    item: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- small helpers


def hash_split(key: str, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """Deterministic split of a group ``key`` (e.g. a patient id): a SHA-256 of ``"{seed}:{key}"``
    mapped to [0, 1); below ``test_fraction`` -> test, below ``test + val`` -> validation, else train.

    Unlike a permutation of the case list, a case keeps its split when cases are added or removed
    (``--limit``, a partial download), and all volumes of one patient share a split.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:13], 16) / float(16**13)
    if h < test_fraction:
        return "test"
    return "validation" if h < test_fraction + val_fraction else "train"


def normalize_split(name: str) -> str | None:
    """``"valid"`` / ``"val"`` -> ``"validation"``, ``"Tr"`` -> ``"train"``, ...; None when unknown."""
    return _SPLIT_ALIASES.get(str(name).strip().lower())


def safe_name(text: str, max_len: int = 80) -> str:
    """A file-name safe key: ASCII-folded, lower case, runs of other characters -> ``_``."""
    s = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii").lower()
    s = re.sub(r"[^a-z0-9.+-]+", "_", s).strip("._")
    return s[:max_len] or "unnamed"


def clean_text(text: Any) -> str:
    """Report text with whitespace runs (newlines included) collapsed; ``""`` for NaN / None."""
    if text is None:
        return ""
    s = str(text)
    if s.strip().lower() in ("", "nan", "none"):
        return ""
    return re.sub(r"\s+", " ", s).strip()


def metadata_path_ok(rel: Any) -> bool:
    """A path from a dataset's metadata (CSV / JSON) may only name a file under the raw folder: an
    absolute path or a ``..`` component is treated as "not found" (and so reported), never opened."""
    from LaMed.data.prepared import unsafe_relpath

    return unsafe_relpath(str(rel) if rel is not None else "") is None


def volume_stem(name: str) -> str:
    """File name without its volume suffix (``a/b/x.nii.gz`` -> ``x``)."""
    base = Path(str(name)).name
    for suf in VOLUME_SUFFIXES:
        if base.lower().endswith(suf):
            return base[: -len(suf)]
    return base


def read_csv(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (UTF-8, BOM tolerated); PrepareError naming the file and the
    missing columns when ``required`` columns are absent."""
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except OSError as exc:
        raise PrepareError(f"{path}: cannot read ({exc})") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise PrepareError(f"{path}: not a readable CSV file ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise PrepareError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"columns present: {', '.join(header) or 'none'}"
        )
    return rows


def find_files(root: Path, suffixes: Sequence[str] = VOLUME_SUFFIXES) -> dict[str, list[Path]]:
    """Index of the files under ``root`` with one of ``suffixes`` (lower-case match), by base name.
    Hidden files and folders are skipped; one walk of the tree."""
    index: dict[str, list[Path]] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and f.lower().endswith(tuple(suffixes)):
                index.setdefault(f, []).append(Path(dirpath) / f)
    return index


def _fingerprint(paths: Iterable[str]) -> list[list[int]]:
    fp = []
    for p in paths:
        try:
            s = Path(p).stat()
            fp.append([int(s.st_size), int(s.st_mtime_ns)])
        except OSError:
            fp.append([0, 0])
    return fp


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so that values compare equal to what a record file gives back."""
    return json.loads(json.dumps(obj))


def _preset_params(preset) -> dict:
    d = dataclasses.asdict(preset)
    d.pop("description", None)
    return _jsonable(d)


# --------------------------------------------------------------------------- item assembly


def merge_item(computed: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest item: computed fields (image, masks, boxes, ...) plus the metadata fields.

    Referring expressions whose target has no mask (absent or emptied by downsampling) are dropped,
    since a referring-segmentation sample without a mask cannot be trained on."""
    item = dict(computed)
    for k, v in meta.items():
        if k not in item:
            item[k] = v
    masks = item.get("masks") or {}
    if "refer" in item:
        refer = [r for r in item["refer"] if r.get("target") in masks]
        if refer:
            item["refer"] = refer
        else:
            item.pop("refer")
    return item


def _case_task(t: dict) -> dict:
    """Load, preprocess and write one case (runs in a worker process)."""
    from LaMed.data.phantom import mask_box
    from LaMed.data.prepare import check_prepared_contrast, record_path
    from LaMed.data.prepared import write_image, write_json_atomic, write_mask
    from LaMed.data.transforms import apply_preset

    case = t["case"]
    try:
        prep = resolve_preparer(t["preparer"])
        out = Path(t["out"])
        loaded = prep.load(case)
        image = np.asarray(loaded.image)
        masks_in = {k: np.asarray(v) for k, v in (loaded.masks or {}).items()}
        res = apply_preset(t["preset"], image, loaded.spacing, masks_in or None)
        check_prepared_contrast(image, res["image"], loaded.spacing, t["preset"].name)
        cid = case["id"]
        computed: dict[str, Any] = {"id": cid, "image": write_image(out, cid, res["image"])}
        files = 1
        computed["spacing"] = [round(float(s), 6) for s in res["spacing"]]
        computed["shape"] = list(res["image"].shape)
        computed["preset"] = t["preset"].name
        computed["source"] = case["source"]
        computed["source_shape"] = [int(s) for s in image.shape]
        computed["source_spacing"] = [round(float(s), 6) for s in loaded.spacing]
        if res.get("crop") is not None:
            computed["crop"] = [int(v) for v in res["crop"]]
        # A structure can vanish when a thin mask is downsampled: no empty mask files.
        kept = {k: v[0] for k, v in res["masks"].items() if v.any()}
        if masks_in:
            computed["masks"], computed["boxes"] = {}, {}
            for name, m in kept.items():
                computed["masks"][name] = write_mask(out, cid, name, m)
                computed["boxes"][name] = mask_box(m)
                files += 1
            lost = sorted(set(masks_in) - set(kept))
            if lost:
                computed["masks_lost"] = lost
        computed.update(loaded.item)
        files += prep.after_image(case, loaded, res, out, computed)
        rec = {
            "split": t["split"],
            "params": t["params"],
            "computed_keys": sorted(computed),
            "meta": case.get("item", {}),
            "item": merge_item(computed, case.get("item", {})),
        }
        write_json_atomic(record_path(out, cid), rec)
        return {"status": "written", "id": cid, "files": files + 1}
    except Exception as exc:
        msg = str(exc)
        src = case.get("source", case.get("id"))
        if src not in msg:
            msg = f"{src}: {msg}"
        return {"status": "failed", "id": case.get("id"), "file": src, "error": f"{type(exc).__name__}: {msg}"}


def resolve_preparer(ref: str) -> Preparer:
    """``"Data.ct_rate:PREPARER"`` -> the object."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr or "PREPARER")


# --------------------------------------------------------------------------- the base class


class Preparer:
    """Base of every dataset preparer; the entry point ``lamed.preparers`` names an instance.

    Class attributes a subclass sets: ``name`` (CLI name), ``title``, ``default_preset``,
    ``raw_layout`` (one line for ``--help``), ``has_splits`` (the dataset defines its own splits;
    otherwise :func:`hash_split` with ``--val-fraction`` / ``--test-fraction`` is used),
    ``default_val_fraction`` / ``default_test_fraction``.
    """

    name = "dataset"
    title = "a public dataset"
    raw_layout = ""
    default_preset = "m3d"
    has_splits = True
    default_val_fraction = 0.1
    default_test_fraction = 0.1

    # -- to implement
    def add_dataset_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Dataset-specific options."""

    def scan(self, src: Path, args: argparse.Namespace) -> tuple[list[Case], list[dict]]:
        """Cases of the raw copy in ``src`` and the problems found (``[{"file", "error"}]``)."""
        raise NotImplementedError

    def load(self, case: dict) -> Loaded:
        """Load one case from ``case["load"]`` (runs in a worker process)."""
        raise NotImplementedError

    def after_image(self, case: dict, loaded: Loaded, result: dict, out: Path, item: dict) -> int:
        """Write extra per-case files (e.g. the 2D slice stack) and add their fields to ``item``;
        returns the number of files written. Runs in the worker after the image is written."""
        return 0

    def finish(self, out: Path, args: argparse.Namespace, cases: list[Case], summary) -> None:
        """Work done once after all cases (e.g. slice features with one model); may add errors."""

    def check_item(self, root: Path, item: dict) -> list[str]:
        """Extra validation of one manifest item's own files; returns the problems."""
        return []

    def manifest_extra(self, args: argparse.Namespace) -> dict[str, Any]:
        """Fields written at the top of every manifest (e.g. ``label_names``)."""
        return {}

    def dataset_params(self, args: argparse.Namespace) -> dict[str, Any]:
        """Options that change every case's output (part of the resume key besides the preset)."""
        return {}

    # -- command line
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = f"Prepare {self.title} into the LaMed prepared format. Raw layout: {self.raw_layout}"
        parser.add_argument("raw", nargs="?", default=None, help="the raw dataset folder (same as --in)")
        parser.add_argument("--in", dest="src", default=None, help="the raw dataset folder (as downloaded)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument(
            "--preset",
            default=None,
            help=f"preprocessing preset (default {self.default_preset!r}; see LaMed.data.transforms.list_presets())",
        )
        parser.add_argument(
            "--size",
            type=int,
            nargs=3,
            default=None,
            metavar=("D", "H", "W"),
            help="override the preset's output size, e.g. 128 256 256 for Med3DVLM",
        )
        parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
        parser.add_argument("--limit", type=int, default=None, help="at most N cases of each split (quick trials)")
        parser.add_argument("--overwrite", action="store_true", help="redo cases that are already complete")
        parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic splits and templates")
        if not self.has_splits:
            parser.add_argument(
                "--val-fraction",
                type=float,
                default=self.default_val_fraction,
                help=f"fraction of patients for validation (default {self.default_val_fraction})",
            )
            parser.add_argument(
                "--test-fraction",
                type=float,
                default=self.default_test_fraction,
                help=f"fraction of patients for test (default {self.default_test_fraction})",
            )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        self.add_dataset_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        summary = self.prepare_from_args(args)
        print(summary)
        report = summary.validation
        print(f"validation: {report}")
        return 0 if summary.failed == 0 and report.ok else 3

    def prepare(self, src: str | Path, out: str | Path, **options) -> Any:
        """Programmatic entry: the same as the command line (``options`` are the long option names
        with ``_`` instead of ``-``); returns the summary (``.validation`` holds the final check)."""
        parser = argparse.ArgumentParser(prog=f"prepare {self.name}")
        self.add_arguments(parser)
        argv = ["--in", str(src), "--out", str(out)]
        for k, v in options.items():
            flag = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                argv += [flag] if v else []
            elif isinstance(v, (list, tuple)):
                argv += [flag, *map(str, v)]
            elif v is not None:
                argv += [flag, str(v)]
        return self.prepare_from_args(parser.parse_args(argv))

    # -- the run
    def resolve_preset(self, args: argparse.Namespace, name: str | None):
        from LaMed.data.transforms import get_preset

        p = get_preset(args.preset or name or self.default_preset)
        if args.size is not None:
            if p.slices is not None:
                raise ValueError(f"--size cannot be combined with the slice preset {p.name!r}")
            if any(int(s) < 1 for s in args.size):
                raise ValueError(f"--size must be three positive sizes (D, H, W), got {args.size}")
            p = dataclasses.replace(p, size=tuple(int(s) for s in args.size))
        return p

    def prepare_from_args(self, args: argparse.Namespace):
        from LaMed.data.prepare import PrepareSummary, run_tasks, write_manifests
        from LaMed.data.prepared import write_json_atomic

        if (args.src is None) == (getattr(args, "raw", None) is None):
            raise ValueError("give the raw dataset folder once: --in RAW (or as the first argument)")
        src = Path(args.src or args.raw).resolve()
        out = Path(args.out).resolve()
        if not src.is_dir():
            raise FileNotFoundError(f"{src}: raw dataset folder not found")
        if out == src:
            raise ValueError(f"--out {out} must not be the raw folder itself")
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1 (at most N cases of each split), got {args.limit}")
        self.resolve_preset(args, None)  # unknown --preset / bad --size: fail before any work
        cases, scan_errors = self.scan(src, args)
        cases = [c for c in cases if out not in Path(c.source).parents]
        if not cases and not scan_errors:
            raise PrepareError(f"{src}: no {self.title} case found; expected layout: {self.raw_layout or 'see --help'}")
        seen: dict[str, Case] = {}
        for c in cases:
            if c.id in seen:
                raise PrepareError(f"two cases share the id {c.id!r}: {seen[c.id].source} and {c.source}")
            seen[c.id] = c
        if args.limit is not None:
            by_split: dict[str, list[Case]] = {}
            for c in sorted(cases, key=lambda c: c.id):
                by_split.setdefault(c.split, []).append(c)
            cases = [c for v in by_split.values() for c in v[: int(args.limit)]]
        out.mkdir(parents=True, exist_ok=True)
        ref = f"{type(self).__module__}:{self._entry_attr()}"
        dparams = _jsonable(self.dataset_params(args))
        tasks = []
        for c in sorted(cases, key=lambda c: c.id):
            preset = self.resolve_preset(args, c.preset)
            params = {
                "preset": _preset_params(preset),
                "load": _jsonable(c.load),
                "fingerprint": _fingerprint(c.inputs),
                "dataset": dparams,
            }
            tasks.append(
                {
                    "id": c.id,
                    "out": str(out),
                    "split": c.split,
                    "params": params,
                    "preset": preset,
                    "preparer": ref,
                    "case": _jsonable(dataclasses.asdict(c)),
                }
            )
        if not args.overwrite:
            self._refresh_records(out, tasks)
        if args.limit is None:
            self._prune(out, {t["id"] for t in tasks})
        summary = PrepareSummary(out, what=f"{len(tasks)} {self.title} cases from {src}")
        summary.errors.extend(scan_errors)
        summary.failed += len(scan_errors)
        preset_name = self.resolve_preset(args, None).name
        manifest_args = dict(dataset=self.name, preset=preset_name, extra=self.manifest_extra(args), splits=None)
        run_tasks(
            out,
            tasks,
            _case_task,
            args.workers,
            self.name,
            None if not args.no_progress else False,
            args.overwrite,
            lambda a, b: a == b,
            summary,
            manifest_args,
        )
        n_err = len(summary.errors)
        self.finish(out, args, cases, summary)
        if len(summary.errors) != n_err:  # the finishing pass failed some cases: report them too
            from LaMed.data.prepare import write_error_report

            summary.failed += len(summary.errors) - n_err
            summary.errors.sort(key=lambda e: e["file"])
            write_error_report(out, summary.errors)
        summary.counts, summary.manifests = write_manifests(out, **manifest_args)
        summary.validation = self.validate(out)
        info = {
            "dataset": self.name,
            "title": self.title,
            "source": str(src),
            "preset": preset_name,
            "counts": summary.counts,
            "failed": summary.failed,
            "options": _jsonable(
                {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("src", "raw", "out")}
            ),
            "validation_ok": summary.validation.ok,
        }
        # Not beside the manifests: every *.json there is read as a split manifest.
        write_json_atomic(out / "meta" / "dataset.json", info)
        return summary

    def _entry_attr(self) -> str:
        mod = sys.modules[type(self).__module__]
        for k, v in vars(mod).items():
            if v is self:
                return k
        raise RuntimeError(f"{type(self).__name__} instance is not a module attribute; workers cannot find it")

    def _refresh_records(self, out: Path, tasks: list[dict]) -> None:
        """Records whose volume is up to date but whose metadata or split changed are rewritten
        (no volume is reprocessed for a corrected report or a new split seed)."""
        from LaMed.data.prepare import read_record, record_path
        from LaMed.data.prepared import write_json_atomic

        for t in tasks:
            rec = read_record(out, t["id"])
            if rec is None or rec.get("params") != _jsonable(t["params"]):
                continue
            meta = t["case"].get("item", {})
            if rec.get("split") == t["split"] and rec.get("meta") == meta:
                continue
            keys = rec.get("computed_keys") or list(rec["item"])
            computed = {k: rec["item"][k] for k in keys if k in rec["item"]}
            rec.update(split=t["split"], meta=meta, item=merge_item(computed, meta))
            write_json_atomic(record_path(out, t["id"]), rec)

    def _prune(self, out: Path, keep: set) -> None:
        """A full scan defines the dataset: records (and files) of cases it no longer lists go."""
        for p in (out / "records").glob("*.json"):
            if p.stem not in keep:
                p.unlink(missing_ok=True)
                (out / "images" / f"{p.stem}.npy").unlink(missing_ok=True)
                shutil.rmtree(out / "masks" / p.stem, ignore_errors=True)
                for sub in self.extra_folders:
                    (out / sub / f"{p.stem}.npy").unlink(missing_ok=True)

    extra_folders: tuple[str, ...] = ()

    def validate(self, out: Path):
        """``validate_prepared`` plus the preparer's own per-item checks; never raises."""
        from LaMed.data.prepared import PreparedError, load_manifest, validate_prepared

        try:
            report = validate_prepared(out, raise_on_error=False)
        except PreparedError as exc:
            from LaMed.data.prepared import PreparedReport

            report = PreparedReport(out)
            report.problems.append(str(exc))
            return report
        for mpath in sorted(out.glob("*.json")):
            if mpath.name == "errors.json":
                continue
            try:
                m = load_manifest(mpath)
            except PreparedError:
                continue
            for i, item in enumerate(m["items"]):
                for problem in self.check_item(out, item):
                    report.problems.append(f"{mpath.name} items[{i}] ({item.get('id')}): {problem}")
        return report


def check_npy(root: Path, rel: str, shape_prefix: Sequence[int | None], dtype=None) -> str | None:
    """None when ``root/rel`` loads as an array whose leading dimensions match ``shape_prefix``
    (``None`` = any size) and ``dtype``; else the problem."""
    path = root / rel
    if not path.is_file():
        return f"{path}: file not found"
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return f"{path}: cannot be read as .npy ({exc})"
    if arr.ndim != len(shape_prefix) or any(e is not None and e != s for e, s in zip(shape_prefix, arr.shape)):
        return f"{path}: expected shape {tuple(shape_prefix)}, got {arr.shape}"
    if dtype is not None and arr.dtype != np.dtype(dtype):
        return f"{path}: expected dtype {np.dtype(dtype)}, got {arr.dtype}"
    return None
