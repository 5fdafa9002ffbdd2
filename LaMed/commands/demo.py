"""``lamed demo``: the main job on the embedded default (synthetic phantoms), offline, on CPU.

For now it prepares a small phantom set and prints what it wrote; the CLIP, report/VQA and
segmentation stages are added by their issues.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--n", type=int, default=16, help="number of phantoms (default 16)")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 256, 256), metavar=("D", "H", "W"))
    parser.add_argument("--quick", action="store_true", help="a reduced run for tests")


def run(args: argparse.Namespace) -> int:
    from LaMed.data.prepare import prepare_phantoms

    out = Path(args.out)
    n = 8 if args.quick else args.n
    shape = (16, 64, 64) if args.quick else tuple(args.shape)
    summary = prepare_phantoms(out / "phantoms", n=n, shape=shape, seed=0)
    print(summary)
    return 0
