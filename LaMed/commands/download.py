"""``lamed download``: fetch a public dataset from the Hugging Face Hub (see :mod:`LaMed.data.download`).

lamed download ct_rate --out raw/ct_rate                      # report/label CSVs + validation volumes
lamed download ct_rate --out raw/ct_rate --parts metadata     # the CSVs only
lamed download m3d_seg --out raw/m3d_seg --include '0011*' --extract
HF_HUB_OFFLINE=1 lamed download m3d_vqa --out raw/m3d_vqa     # from the local cache only
"""

from __future__ import annotations

import argparse

from LaMed.data.download import DATASETS, DownloadError, download_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:

    lines = []
    for d in DATASETS.values():
        parts = ", ".join(f"{p}{'*' if p in d.default_parts else ''}" for p in d.parts)
        lines.append(f"  {d.name:12s} {d.repo_id}  parts: {parts}{'  (gated)' if d.gated else ''}")
    parser.epilog = "datasets (* = downloaded by default):\n" + "\n".join(lines)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("dataset", choices=sorted(DATASETS), metavar="DATASET", help="dataset name (see below)")
    parser.add_argument(
        "--out",
        default=None,
        help="folder to place the files in (the Hub layout, symlinked into the cache); "
        "default: only fill the cache and print its path",
    )
    parser.add_argument("--parts", nargs="+", default=None, help="which parts (default: the starred ones; 'all')")
    parser.add_argument(
        "--include",
        nargs="+",
        default=(),
        metavar="PATTERN",
        help="extra file patterns (fnmatch on repository paths), e.g. 'dataset/train_fixed/train_1*'",
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default HF_HUB_CACHE)")
    parser.add_argument("--offline", action="store_true", help="use the local cache only (as HF_HUB_OFFLINE=1)")
    parser.add_argument("--copy", action="store_true", help="copy files into --out instead of symlinking")
    parser.add_argument("--extract", action="store_true", help="unpack the .zip archives into --out")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")


def run(args: argparse.Namespace) -> int:

    try:
        summary = download_dataset(
            args.dataset,
            args.out,
            parts=args.parts,
            include=args.include,
            revision=args.revision,
            cache_dir=args.cache_dir,
            offline=True if args.offline else None,
            copy=args.copy,
            extract=args.extract,
            max_workers=args.workers,
        )
    except DownloadError as exc:
        print(f"lamed download: {exc}")
        return 2
    print(summary)
    if args.out:
        print(f"next: lamed prepare {args.dataset} --in {args.out} --out <prepared folder>")
    return 0
