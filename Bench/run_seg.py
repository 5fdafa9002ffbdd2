"""Model-running front end of ``Bench/eval_seg.py``: segment a prepared test split and score it.

    python -m Bench.run_seg --model runs/tiny_segvol --manifest P/test.json --out results/seg [--classes liver,spleen]
        [--absent listed|missing]

For every item of the manifest and every structure in its ``masks`` (or ``--classes``), the model
is prompted with the structure name (its own template) and run by sliding windows of its input size
over the prepared volume (one window when the prepared grid is the model's size); the volume of each
window is encoded once for all the item's prompts. Each prompt gets the model's presence decision
(:mod:`LaMed.inference.presence`: the largest logit, calibrated if the model's config carries a
calibration): a prompt decided absent is written as an empty mask, as ``lamed predict`` returns it.
``--absent`` also prompts structures absent from a volume (``listed``: the item's ``"absent"``;
``missing``: every ``--classes`` entry without a mask, for fully labelled data such as the
phantoms), so that the summary's ``detection`` (precision / recall / F1 over prompts, Dice on true
positives) is measured on present and absent prompts. Probabilities are written as
``<out>/predictions/<id>_<structure>.npy`` (float16, the prepared grid) and scored by
:func:`Bench.eval_seg.evaluate_seg` (Dice, NSD, HD95, M3D soft Dice; per class, per dataset and
overall) into ``summary.json``, ``per_sample.csv`` and ``summary.md``.

From Python: ``run_seg(model_or_path, manifest, out, classes=None)`` returns the summary dict.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from LaMed.data.seg_dataset import ABSENT_MODES, absent_structures


def calibrate_prepared(
    model,
    manifest: str | Path,
    classes: Sequence[str] | None = None,
    absent: str = "missing",
    overlap: float = 0.5,
    progress: bool = False,
) -> dict:
    """Fit the presence calibration (Platt scaling of the largest logit,
    :func:`LaMed.inference.presence.fit_platt`) on a prepared split, with the prompts that
    :func:`run_seg` would give it. Returns ``{"a", "b", "n", "n_present"}``; the model is unchanged."""
    import torch
    from tqdm.auto import tqdm

    from LaMed.data.prepared import load_manifest
    from LaMed.inference.presence import fit_platt, presence_scores

    manifest = Path(manifest)
    wanted = list(classes) if classes else None
    scores, truth = [], []
    for item in tqdm(load_manifest(manifest)["items"], desc="calibrate presence", disable=not progress):
        got = item_logits(model, manifest, item, wanted, absent, overlap)
        if got is None:
            continue
        names, gone, logits = got
        scores.extend(presence_scores(torch.from_numpy(logits)).tolist())
        truth.extend([True] * len(names) + [False] * len(gone))
    if not truth or all(truth):
        return {"a": 1.0, "b": 0.0, "n": len(truth), "n_present": sum(truth)}
    return {**fit_platt(scores, truth), "n": len(truth), "n_present": int(sum(truth))}


def item_logits(model, manifest: Path, item: dict, wanted, absent: str, overlap: float = 0.5):
    """``(present names, absent names, logits (K, D, H, W))`` of one prepared item: its labelled
    structures (among ``wanted``) and, per ``absent``, those it lacks, all prompted on its volume
    (sliding windows of the model's size, each window encoded once); ``None`` when it has no
    labelled structure to score (absent prompts need the grid of a mask)."""
    import torch

    from LaMed.data.prepared import load_image
    from LaMed.inference.segment import segment_prepared

    names = [n for n in item.get("masks") or {} if wanted is None or n in wanted]
    if not names:
        return None
    gone = absent_structures(item, wanted, absent)
    image = torch.from_numpy(np.asarray(load_image(manifest, item), np.float32))[None]
    return names, gone, segment_prepared(model, image, names + gone, overlap=overlap, return_logits=True)


def run_seg(
    model,
    manifest: str | Path,
    out: str | Path,
    classes: Sequence[str] | None = None,
    overlap: float = 0.5,
    device: str = "cpu",
    tolerance_mm: float = 2.0,
    progress: bool = True,
    absent: str = "none",
    calibration: str | Path | None = None,
) -> dict:
    """Predict every (item, structure) of ``manifest`` with ``model`` (a model or its folder / hub id) and
    score it; ``absent``: ``"none"``, ``"listed"`` or ``"missing"`` (see the module docstring).
    ``calibration``: a prepared split (not the test split) on which the presence calibration is fitted
    first (:func:`calibrate_prepared`, same prompts and ``absent`` mode); it replaces the model's own
    for this run and is recorded in the summary."""
    import torch
    from tqdm.auto import tqdm

    from Bench.common import write_outputs
    from Bench.eval_seg import METRICS, evaluate_seg
    from LaMed.data.prepared import load_manifest
    from LaMed.inference.presence import decide, presence_scores
    from LaMed.utils.atomic import atomic_write_text, save_npy_atomic, write_json_atomic

    if absent not in ABSENT_MODES:
        raise ValueError(f"run_seg: absent must be one of {ABSENT_MODES}, got {absent!r}")
    if absent == "missing" and not classes:
        raise ValueError("run_seg: absent='missing' needs --classes (the structures every item is labelled for)")
    if isinstance(model, (str, Path)):
        from LaMed.inference.segment import load_seg_model

        model = load_seg_model(model, device=device)
    model.eval()
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("run_seg: the model has no tokenizer (save it beside the model or set model.tokenizer)")
    manifest = Path(manifest)
    man = load_manifest(manifest)
    wanted = list(classes) if classes else None
    # the presence rule: the model's own, or the one fitted on ``calibration`` (the model is left as it is)
    rule = SimpleNamespace(
        presence_calibration=getattr(model.config, "presence_calibration", None), threshold=model.config.threshold
    )
    if calibration is not None:
        fitted = calibrate_prepared(model, calibration, wanted, absent, overlap, progress)
        if fitted["n"] == fitted["n_present"]:
            raise ValueError(
                f"run_seg: calibration split {calibration} has no absent prompt; use --absent listed|missing "
                "on data with absent structures"
            )
        rule = SimpleNamespace(presence_calibration={"a": fitted["a"], "b": fitted["b"]}, threshold=rule.threshold)
    out = Path(out)  # created only once the inputs (calibration split included) have been read
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    items = []
    presence_rows = []
    for item in tqdm(man["items"], desc="segment", disable=not progress):
        got = item_logits(model, manifest, item, wanted, absent, overlap)
        if got is None:
            continue
        names, gone, logits = got
        masks = item["masks"]
        probability, present = decide(rule, presence_scores(torch.from_numpy(logits)))
        for k, name in enumerate(names + gone):
            p = 0.5 * (1.0 + np.tanh(0.5 * logits[k])) if present[k] else np.zeros_like(logits[k])
            save_npy_atomic(pred_dir / f"{item['id']}_{name}.npy", p.astype(np.float16))
            presence_rows.append(
                {
                    "id": item["id"],
                    "class": name,
                    "gt_present": k < len(names),
                    "presence_probability": float(probability[k]),
                    "pred_present": bool(present[k]),
                }
            )
        kept = dict(item)
        kept["masks"] = {n: str((manifest.parent / masks[n]).resolve()) for n in names}
        kept["absent"] = gone
        items.append(kept)
    if not items:
        raise ValueError(f"{manifest}: no item has masks for classes {wanted or 'any'}")
    scored = dict(man)
    scored["items"] = items
    scored_path = out / "manifest_scored.json"
    write_json_atomic(scored_path, scored)
    summary, rows = evaluate_seg(str(pred_dir), str(scored_path), tolerance_mm=tolerance_mm)
    summary["model"] = getattr(model.config, "_name_or_path", "") or type(model).__name__
    summary["absent_prompts"] = absent
    summary["presence_calibration"] = rule.presence_calibration
    atomic_write_text(out / "presence.jsonl", "".join(json.dumps(r) + "\n" for r in presence_rows))
    write_outputs(
        out, summary, rows, ["id", "dataset", "class"] + METRICS + ["prediction_file"], METRICS[:5], "Segmentation"
    )
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description="Run a segmentation model over a prepared split and score it (Bench/eval_seg.py)"
    )
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--manifest", required=True, help="prepared split manifest (test.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", default="", help="comma-separated structures (default: every mask)")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--tolerance-mm", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--absent",
        choices=ABSENT_MODES,
        default="none",
        help="also prompt structures absent from a volume: 'listed' (the item's 'absent' list) or 'missing' "
        "(every --classes entry without a mask; fully labelled data only) -- scored by the summary's detection",
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="another prepared split (e.g. validation.json) to fit the presence calibration on before scoring",
    )
    a = p.parse_args(argv)
    classes = [c for c in a.classes.split(",") if c]
    summary = run_seg(
        a.model,
        a.manifest,
        a.out,
        classes or None,
        a.overlap,
        a.device,
        a.tolerance_mm,
        absent=a.absent,
        calibration=a.calibration,
    )
    print(json.dumps(summary.get("overall", {}), indent=1))
    return summary


if __name__ == "__main__":
    main()
