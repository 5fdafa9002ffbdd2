"""Model-running front end of ``Bench/eval_seg.py``: segment a prepared test split and score it.

    python -m Bench.run_seg --model runs/tiny_segvol --manifest P/test.json --out results/seg [--classes liver,spleen]

For every item of the manifest and every structure in its ``masks`` (or ``--classes``), the model
is prompted with the structure name (its own template) and run by sliding windows of its input size
over the prepared volume (one window when the prepared grid is the model's size); the volume of each
window is encoded once for all the item's prompts. Probabilities are written as
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
) -> dict:
    """Predict every (item, structure) of ``manifest`` with ``model`` (a model or its folder / hub id) and score it."""
    import torch
    from tqdm.auto import tqdm

    from Bench.common import write_outputs
    from Bench.eval_seg import METRICS, evaluate_seg
    from LaMed.data.prepared import load_image, load_manifest

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
    for item in tqdm(man["items"], desc="segment", disable=not progress):
        names = [n for n in (item.get("masks") or {}) if wanted is None or n in wanted]
        if not names:
            continue
        image = torch.from_numpy(np.asarray(load_image(manifest, item), np.float32))[None]
        probs = predict_prepared(model, image, names, overlap)
        for name, p in zip(names, probs):
            np.save(pred_dir / f"{item['id']}_{name}.npy", p.astype(np.float16))
        kept = dict(item)
        kept["masks"] = {n: str((manifest.parent / item["masks"][n]).resolve()) for n in names}
        items.append(kept)
    if not items:
        raise ValueError(f"{manifest}: no item has masks for classes {wanted or 'any'}")
    scored = dict(man)
    scored["items"] = items
    scored_path = out / "manifest_scored.json"
    scored_path.write_text(json.dumps(scored, indent=1), encoding="utf-8")
    summary, rows = evaluate_seg(str(pred_dir), str(scored_path), tolerance_mm=tolerance_mm)
    summary["model"] = getattr(model.config, "_name_or_path", "") or type(model).__name__
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
    a = p.parse_args(argv)
    classes = [c for c in a.classes.split(",") if c]
    summary = run_seg(a.model, a.manifest, a.out, classes or None, a.overlap, a.device, a.tolerance_mm)
    print(json.dumps(summary.get("overall", {}), indent=1))
    return summary


if __name__ == "__main__":
    main()
