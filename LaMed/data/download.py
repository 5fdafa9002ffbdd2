"""Download the public datasets (and open_clip models) hosted on the Hugging Face Hub.

``download_dataset(name, out)`` fetches the files of a known dataset with
``huggingface_hub.snapshot_download`` into the local Hugging Face cache and links them into
``out`` in the repository's own layout, which is the raw layout ``lamed prepare <name> --in out``
expects:

* ``allow_patterns`` per *part* of a dataset (e.g. CT-RATE ``metadata`` = the report, label and
  metadata CSVs, a few MB; ``valid`` / ``train`` = the volumes, terabytes), plus ``--include``;
* interrupted downloads resume: huggingface_hub keeps partial blobs in the cache and completes
  them on the next call; files already in the cache are not fetched again;
* ``HF_HUB_OFFLINE=1`` (or ``offline=True``) only uses the cache, and a dataset that is not cached
  gives a clear message instead of a network timeout;
* gated datasets (CT-RATE, BIMCV-R, FLARE) need an accepted licence on the Hub and a token
  (``HF_TOKEN`` or ``huggingface-cli login``); the error says so;
* ``extract=True`` unpacks the ``.zip`` archives some datasets ship (M3D-Seg, BIMCV-R).

The cache location follows ``HF_HUB_CACHE`` / ``HF_HOME`` read at call time (so a test or a
launcher can point it elsewhere after ``huggingface_hub`` was imported), or ``cache_dir``.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from LaMed.utils.atomic import atomic_write_text

__all__ = ["HubDataset", "DATASETS", "DownloadError", "hub_snapshot", "download_dataset", "list_datasets"]


class DownloadError(RuntimeError):
    """A download that cannot be done (offline and not cached, gated, unknown repository)."""


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hub: its repository and the file patterns of each part."""

    name: str
    repo_id: str
    parts: dict[str, tuple[str, ...]]
    default_parts: tuple[str, ...]
    gated: bool = False
    notes: str = ""
    repo_type: str = "dataset"


DATASETS: dict[str, HubDataset] = {
    d.name: d
    for d in (
        HubDataset(
            "ct_rate",
            "ibrahimhamamci/CT-RATE",
            parts={
                "metadata": (
                    "dataset/radiology_text_reports/*",
                    "dataset/multi_abnormality_labels/*",
                    "dataset/metadata/*",
                ),
                "valid": ("dataset/valid_fixed/*",),
                "train": ("dataset/train_fixed/*",),
            },
            default_parts=("metadata", "valid"),
            gated=True,
            notes="about 25k volumes; 'train' is several TB. The *_fixed folders carry corrected headers and HU.",
        ),
        HubDataset(
            "radgenome",
            "RadGenome/RadGenome-ChestCT",
            parts={
                "metadata": ("dataset/radgenome_files/*",),
                "valid": ("dataset/valid_preprocessed/*",),
                "train": ("dataset/train_preprocessed/*",),
            },
            default_parts=("metadata", "valid"),
            gated=True,
        ),
        HubDataset(
            "bimcv_r",
            "cyd0806/BIMCV-R",
            parts={"metadata": ("*.csv",), "volumes": ("CT*",)},
            default_parts=("metadata", "volumes"),
            gated=True,
            notes="access is granted on application; the volumes come as zip archives (use --extract).",
        ),
        HubDataset(
            "flare25",
            "FLARE-MedFM/FLARE-Task5-MLLM-3D",
            parts={
                "metadata": ("*.json", "*/*.json", "README.md"),
                "train": ("train/*",),
                "validation": ("validation/*",),
            },
            default_parts=("metadata", "train", "validation"),
            gated=True,
        ),
        HubDataset(
            "m3d_cap",
            "GoodBaiBai88/M3D-Cap",
            parts={"metadata": ("*.json",), "images": ("*",)},
            default_parts=("metadata", "images"),
        ),
        HubDataset(
            "m3d_vqa",
            "GoodBaiBai88/M3D-VQA",
            parts={"metadata": ("*.csv", "*/*.csv")},
            default_parts=("metadata",),
            notes="the questions only; the images are M3D-Cap's (download m3d_cap too).",
        ),
        HubDataset(
            "m3d_seg",
            "GoodBaiBai88/M3D-Seg",
            parts={"metadata": ("*.json", "*/*.json"), "data": ("*",)},
            default_parts=("metadata", "data"),
            notes="one zip per source dataset (0000..0024); use --include to pick some, --extract to unpack.",
        ),
        HubDataset(
            "m3d_refseg",
            "GoodBaiBai88/M3D-RefSeg",
            parts={"all": ("*",)},
            default_parts=("all",),
        ),
        HubDataset(
            "biomedsegfm",
            "junma/CVPR-BiomedSegFM",
            parts={
                "metadata": ("*.json",),
                "train": ("3D_train_npz_all/*",),
                "validation": ("3D_val_npz/*", "3D_val_gt/*"),
            },
            default_parts=("metadata", "validation"),
            notes="'train' is about 1 TB; --include '3D_train_npz_all/CT/*' picks one modality.",
        ),
    )
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return bool(offline)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir(cache_dir: str | None) -> str | None:
    if cache_dir:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


def hub_snapshot(
    repo_id: str,
    repo_type: str = "dataset",
    allow_patterns: Sequence[str] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    offline: bool | None = None,
    token: str | None = None,
    max_workers: int = 8,
) -> Path:
    """The local snapshot folder of a Hub repository, downloading the files matching
    ``allow_patterns`` first unless offline. Raises :class:`DownloadError` with a readable message."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download

    off = _offline(offline)
    cache = _cache_dir(cache_dir)
    try:
        path = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            cache_dir=cache,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            local_files_only=off,
            token=token,
            max_workers=max_workers,
        )
    except hf_errors.LocalEntryNotFoundError:
        where = cache or "the default Hugging Face cache"
        if off:
            raise DownloadError(
                f"{repo_type} {repo_id!r} is not in the local cache ({where}) and downloads are disabled "
                f"(HF_HUB_OFFLINE=1 / --offline). Download it on a machine with internet access "
                f"(`lamed download ...` there, then copy the cache folder), or unset HF_HUB_OFFLINE."
            ) from None
        raise DownloadError(
            f"{repo_type} {repo_id!r}: the Hub cannot be reached and nothing is cached in "
            f"{where}; check the network or set HF_HUB_OFFLINE=1 with a filled cache"
        ) from None
    except hf_errors.GatedRepoError:
        raise DownloadError(
            f"{repo_type} {repo_id!r} is gated: accept its conditions on "
            f"https://huggingface.co/datasets/{repo_id} and log in (`huggingface-cli login` "
            f"or HF_TOKEN)"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise DownloadError(f"{repo_type} {repo_id!r} not found on the Hub (or private: log in first)") from None
    except hf_errors.HfHubHTTPError as exc:
        raise DownloadError(
            f"{repo_type} {repo_id!r}: download failed ({exc}); re-run the same command to resume"
        ) from None
    return Path(path)


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) for p in patterns)


def _materialize(snapshot: Path, out: Path, patterns: Sequence[str], copy: bool) -> tuple[int, int]:
    """Link (or copy) the snapshot files matching ``patterns`` into ``out``; returns (files, bytes)."""
    n, size = 0, 0
    for root, dirs, files in os.walk(snapshot):
        dirs[:] = [d for d in dirs if d != ".cache"]
        for f in files:
            src = Path(root) / f
            rel = src.relative_to(snapshot).as_posix()
            if patterns and not _matches(rel, patterns):
                continue
            dst = out / rel
            real = src.resolve()
            if dst.exists() or dst.is_symlink():
                if dst.resolve() == real or (copy and dst.stat().st_size == real.stat().st_size):
                    n += 1
                    size += real.stat().st_size
                    continue
                dst.unlink()
            dst.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(real, dst)
            else:
                os.symlink(real, dst)
            n += 1
            size += real.stat().st_size
    return n, size


def _extract_zips(out: Path) -> int:
    """Unpack every ``*.zip`` under ``out`` beside itself (``a/b.zip`` -> ``a/b/``); a marker
    file makes it resumable. Returns the number of archives unpacked now."""
    done = 0
    for z in sorted(out.rglob("*.zip")):
        target = z.with_suffix("")
        marker = target / ".extracted"
        if marker.is_file():
            continue
        try:
            with zipfile.ZipFile(z) as zf:
                for member in zf.namelist():  # refuse paths escaping the target folder
                    dest = (target / member).resolve()
                    if target.resolve() not in dest.parents and dest != target.resolve():
                        raise DownloadError(f"{z}: archive member {member!r} escapes the target folder")
                zf.extractall(target)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{z}: not a valid zip archive ({exc}); delete it and download again") from None
        atomic_write_text(marker, "ok\n")
        done += 1
    return done


@dataclass
class DownloadSummary:
    name: str
    repo_id: str
    snapshot: Path
    out: Path | None
    patterns: list[str]
    files: int = 0
    bytes: int = 0
    extracted: int = 0
    notes: str = ""

    def __str__(self) -> str:
        lines = [
            f"{self.name}: {self.repo_id} -> {self.out or self.snapshot}",
            f"  patterns: {', '.join(self.patterns) or '(all files)'}",
            f"  files: {self.files} ({self.bytes / 1e6:.1f} MB), cached in {self.snapshot}",
        ]
        if self.extracted:
            lines.append(f"  archives unpacked: {self.extracted}")
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)


def download_dataset(
    name: str,
    out: str | Path | None = None,
    parts: Sequence[str] | None = None,
    include: Sequence[str] = (),
    revision: str | None = None,
    cache_dir: str | None = None,
    offline: bool | None = None,
    copy: bool = False,
    extract: bool = False,
    token: str | None = None,
    max_workers: int = 8,
) -> DownloadSummary:
    """Fetch ``parts`` (default: the dataset's ``default_parts``) plus ``include`` patterns of the
    dataset ``name`` and link them into ``out`` (symlinks into the cache; ``copy=True`` copies)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    ds = DATASETS[name]
    chosen = list(parts) if parts else list(ds.default_parts)
    if "all" in chosen and "all" not in ds.parts:
        chosen = list(ds.parts)
    bad = [p for p in chosen if p not in ds.parts]
    if bad:
        raise ValueError(f"{name}: unknown part(s) {', '.join(bad)}; parts: {', '.join(ds.parts)} (or 'all')")
    patterns = [pat for p in chosen for pat in ds.parts[p]] + list(include)
    # fnmatch's '*' crosses '/', so 'dataset/valid_fixed/*' selects the whole sub-tree.
    snap = hub_snapshot(ds.repo_id, ds.repo_type, patterns, revision, cache_dir, offline, token, max_workers)
    summary = DownloadSummary(name, ds.repo_id, snap, Path(out) if out else None, patterns, notes=ds.notes)
    target = Path(out) if out else snap
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        summary.files, summary.bytes = _materialize(snap, Path(out), patterns, copy)
    else:
        for root, _, files in os.walk(snap):
            for f in files:
                rel = (Path(root) / f).relative_to(snap).as_posix()
                if _matches(rel, patterns):
                    summary.files += 1
                    summary.bytes += (Path(root) / f).resolve().stat().st_size
    if summary.files == 0:
        where = "the local cache" if _offline(offline) else "the repository"
        raise DownloadError(
            f"{name}: no file of {ds.repo_id} matches {patterns} in {where}"
            + (" (offline: download these parts first)" if _offline(offline) else "")
        )
    if extract:
        if out is None:
            raise ValueError("extract needs an output folder (the cache is read-only)")
        summary.extracted = _extract_zips(target)
    return summary
