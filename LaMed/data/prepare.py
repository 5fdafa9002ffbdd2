"""Writers of the prepared format: synthetic phantoms, and any folder of volumes through a preset.

Both run one task per case, in-process or in a pool of ``workers`` processes (each loads,
preprocesses and writes one case; BLAS / OpenMP / torch are limited to one thread per worker so
two workers really use two cores). Each finished case leaves ``records/<id>.json`` beside its
``.npy`` files, written last and atomically: a record means the case is complete. Re-running skips
complete cases (unless ``overwrite``), failures are collected into ``errors.json`` / ``errors.txt``
instead of stopping the run, and the split manifests are rebuilt from all records, including those
of earlier runs, even when the run is interrupted.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LaMed.data.io_guard import VOLUME_SUFFIXES as _VOLUME_SUFFIXES
from LaMed.data.io_guard import find_volumes as _find
from LaMed.data.prepared import (
    SPLITS,
    atomic_write_bytes,
    write_image,
    write_json_atomic,
    write_manifest,
    write_mask,
)
from LaMed.data.transforms import get_preset

__all__ = [
    "PrepareSummary",
    "prepare_phantoms",
    "prepare_volumes",
    "find_volumes",
    "split_assignment",
    "PHANTOM_WINDOW",
]

# Phantoms are mapped to [0, 1] with the abdominal soft-tissue window W400/L40 = [-160, 240] HU,
# the window of the ``m3d`` preset: a phantom contains air and bone, so the preset's min-max after
# the window is the identity, and phantoms are drawn at the target size, so the only step left
# would be the foreground crop, which we skip to keep the drawn geometry (and boxes) as they are.
PHANTOM_WINDOW = (-160.0, 240.0)
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)


@dataclass
class PrepareSummary:
    """What a prepare run did. ``str(summary)`` is a short readable report."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)  # items per split manifest (all runs)
    written: int = 0  # cases written by this run
    skipped: int = 0  # cases already complete from an earlier run
    failed: int = 0
    files_written: int = 0
    seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)  # {"file", "error"}
    manifests: list[Path] = field(default_factory=list)
    what: str = "cases"

    def __str__(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in self.counts.items()) or "none"
        lines = [
            f"prepared {self.what} in {self.out} ({self.seconds:.1f} s)",
            f"  written {self.written}, skipped {self.skipped} (already complete), failed {self.failed}",
            f"  items per split: {splits}",
            f"  files written: {self.files_written}",
        ]
        if self.errors:
            lines.append(f"  errors: see {self.out / 'errors.txt'}")
            lines += [f"    {e['file']}: {e['error']}" for e in self.errors[:5]]
            if len(self.errors) > 5:
                lines.append(f"    ... and {len(self.errors) - 5} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------- task running


@contextmanager
def _single_thread_env():
    """Environment inherited by the workers: one BLAS / OpenMP thread each (read when a spawned
    worker loads those libraries; a forked one is limited again in ``_worker_init``)."""
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker end when the process that started it dies.

    A worker forked by ``ProcessPoolExecutor`` keeps the pool's pipes open itself, so it never sees
    them close when ``lamed prepare`` is killed (kill -9, OOM killer) and would wait forever. On
    Linux the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); a watchdog
    thread checking the parent id covers other systems and the race before ``prctl`` took effect.
    """
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="lamed-parent-watchdog", daemon=True).start()


def _worker_init(parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    os.environ.update({k: "1" for k in _THREAD_VARS})
    if "torch" in sys.modules:  # only when something already imported it; never pay the import here
        sys.modules["torch"].set_num_threads(1)


def _start_method() -> str:
    """``fork`` on Linux, else ``spawn``; ``LAMED_PREPARE_START_METHOD`` overrides.

    A spawned worker pays the torch import (2-3 s CPU) before its first volume, as much as two
    volumes' work, which would eat most of a 2-worker speed-up. A forked worker starts at once; it
    is safe here for the same reason it is in torch's DataLoader: the worker limits torch to one
    thread (``_worker_init``), so it never enters the parent's OpenMP pool.
    """
    forced = os.environ.get("LAMED_PREPARE_START_METHOD")
    if forced:
        return forced
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _run_tasks(
    fn: Callable[[dict], dict], tasks: Sequence[dict], workers: int, desc: str, progress: bool | None
) -> Iterator[dict]:
    """Yield ``fn(task)`` for every task (in completion order); a crashed worker yields a failure."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="vol", disable=None if progress is None else not progress)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                yield fn(t)
                bar.update(1)
            return
        ctx = mp.get_context(_start_method())
        with _single_thread_env():
            ex = ProcessPoolExecutor(
                max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)
            )
            futures = {ex.submit(fn, t): t for t in tasks}
        try:
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except Exception as exc:  # the worker died (e.g. killed for memory)
                    t = futures[fut]
                    res = {
                        "status": "failed",
                        "id": t["id"],
                        "file": t.get("src", t["id"]),
                        "error": f"worker process failed: {type(exc).__name__}: {exc}",
                    }
                yield res
                bar.update(1)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def record_path(out: Path, item_id: str) -> Path:
    return out / "records" / f"{item_id}.json"


def read_record(out: Path, item_id: str) -> dict | None:
    p = record_path(out, item_id)
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not (out / rec.get("item", {}).get("image", "\0")).is_file():
        return None  # the image was deleted after the record was written: redo
    return rec


def write_manifests(
    out: Path, dataset: str, preset: str | None, extra: dict, splits: Iterable[str] | None = None
) -> tuple[dict[str, int], list[Path]]:
    """Rebuild ``<split>.json`` from every record in ``out/records`` (earlier runs included)."""
    by_split: dict[str, list[dict]] = {}
    for p in sorted((out / "records").glob("*.json")):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if (out / rec["item"]["image"]).is_file():
            by_split.setdefault(rec["split"], []).append(rec["item"])
    counts, paths = {}, []
    names = list(splits) if splits is not None else sorted(by_split)
    for split in names:
        items = sorted(by_split.get(split, []), key=lambda it: it["id"])
        if not items:
            (out / f"{split}.json").unlink(missing_ok=True)  # stale manifest of an earlier run
            continue
        paths.append(write_manifest(out, split, items, dataset=dataset, preset=preset, extra=extra))
        counts[split] = len(items)
    return counts, paths


def write_error_report(out: Path, errors: list[dict]) -> None:
    """This run's failures in ``errors.json`` and ``errors.txt``; a clean run removes stale reports."""
    if not errors:
        for name in ("errors.json", "errors.txt"):
            (out / name).unlink(missing_ok=True)
        return
    write_json_atomic(out / "errors.json", errors)
    text = "".join(f"{e['file']}: {e['error']}\n" for e in errors).encode("utf-8")
    atomic_write_bytes(out / "errors.txt", lambda f: f.write(text))


def run_tasks(
    out: Path,
    tasks: list[dict],
    fn,
    workers: int,
    desc: str,
    progress: bool | None,
    overwrite: bool,
    same_params: Callable[[dict, dict], bool],
    summary: PrepareSummary,
    manifest_args: dict,
) -> PrepareSummary:
    """Skip complete tasks, run the rest, then (even on interruption) write errors and manifests."""
    t0 = time.perf_counter()
    todo = []
    for t in tasks:
        rec = None if overwrite else read_record(out, t["id"])
        if rec is not None and same_params(rec.get("params", {}), t["params"]) and rec.get("split") == t["split"]:
            summary.skipped += 1
        else:
            todo.append(t)
    try:
        for res in _run_tasks(fn, todo, workers, desc, progress):
            if res["status"] == "written":
                summary.written += 1
                summary.files_written += res["files"]
            else:
                summary.failed += 1
                summary.errors.append({"file": res["file"], "error": res["error"]})
    finally:
        summary.errors.sort(key=lambda e: e["file"])
        write_error_report(out, summary.errors)
        summary.counts, summary.manifests = write_manifests(out, **manifest_args)
        summary.seconds = time.perf_counter() - t0
    return summary


# --------------------------------------------------------------------------- phantoms


def split_assignment(n: int, seed: int, val_fraction: float, test_fraction: float) -> list[str]:
    """Split name of each of ``n`` cases: a seeded permutation, the first ``round(n*test)`` to
    ``test``, the next ``round(n*val)`` to ``validation`` (half-up rounding), the rest to ``train``."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    n_test = int(math.floor(n * test_fraction + 0.5))
    n_val = int(math.floor(n * val_fraction + 0.5))
    if n_test + n_val >= n:  # tiny n: keep at least one training case
        n_val = max(0, n - 1 - n_test)
        n_test = min(n_test, n - 1 - n_val)
    order = np.random.default_rng(seed).permutation(n)
    out = ["train"] * n
    for rank, i in enumerate(order):
        out[i] = "test" if rank < n_test else ("validation" if rank < n_test + n_val else "train")
    return out


def _phantom_task(t: dict) -> dict:
    """Draw, window and write one phantom (runs in a worker process)."""
    try:
        from LaMed.data.phantom import make_phantom

        out = Path(t["out"])
        ph = make_phantom(t["seed"], shape=t["shape"])
        lo, hi = t["window"]
        img = (ph.image.astype(np.float32) - lo) / (hi - lo)
        np.clip(img, 0.0, 1.0, out=img)
        files = 0
        if t.get("preset"):
            from LaMed.data.phantom import mask_box
            from LaMed.data.transforms import apply_preset

            res = apply_preset(t["preset"], ph.image, ph.spacing, {k: v for k, v in ph.masks.items() if k != "body"})
            img, spacing = res["image"], tuple(res["spacing"])
            # Downsampling can lose a tiny lesion; an empty mask is no referring target.
            masks = {k: v[0].astype(bool) for k, v in res["masks"].items() if v.any()}
            boxes = {k: b for k, b in ((k, mask_box(m)) for k, m in masks.items()) if b is not None}
        else:
            spacing = ph.spacing
            masks = {k: v for k, v in ph.masks.items() if k != "body"}
            boxes = {k: v for k, v in ph.boxes.items() if k != "body"}
        item = {"id": t["id"], "image": write_image(out, t["id"], img)}
        files += 1
        item["spacing"] = [round(float(s), 6) for s in spacing]
        item["shape"] = [1, *np.asarray(img).shape[-3:]]
        item["masks"] = {}
        for name, m in masks.items():
            item["masks"][name] = write_mask(out, t["id"], name, m)
            files += 1
        refer = [r for r in ph.refer if r["target"] in item["masks"]]
        item.update(
            text=ph.report,
            vqa=ph.vqa,
            refer=refer,
            boxes=boxes,
            labels=ph.labels,
            source=f"synthetic phantom seed={t['seed']}",
            findings=ph.findings,
        )
        write_json_atomic(record_path(out, t["id"]), {"split": t["split"], "params": t["params"], "item": item})
        return {"status": "written", "id": t["id"], "files": files + 1}
    except Exception as exc:
        return {"status": "failed", "id": t["id"], "file": t["id"], "error": f"{type(exc).__name__}: {exc}"}


def prepare_phantoms(
    out: str | Path,
    n: int,
    shape: Sequence[int] = (32, 256, 256),
    seed: int = 0,
    val_fraction: float = 0.125,
    test_fraction: float = 0.125,
    workers: int = 1,
    window: tuple[float, float] = PHANTOM_WINDOW,
    preset: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> PrepareSummary:
    """Write ``n`` synthetic phantoms (``phantom_00000`` has seed ``seed``, the next ``seed + 1``, ...)
    in the prepared format, with train / validation / test manifests.

    Images: HU mapped linearly from ``window`` (default [-160, 240] HU, the ``m3d`` preset's window)
    to [0, 1] and clipped, stored (1, D, H, W) float16; every mask but ``body`` is stored. With
    ``preset`` (e.g. ``"m3d"``), images and masks instead go through ``apply_preset`` (foreground
    crop and resize to the preset size) and boxes are recomputed on the result.
    The split is a seeded permutation (``split_assignment``), so it is fixed by ``seed`` and ``n``.
    Complete phantoms from an earlier run with the same parameters are skipped unless ``overwrite``.
    """
    if int(n) < 1:
        raise ValueError(f"prepare_phantoms: n must be >= 1, got {n}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"prepare_phantoms: shape must be three sizes >= 4 (D, H, W), got {shape}")
    lo, hi = (float(v) for v in window)
    if not hi > lo:
        raise ValueError(f"prepare_phantoms: window must be (lo, hi) with hi > lo, got {window}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_assignment(int(n), seed, val_fraction, test_fraction)
    tasks = []
    for i in range(int(n)):
        params = {"seed": seed + i, "shape": list(shape), "window": [lo, hi], "preset": preset}
        tasks.append(
            {
                "id": f"phantom_{i:05d}",
                "out": str(out),
                "seed": seed + i,
                "shape": shape,
                "window": (lo, hi),
                "preset": preset,
                "split": splits[i],
                "params": params,
            }
        )
    # Records of phantoms beyond this run's n (an earlier, larger run) would leak into the
    # manifests; a phantom set is defined by (n, seed), so drop them.
    keep = {t["id"] for t in tasks}
    for p in (out / "records").glob("phantom_*.json"):
        if p.stem not in keep:
            p.unlink()
            (out / "images" / f"{p.stem}.npy").unlink(missing_ok=True)
            shutil.rmtree(out / "masks" / p.stem, ignore_errors=True)
    summary = PrepareSummary(out, what=f"{n} phantoms {'x'.join(map(str, shape))}")
    extra = {"window": [lo, hi]} if preset is None else {}
    return run_tasks(
        out,
        tasks,
        _phantom_task,
        workers,
        "phantoms",
        progress,
        overwrite,
        lambda a, b: a == b,
        summary,
        dict(dataset="phantom", preset=preset, extra=extra, splits=SPLITS),
    )


# --------------------------------------------------------------------------- any volumes


def find_volumes(src: str | Path) -> list[Path]:
    """Volumes under ``src`` (recursively, sorted): see :func:`LaMed.data.io_guard.find_volumes`, the
    one discovery rule shared with ``lamed predict --batch``."""

    return _find(src, recursive=True)


def _volume_id(rel: Path) -> str:
    name = rel.as_posix()
    for suf in _VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "_")).strip("._") or "volume"


def _fingerprint(p: Path) -> list[int]:
    """(size, mtime_ns) of a file, or of the newest file of a DICOM folder: an edited source is redone."""
    if p.is_dir():
        stats = [f.stat() for f in p.iterdir() if f.is_file()]
        return [sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]
    s = p.stat()
    return [s.st_size, s.st_mtime_ns]


def check_prepared_contrast(source: np.ndarray, image: np.ndarray, spacing, preset: str) -> None:
    """Refuse an item whose volume or prepared image holds no information (ValueError with the reason).

    A constant volume (every voxel equal) min-max normalises to an all-zero image, and so does a
    grid that collapses when resampled (e.g. a spacing of 0.0003 mm); both would enter the manifest
    as valid-looking all-zero images.
    """
    src = np.asarray(source)
    if src.size and src.min() == src.max():
        raise ValueError(
            f"every voxel of the volume equals {src.flat[0].item()!r}: a constant image has no contrast to prepare"
        )
    out = np.asarray(image)
    if out.size and float(out.min()) == float(out.max()):
        sp = ", ".join(f"{float(v):.4g}" for v in spacing)
        raise ValueError(
            f"the prepared image is constant ({float(out.min()):g}) after preset {preset!r} "
            f"(source spacing {sp} mm): nothing of the volume survived the preprocessing; "
            "check the spacing and the preset's window / crop"
        )


def _volume_task(t: dict) -> dict:
    """Load one volume, apply the preset, write it (runs in a worker process)."""
    try:
        from LaMed.data.io import load_volume
        from LaMed.data.transforms import apply_preset

        out = Path(t["out"])
        vol = load_volume(t["src"], series_uid=t.get("series_uid"), slice_gaps=t.get("slice_gaps", "refuse"))
        res = apply_preset(t["preset"], vol.array, vol.spacing)
        img = res["image"]
        check_prepared_contrast(vol.array, img, vol.spacing, t["preset"])
        item = {"id": t["id"], "image": write_image(out, t["id"], img)}
        item["spacing"] = [round(float(s), 6) for s in res["spacing"]]
        item["shape"] = list(np.asarray(img).shape)
        item["source"] = t["src"]
        item["source_shape"] = list(vol.shape)
        item["source_spacing"] = [round(float(s), 6) for s in vol.spacing]
        if res.get("crop") is not None:
            item["crop"] = [int(v) for v in res["crop"]]
        write_json_atomic(record_path(out, t["id"]), {"split": t["split"], "params": t["params"], "item": item})
        return {"status": "written", "id": t["id"], "files": 2}
    except Exception as exc:
        msg = str(exc)
        if t["src"] not in msg:
            msg = f"{t['src']}: {msg}"
        return {"status": "failed", "id": t["id"], "file": t["src"], "error": f"{type(exc).__name__}: {msg}"}


def prepare_volumes(
    src: str | Path,
    out: str | Path,
    preset: str = "m3d",
    workers: int = 1,
    split: str = "all",
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool | None = None,
    series_uid: str | None = None,
    resample_slice_gaps: bool = False,
) -> PrepareSummary:
    """Prepare every volume under ``src`` (see ``find_volumes``) with ``preset`` into ``out``.

    Each volume is read with ``LaMed.data.io.load_volume`` (canonical orientation), mapped with
    ``LaMed.data.transforms.apply_preset`` and written as ``images/<id>.npy`` (ids from the path
    relative to ``src``). Unreadable files are listed in ``out/errors.json`` / ``errors.txt`` with
    their message and the run goes on. ``out/<split>.json`` lists every complete volume, including
    those of earlier runs; complete volumes whose source and preset are unchanged are skipped unless
    ``overwrite``. ``limit`` takes only the first N volumes (sorted by path). ``series_uid`` picks
    one series of a DICOM folder holding several (it applies to DICOM sources only).
    ``resample_slice_gaps`` resamples a DICOM series with uneven slice spacing (a missing slice)
    onto a uniform grid instead of refusing it.

    Refused up front (ValueError / FileNotFoundError): a ``limit`` below 1 and an input with no
    volume. Refused per item (in the error report): a constant volume, or one whose prepared image
    comes out constant (:func:`check_prepared_contrast`).
    """

    get_preset(preset)  # unknown name -> KeyError listing the known presets, before any work
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        raise ValueError(f"prepare_volumes: split must be a plain name (letters, digits, _ . -), got {split!r}")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"prepare_volumes: --limit must be a whole number >= 1, got {limit}")
    src, out = Path(src).resolve(), Path(out).resolve()
    sources = [p for p in find_volumes(src) if out not in p.parents and p != out]
    if not sources:
        raise FileNotFoundError(
            f"{src}: no volumes found (looked for {', '.join(_VOLUME_SUFFIXES)} files and "
            "DICOM series folders); nothing to prepare"
        )
    if limit is not None:
        sources = sources[: int(limit)]
    out.mkdir(parents=True, exist_ok=True)
    tasks, ids = [], set()
    for p in sources:
        base = _volume_id(p.relative_to(src)) if p != src else _volume_id(Path(p.name))
        vid, k = base, 2
        while vid in ids:
            vid, k = f"{base}_{k}", k + 1
        ids.add(vid)
        try:
            fp = _fingerprint(p)
        except OSError:
            fp = [0, 0]
        dicom = p.is_dir() or p.name.lower().endswith(".dcm")
        uid = series_uid if series_uid is not None and dicom else None
        gaps = "resample" if resample_slice_gaps and dicom else "refuse"
        params = {"preset": preset, "source": str(p), "fingerprint": fp}
        if uid is not None:
            params["series_uid"] = uid
        if gaps != "refuse":
            params["slice_gaps"] = gaps
        tasks.append(
            {
                "id": vid,
                "out": str(out),
                "src": str(p),
                "preset": preset,
                "split": split,
                "series_uid": uid,
                "slice_gaps": gaps,
                "params": params,
            }
        )
    summary = PrepareSummary(out, what=f"{len(tasks)} volumes from {src} (preset {preset})")
    return run_tasks(
        out,
        tasks,
        _volume_task,
        workers,
        "volumes",
        progress,
        overwrite,
        lambda a, b: a == b,
        summary,
        dict(dataset=src.name or "volumes", preset=preset, extra={}, splits=None),
    )
