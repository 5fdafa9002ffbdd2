"""``lamed demo``: the main job on the embedded default (synthetic phantoms), offline, on CPU.

    lamed demo --out demo_out                         # full demo (about 42 CPU minutes)
    lamed demo --out demo_quick --quick               # reduced run of the test-suite (about 16 minutes)
    lamed demo --out demo_out --real-data ../shared/data/totalsegmentator   # + a real labelled CT

Generates a phantom set, trains a tiny CLIP, a tiny report/VQA model, a tiny text-prompted
segmentation model and a tiny reasoning-segmentation model with the tiny twins of the published
recipes, evaluates each with Bench on the held-out phantoms and writes ``report.md`` (read it first), ``metrics.json`` and ``figures/``.
Exit status 0 when every learned-above-chance check passes, 3 when one fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from LaMed.demo import run_demo
from LaMed.demo.config import FULL, PARTS, QUICK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="the reduced run of the test-suite (about 16 CPU minutes)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 3 when a model does not beat chance by its margin (default: report it, exit 0)",
    )
    parser.add_argument(
        "--real-data",
        default=None,
        metavar="DIR",
        help="folder with <name>.nii.gz + <name>_seg.nii.gz + labels.json (TotalSegmentator layout): "
        "also segment and fine-tune on this real CT",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=None,
        choices=PARTS,
        help="run only these parts (default: all)",
    )
    parser.add_argument("--n", type=int, default=None, help="number of phantoms (default 120; --quick 48)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("D", "H", "W"),
        help="phantom size in voxels (default 32 64 64, the tiny recipes' input)",
    )
    parser.add_argument(
        "--steps",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="scale every training's step count (e.g. 0.5 for a faster, weaker run)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default 1: tiny models, shared machines)"
    )
    parser.add_argument("--seed", type=int, default=None, help="phantom seed (default 0)")


def config_from_args(args: argparse.Namespace):
    """The :class:`~LaMed.demo.config.DemoConfig` that the command line asks for."""

    cfg = QUICK if args.quick else FULL
    changes = {}
    if args.parts:
        changes["parts"] = list(args.parts)
    if args.n is not None:
        changes["n_phantoms"] = args.n
    if args.shape is not None:
        changes["shape"] = tuple(args.shape)
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.steps != 1.0:
        if args.steps <= 0:
            raise ValueError(f"--steps: a positive factor, got {args.steps}")
        for key in (
            "clip_steps",
            "mllm_steps",
            "seg_steps",
            "seg_presence_steps",
            "reason_steps",
            "reason_absent_steps",
            "real_steps",
        ):
            changes[key] = max(1, round(getattr(cfg, key) * args.steps))
    return cfg.replace(**changes)


def run(args: argparse.Namespace) -> int:

    cfg = config_from_args(args)
    metrics = run_demo(cfg, args.out, real_data=args.real_data, quick=args.quick)
    out = Path(args.out)
    print(
        f"\nWrote {out / 'report.md'} (read it first), {out / 'metrics.json'} and {out / 'figures'}/ "
        f"in {metrics['wall_seconds'] / 60:.1f} min."
    )
    failed = [name for name, c in metrics["checks"].items() if not c["passed"]]
    for name, c in metrics["checks"].items():
        print(
            f"  {'pass' if c['passed'] else 'FAIL'}  {name}: {c['score']:.3f} (chance {c['chance']:.3f}, needed {c['needed']:.3f})"
        )
    if failed:
        print(
            f"{len(failed)} of {len(metrics['checks'])} learning checks did not reach their margin "
            f"(see report.md).{' Exit status 3 (--strict).' if args.strict else ''}"
        )
    return 3 if failed and args.strict else 0
