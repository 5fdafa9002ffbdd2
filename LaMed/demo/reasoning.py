"""The demo's reasoning-segmentation part: tiny R1Seg-3D in two stages, scored on removed organs too.

Stage 1 (``tiny_r1seg3d``) teaches the LLM to answer "The X is [SEG]." and the decoder to segment;
questions about organs the phantom lacks are answered in words ("... is not present in this scan.").
Stage 2 (``tiny_r1seg3d_absent``) continues it with absent-organ probes and the presence gate, whose
rule is then calibrated (Platt) on the separate calibration phantoms before the test split is scored
by ``Bench.run_reasoning_seg`` with every removed organ asked about.

Chance is a model that always answers with ``[SEG]`` (what R1Seg-3D and the other seed systems do):
no removed organ answered in words. Dice is next to an all-foreground mask per structure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from LaMed.demo import scoring
from LaMed.demo.bench import run_bench
from LaMed.demo.config import DemoConfig
from LaMed.demo.stages import calibration_split, loss_ends, split_masks, stage_record, train_recipe


def reasoning_summary(summary: dict) -> dict[str, Any]:
    """The demo's view of ``Bench.run_reasoning_seg``'s ``reasoning`` block (with negatives asked).

    ``absent_without_seg`` = the fraction of questions about removed organs answered without
    ``[SEG]`` after the presence gate (``1 - false_seg_rate``; chance 0, a model that always
    segments); ``..._llm``: the same from the LLM's own answers, before the gate."""
    r = summary["reasoning"]
    neg = int(r["negatives"])

    def _without(rate: float | None) -> float | None:
        return None if rate is None or not neg else 1.0 - float(rate)

    return {
        "present_questions": int(r["questions"]),
        "absent_questions": neg,
        "present_with_seg": float(r["seg_token_rate"]),
        "absent_without_seg": _without(r.get("false_seg_rate")),
        "present_with_seg_llm": float(r["seg_token_rate_llm"]),
        "absent_without_seg_llm": _without(r.get("false_seg_rate_llm")),
        "withdrawn": int(r.get("withdrawn", 0)),
        "chance_absent_without_seg": 0.0,
        "chance_present_with_seg": 1.0,
    }


def run_reasoning(cfg: DemoConfig, prepared: Path, work: Path) -> dict[str, Any]:
    """Train the two stages on ``prepared/train.json``, calibrate, score ``prepared/test.json``."""

    stage1, model_dir = work / "reason_stage1", work / "reason_model"
    classes = "data:\n  classes: [" + ", ".join(cfg.reason_classes) + "]\n"
    train = ["--train_manifest", str(prepared / "train.json")]
    first = train_recipe(
        cfg.reason_recipe,
        stage1,
        cfg.reason_steps,
        [*train, "--negative_repeat", str(cfg.reason_negative_repeat)],
        yaml_extra=classes,
    )
    second = None
    if cfg.reason_absent_steps:
        # The stage-2 recipe keeps the stage-1 model's architecture and tokenizer (both read from it).
        second = train_recipe(
            cfg.reason_absent_recipe,
            model_dir,
            cfg.reason_absent_steps,
            [*train, "--pretrained_model", str(stage1), "--tokenizer", str(stage1)],
            yaml_extra=classes,
        )
    else:
        model_dir = stage1
    out = work / "reason_eval"
    args = [
        "--model",
        model_dir,
        "--manifest",
        prepared / "test.json",
        "--tasks",
        "seg",
        "--classes",
        ",".join(cfg.reason_classes),
        "--negatives",
    ]
    if second is not None and cfg.calibration_phantoms:
        args += ["--calibration", calibration_split(cfg, work) / "train.json"]
    summary = run_bench("run_reasoning_seg", [*args, "--out", out], out, cfg.threads)
    chance = scoring.seg_baselines(
        split_masks(prepared, "train", cfg.reason_classes), split_masks(prepared, "test", cfg.reason_classes)
    )
    result: dict[str, Any] = {
        "recipe": cfg.reason_recipe,
        "steps": first["steps"],
        "model": str(model_dir),
        "train_seconds": first["seconds"],
        **loss_ends(first["log"]),
        "log": first["log"],
        "answers": reasoning_summary(summary),
        "per_class": {
            name: {k: float(v) for k, v in g.items() if k in ("dice", "count") and v is not None}
            for name, g in summary.get("per_class", {}).items()
        },
        "overall": {k: v for k, v in summary.get("overall", {}).items() if k in ("dice", "nsd", "count")},
        "chance": chance,
        "calibration": summary.get("presence_calibration"),
        "bench_dir": str(out),
    }
    if second is not None:
        result["absent_training"] = stage_record(cfg.reason_absent_recipe, second)
    return result
