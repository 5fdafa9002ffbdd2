"""Absent organs: what prompts for absent structures and the presence stage buy, and what they cost.

    python -m Bench.absent_ablation --out runs/absent_ablation            # the documented run (~40 CPU min)
    python -m Bench.absent_ablation --out X --n 12 --heldout 8 --steps 3 --presence-steps 2   # smoke run

Trains the tiny SegVol three ways on the same synthetic phantoms (``--n``, seeds from 0), all with the
same number of optimizer steps (``--steps`` then ``--presence-steps`` at the presence recipe's rate):

* ``no absent prompts`` -- stage 1 without absent prompts, stage 2 the same fine-tuning with neither
  absent prompts nor the presence loss (the control the Dice is compared with);
* ``absent prompts`` -- stage 1 with a prompt for every organ a phantom lacks (empty target), stage 2
  the same fine-tuning without the presence loss;
* ``absent prompts + presence`` -- stage 1 with absent prompts, stage 2 ``tiny_segvol_presence``.

Each model is scored by :func:`Bench.run_seg.run_seg` on held-out phantoms (``--heldout``, seeds
after the training set's: about half calibrate the presence rule, the rest are the test), every organ prompted
on every phantom: Dice over the present organs, detection precision / recall / F1 over all prompts,
removed organs reported absent, Dice on the true positives (BiomedSegFM) and the AUROC of the
presence probability. The always-present row is
what a model that never says "absent" gets. Writes ``summary.json`` and ``summary.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CLASSES = ("liver", "spleen", "kidney_left", "kidney_right")
VARIANTS = (
    # name, stage-1 absent prompts, stage-2 recipe overrides
    ("no absent prompts", "none", {"presence_weight": 0.0, "absent": "none"}),
    ("absent prompts", "missing", {"presence_weight": 0.0, "absent": "missing"}),
    ("absent prompts + presence", "missing", {}),
)


def _stage_yaml(classes: Sequence[str], absent: str, presence_weight: float | None = None) -> str:
    text = "model:\n  config_overrides:\n    train_prompt_types: [text]\n"
    if presence_weight is not None:
        text += f"    presence_weight: {presence_weight}\n"
    text += f"data:\n  classes: [{', '.join(classes)}]\n  max_classes: {len(classes)}\n  absent: {absent}\n"
    return text


def _presence_auroc(out: Path) -> float | None:
    from LaMed.metrics.classification import roc_auc

    rows = [json.loads(line) for line in (out / "presence.jsonl").read_text(encoding="utf-8").splitlines()]
    truth = [bool(r["gt_present"]) for r in rows]
    if all(truth) or not any(truth):
        return None
    return float(roc_auc(np.asarray(truth, float), np.asarray([r["presence_probability"] for r in rows])))


def run_ablation(
    out: str | Path,
    n: int = 1200,
    heldout: int = 300,
    steps: int = 1000,
    presence_steps: int = 1800,
    classes: Sequence[str] = CLASSES,
    shape: Sequence[int] = (32, 64, 64),
    learning_rate: float = 3e-3,
) -> dict:
    """Train and score the three variants (module docstring); returns the summary written to ``out``."""
    from Bench.run_seg import run_seg
    from LaMed.data.prepare import prepare_phantoms
    from LaMed.demo.stages import train_recipe
    from LaMed.utils.atomic import atomic_write_text, write_json_atomic

    out = Path(out)
    train, held = out / "phantoms", out / "heldout"
    prepare_phantoms(train, n, shape=shape, seed=0, val_fraction=0.0, test_fraction=0.0, progress=False)
    prepare_phantoms(held, heldout, shape=shape, seed=n, val_fraction=0.5, test_fraction=0.45, progress=False)
    stage1_runs: dict[str, Path] = {}
    rows = []
    for name, absent, stage2 in VARIANTS:
        slug = name.replace(" + ", "_").replace(" ", "_")
        if absent not in stage1_runs:
            stage1_runs[absent] = out / f"stage1_absent_{absent}"
            train_recipe(
                "tiny_segvol",
                stage1_runs[absent],
                steps,
                ["--train_manifest", str(train / "train.json"), "--learning_rate", str(learning_rate)],
                yaml_extra=_stage_yaml(classes, absent),
            )
        model_dir = out / slug
        train_recipe(
            "tiny_segvol_presence",
            model_dir,
            presence_steps,
            ["--train_manifest", str(train / "train.json"), "--init_from", str(stage1_runs[absent])],
            yaml_extra=_stage_yaml(classes, stage2.get("absent", "missing"), stage2.get("presence_weight")),
        )
        scored = run_seg(
            model_dir,
            held / "test.json",
            out / f"{slug}_eval",
            classes=list(classes),
            progress=False,
            absent="missing",
            calibration=held / "validation.json",
        )
        det = scored["detection"]
        rows.append(
            {
                "variant": name,
                "dice_present": scored["overall"]["dice"],
                # BiomedSegFM's segmentation score: Dice over the present prompts reported present (a
                # present organ reported absent counts in recall, not twice)
                "dice_tp": det.get("dice_tp"),
                "presence_auroc": _presence_auroc(out / f"{slug}_eval"),
                "absent_reported": det["tn"] / (det["tn"] + det["fp"]) if det["tn"] + det["fp"] else None,
                **{k: det[k] for k in ("f1", "precision", "recall", "tp", "fp", "fn", "tn")},
            }
        )
    present, absent_n = rows[0]["tp"] + rows[0]["fn"], rows[0]["tn"] + rows[0]["fp"]
    chance = {
        "variant": "always present (chance)",
        "f1": 2 * present / (2 * present + absent_n),
        "precision": present / (present + absent_n),
        "recall": 1.0,
        "absent_reported": 0.0,
        "presence_auroc": 0.5,
    }
    summary = {
        "settings": {
            "n": n,
            "heldout": heldout,
            "steps": steps,
            "presence_steps": presence_steps,
            "classes": list(classes),
            "shape": list(shape),
        },
        "prompts": {"present": present, "absent": absent_n},
        "variants": rows,
        "chance": chance,
        "dice_difference": rows[2]["dice_present"] - rows[0]["dice_present"],
        "dice_tp_difference": (
            rows[2]["dice_tp"] - rows[0]["dice_tp"] if None not in (rows[0]["dice_tp"], rows[2]["dice_tp"]) else None
        ),
    }
    write_json_atomic(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", render(summary))
    return summary


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def render(summary: dict) -> str:
    p = summary["prompts"]
    lines = [
        f"# Absent organs: {p['present']} present and {p['absent']} absent prompts on held-out phantoms",
        "",
        "| variant | Dice (present) | Dice on true positives | presence AUROC | removed organs reported absent "
        "| detection F1 | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in [*summary["variants"], summary["chance"]]:
        lines.append(
            f"| {r['variant']} | {_f(r.get('dice_present'))} | {_f(r.get('dice_tp'))} | {_f(r.get('presence_auroc'))} | "
            f"{_f(r.get('absent_reported'))} | {_f(r.get('f1'))} | {_f(r.get('precision'))} | {_f(r.get('recall'))} |"
        )
    tp = summary.get("dice_tp_difference")
    lines += [
        "",
        f"Dice difference (absent prompts + presence minus control): {summary['dice_difference']:+.3f} over every "
        f"present prompt, {'-' if tp is None else f'{tp:+.3f}'} on true positives",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Absent organs: absent prompts and the presence stage, measured")
    p.add_argument("--out", required=True, help="output folder (phantoms, models, evaluations, summary)")
    p.add_argument("--n", type=int, default=1200, help="training phantoms")
    p.add_argument("--heldout", type=int, default=300, help="held-out phantoms (half calibrate, half test)")
    p.add_argument("--steps", type=int, default=1000, help="stage-1 optimizer steps")
    p.add_argument("--presence-steps", type=int, default=1800, help="stage-2 optimizer steps")
    p.add_argument("--classes", default=",".join(CLASSES), help="comma-separated organs")
    a = p.parse_args(argv)
    for name in ("n", "heldout", "steps", "presence_steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(a, name)}")
    classes = [c for c in a.classes.split(",") if c]
    summary = run_ablation(a.out, a.n, a.heldout, a.steps, a.presence_steps, classes)
    print(render(summary))
    return summary


if __name__ == "__main__":
    main()
