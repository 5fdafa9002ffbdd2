"""``lamed prepare``: write data in the prepared format of docs/architecture.md (Contracts).

Built in: ``phantoms`` (the embedded synthetic default) and ``volumes`` (any folder of NIfTI /
DICOM / NRRD / MHA / npy volumes through a named preset). Public datasets are added by the
``Data`` package through the ``lamed.preparers`` entry-point group: each entry point names an
object with ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points

from LaMed.data.prepare import prepare_phantoms, prepare_volumes


def _dataset_preparers():
    return {ep.name: ep for ep in entry_points(group="lamed.preparers")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)

    p = sub.add_parser("phantoms", help="synthetic CT-like phantoms with masks, reports, VQA and referring texts")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=64, help="number of phantoms in total (default 64)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(32, 256, 256),
        metavar=("D", "H", "W"),
        help="volume size in voxels (default 32 256 256)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first phantom (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.125, help="fraction held out for validation")
    p.add_argument("--test-fraction", type=float, default=0.125, help="fraction held out for test")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument(
        "--preset",
        default=None,
        help="map through this preprocessing preset (crop + resize) instead of the plain "
        "[-160, 240] HU window at the drawn size",
    )
    p.add_argument("--overwrite", action="store_true", help="redraw phantoms that are already complete")
    p.set_defaults(_run=_run_phantoms)

    v = sub.add_parser("volumes", help="a folder of NIfTI / DICOM series / NRRD / MHA / npy volumes")
    v.add_argument("--in", dest="src", required=True, help="input folder (searched recursively)")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--preset", default="m3d", help="preprocessing preset (see LaMed.data.transforms.list_presets)")
    v.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    v.add_argument("--split", default="all", help="split name written in the manifest (default 'all')")
    v.add_argument("--overwrite", action="store_true", help="redo files whose output already exists")
    v.add_argument("--limit", type=int, default=None, help="only the first N volumes (quick trials; N >= 1)")
    v.add_argument(
        "--series-uid", default=None, help="SeriesInstanceUID to read from a DICOM folder that holds several series"
    )
    v.add_argument(
        "--resample-slice-gaps",
        action="store_true",
        help="resample a DICOM series with uneven slice spacing (e.g. a missing slice) linearly onto a "
        "uniform grid instead of refusing it (the missing slices are interpolated, not measured)",
    )
    v.set_defaults(_run=_run_volumes)

    for name, ep in sorted(_dataset_preparers().items()):
        # No option parsing here (prefix_chars that never occur, no -h): every argument, --help
        # included, is handed to the preparer's own parser in _run_dataset. Building that parser
        # only for the chosen dataset keeps `lamed prepare --help` from importing every preparer.
        d = sub.add_parser(name, help=f"public dataset '{name}' (from {ep.value})", prefix_chars="\x00", add_help=False)
        d.set_defaults(_entry_point=ep)
        d.add_argument("rest", nargs="*")
        d.set_defaults(_run=_run_dataset)


def run(args: argparse.Namespace) -> int:
    return args._run(args)


def _run_phantoms(args) -> int:

    summary = prepare_phantoms(
        args.out,
        n=args.n,
        shape=tuple(args.shape),
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        workers=args.workers,
        preset=args.preset,
        overwrite=args.overwrite,
    )
    print(summary)
    return 0 if summary.failed == 0 else 3


def _run_volumes(args) -> int:

    summary = prepare_volumes(
        args.src,
        args.out,
        preset=args.preset,
        workers=args.workers,
        split=args.split,
        overwrite=args.overwrite,
        limit=args.limit,
        series_uid=args.series_uid,
        resample_slice_gaps=args.resample_slice_gaps,
    )
    print(summary)
    return 0 if summary.failed == 0 else 3


def _run_dataset(args) -> int:
    preparer = args._entry_point.load()
    parser = argparse.ArgumentParser(prog=f"lamed prepare {args._entry_point.name}")
    preparer.add_arguments(parser)
    return int(preparer.run(parser.parse_args(args.rest)) or 0)
