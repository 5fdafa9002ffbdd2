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

import numpy as np

ABSENT_MODES = ("none", "listed", "missing")


def absent_structures(item: dict, wanted: Sequence[str] | None, absent: str) -> list[str]:
    """The structures ``item`` is prompted for although they are not in its volume (``absent`` mode)."""
    masks = item.get("masks") or {}
    if absent == "listed":
        return [a for a in item.get("absent") or [] if a not in masks and (wanted is None or a in wanted)]
    if absent == "missing":
        return [c for c in wanted or [] if c not in masks]
    return []


def present_dice(rows: Sequence[dict]) -> dict:
    """Mean Dice over the rows whose structure is in the volume, per class and overall (absent rows,
    scored 1 for an empty prediction and 0 for a false mask, belong to ``detection`` instead)."""
    out: dict = {}
    for r in rows:
        if r.get("gt_present"):
            out.setdefault(r["class"], []).append(float(r["dice"]))
    everything = [d for v in out.values() for d in v]
    per = {c: float(np.mean(v)) for c, v in sorted(out.items())}
    return {"overall": float(np.mean(everything)) if everything else None, "per_class": per}


def segment_logits(model, volume, texts: Sequence[str], overlap: float = 0.5, sw_batch_size: int = 1):
    """Logits ``(K, D, H, W)`` for a prepared volume ``(1, 1, D, H, W)`` and K prompts."""
    from LaMed.inference.segment import segment_prepared

    return segment_prepared(model, volume, texts, overlap=overlap, sw_batch_size=sw_batch_size, return_logits=True)


def predict_prepared(model, volume, texts: Sequence[str], overlap: float = 0.5, sw_batch_size: int = 1):
    """Probabilities ``(K, D, H, W)`` for a prepared volume ``(1, 1, D, H, W)`` and K prompts
    (:func:`LaMed.inference.segment.segment_prepared`)."""
    from LaMed.inference.segment import segment_prepared

    return segment_prepared(model, volume, texts, overlap=overlap, sw_batch_size=sw_batch_size)


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
) -> dict:
    """Predict every (item, structure) of ``manifest`` with ``model`` (a model or its folder / hub id) and
    score it; ``absent``: ``"none"``, ``"listed"`` or ``"missing"`` (see the module docstring)."""
    import torch
    from tqdm.auto import tqdm

    from Bench.common import write_outputs
    from Bench.eval_seg import METRICS, evaluate_seg
    from LaMed.data.prepared import load_image, load_manifest
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
    out = Path(out)
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(classes) if classes else None
    items = []
    presence_rows = []
    for item in tqdm(man["items"], desc="segment", disable=not progress):
        masks = item.get("masks") or {}
        names = [n for n in masks if wanted is None or n in wanted]
        gone = absent_structures(item, wanted, absent)
        if not names:  # an item with nothing labelled to score (absent prompts need a grid: a mask)
            continue
        image = torch.from_numpy(np.asarray(load_image(manifest, item), np.float32))[None]
        logits = segment_logits(model, image, names + gone, overlap)
        probability, present = decide(model.config, presence_scores(torch.from_numpy(logits)))
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
    summary["presence_calibration"] = getattr(model.config, "presence_calibration", None)
    summary["dice_present"] = present_dice(rows)
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
    a = p.parse_args(argv)
    classes = [c for c in a.classes.split(",") if c]
    summary = run_seg(a.model, a.manifest, a.out, classes or None, a.overlap, a.device, a.tolerance_mm, absent=a.absent)
    print(json.dumps(summary.get("overall", {}), indent=1))
    return summary


if __name__ == "__main__":
    main()
