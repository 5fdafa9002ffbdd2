"""Model-running front end of ``Bench/eval_seg.py`` for reasoning-segmentation models (``lamed_seg``).

    python -m Bench.run_reasoning_seg --model runs/tiny_r1seg3d --manifest P/test.json --out results/rseg \
        [--tasks refer,seg] [--classes liver,spleen] [--negatives]

Every question of the split (``refer``: the items' referring expressions / reasoning questions;
``seg``: class questions; evaluation templates, no randomness) is answered by greedy generation on
the prepared volume; the mask of the answer's first ``[SEG]`` is written as probabilities
``<out>/predictions/<id>__<task><n>_<target>.npy`` (float16, the prepared grid). A prepared grid
other than the model's input size is answered on the resized volume and its ``[SEG]`` prompt is
decoded on sliding windows of the prepared grid (no text per window). The masks are scored by the
same scorer as the text-prompted models (:func:`Bench.eval_seg.evaluate_seg`: Dice, NSD, HD95, M3D
soft Dice per class / dataset / overall); an answer without ``[SEG]`` scores as an empty mask.
``summary.json`` adds ``reasoning``: the share of answers that emit ``[SEG]``, whose text names the target,
and (``--negatives``) that wrongly emit ``[SEG]`` for an absent structure; ``answers.jsonl`` keeps
every question and answer.

From Python: ``run_reasoning_seg(model_or_path, manifest, out, tasks=("refer",))`` returns the summary.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def answer_prepared(
    model,
    processor,
    volumes,
    questions: Sequence[str],
    overlap: float = 0.5,
    batch_size: int = 4,
    max_new_tokens: int = 48,
) -> list:
    """``Answer`` s (text, logits ``(K, D, H, W)`` on each volume's own grid) for prepared volumes ``(1, D, H, W)``."""
    import torch
    import torch.nn.functional as F

    from LaMed.inference.reasoning import Answer, answer_and_segment, mark_absent
    from LaMed.inference.sliding_window import sliding_window_inference

    size = tuple(int(s) for s in model.seg_module.config.img_size)
    small = [
        F.interpolate(v[None].float(), size=size, mode="trilinear", align_corners=False)[0]
        if tuple(v.shape[1:]) != size
        else v.float()
        for v in volumes
    ]
    answers = answer_and_segment(
        model, processor, torch.stack(small), questions, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    out = []
    for v, a in zip(volumes, answers):
        if tuple(v.shape[1:]) == size or a.logits.shape[0] == 0:
            empty = torch.zeros((0,) + tuple(v.shape[1:]))
            out.append(a if a.logits.shape[0] else Answer(a.text, empty, a.prompts, a.present, a.presence, a.withdrawn))
            continue

        def predictor(batch, origins, prompts=a.prompts):
            return torch.cat([model.segment_with_prompts(w[None], prompts)[:, 0][None] for w in batch])

        with torch.no_grad():
            logits = sliding_window_inference(v[None].float(), size, predictor, overlap=overlap)[0]
        out.append(Answer(a.text, mark_absent(logits, a.present), a.prompts, a.present, a.presence, a.withdrawn))
    return out


def calibration_cases(manifest: str | Path, classes: Sequence[str] | None = None) -> list[tuple]:
    """``(image, question, "The <structure> is [SEG].", present?)`` for every class question of a
    prepared split, absent structures included (evaluation templates); refused without both kinds."""
    from LaMed.data.reasoning_dataset import NAMED_SEG_ANSWERS, ReasonSegDataset, display_name

    ds = ReasonSegDataset(manifest, None, task="seg", train=False, classes=classes, negatives=True)
    cases = []
    for i, s in enumerate(ds.samples):
        name = s.targets[0] if s.kind == "seg" else s.text
        q = ds.record(i)["question"]
        cases.append((ds.load_image(i), q, NAMED_SEG_ANSWERS[0].format(target=display_name(name)), s.kind == "seg"))
    kinds = {c[3] for c in cases}
    if kinds != {True, False}:
        raise ValueError(
            f"{manifest}: the calibration split needs questions about present and absent structures, "
            f"it has only {'present' if True in kinds else 'absent'} ones"
        )
    return cases


def run_reasoning_seg(
    model,
    manifest: str | Path,
    out: str | Path,
    tasks: Sequence[str] = ("refer",),
    classes: Sequence[str] | None = None,
    negatives: bool = False,
    device: str = "cpu",
    tolerance_mm: float = 2.0,
    batch_size: int = 4,
    max_new_tokens: int = 48,
    progress: bool = True,
    calibration: str | Path | None = None,
) -> dict:
    """Answer and segment every question of ``manifest`` with ``model`` (a model or its folder) and score it.
    ``calibration``: a prepared split (with absent structures) the presence gate is calibrated on first
    (:func:`calibration_cases`), the model's gate switched on; recorded in the summary. A model object
    passed in is calibrated in place (a folder is loaded and left as it is on disk)."""
    import torch
    from tqdm.auto import tqdm

    from Bench.common import write_outputs
    from Bench.eval_seg import METRICS, evaluate_seg
    from LaMed.data.prepared import load_manifest
    from LaMed.data.reasoning_dataset import ReasonSegDataset, display_name

    processor = None
    if isinstance(model, (str, Path)):
        from LaMed.inference.reasoning import load_reasoning_model

        model, processor = load_reasoning_model(model, device=device)
    else:
        model, processor = model
    manifest, out = Path(manifest), Path(out)
    fitted = None
    if calibration is not None:  # before any output exists: a bad split leaves nothing behind
        from LaMed.inference.reasoning import calibrate_reasoning_presence

        fitted = calibrate_reasoning_presence(model, processor, calibration_cases(calibration, classes))
        fitted["split"] = str(calibration)
        model.config.presence_gate = True
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    man = load_manifest(manifest)
    by_id = {it["id"]: it for it in man["items"]}
    scored_items, records = [], []
    for task in tasks:
        ds = ReasonSegDataset(manifest, None, task=task, train=False, classes=classes, negatives=negatives)
        order = list(range(len(ds)))
        for start in tqdm(range(0, len(order), batch_size), desc=f"answer {task}", disable=not progress):
            idx = order[start : start + batch_size]
            recs = [ds.record(i) for i in idx]
            vols = [ds.load_image(i) for i in idx]
            answers = answer_prepared(
                model,
                processor,
                vols,
                [r["question"] for r in recs],
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
            )
            for i, r, a in zip(idx, recs, answers):
                row = {
                    "id": r["id"],
                    "task": task,
                    "question": r["question"],
                    "answer": a.text,
                    "targets": r["targets"],
                    # [SEG]s the answer stands by (a gated-absent one has an empty mask)
                    "num_seg": int(sum(a.present)) if a.present else int(a.logits.shape[0]),
                    "llm_seg": "[SEG]" in (a.withdrawn or a.text),  # before the presence gate
                }
                if a.present:
                    row["present"] = a.present
                if a.withdrawn is not None:
                    row["withdrawn_answer"] = a.withdrawn
                records.append(row)
                if not r["targets"]:
                    continue
                target = r["targets"][0]
                sample_id = f"{r['id']}__{task}{i}"
                row["named"] = display_name(target).lower() in a.text.lower()
                if a.logits.shape[0]:
                    prob = torch.sigmoid(a.logits[0].float()).numpy().astype(np.float16)
                    np.save(pred_dir / f"{sample_id}_{target}.npy", prob)
                item = by_id[r["id"]]
                scored_items.append(
                    {
                        "id": sample_id,
                        "dataset": item.get("dataset", man.get("dataset", "")),
                        "spacing": item["spacing"],
                        "masks": {target: str((manifest.parent / item["masks"][target]).resolve())},
                    }
                )
    if not scored_items:
        raise ValueError(
            f"{manifest}: no question with a target mask for tasks {list(tasks)} and classes {classes or 'any'}"
        )
    scored_path = out / "manifest_scored.json"
    scored_path.write_text(
        json.dumps({**{k: v for k, v in man.items() if k != "items"}, "items": scored_items}, indent=1)
    )
    summary, rows = evaluate_seg(str(pred_dir), str(scored_path), tolerance_mm=tolerance_mm)
    pos = [r for r in records if r["targets"]]
    neg = [r for r in records if not r["targets"]]
    summary["reasoning"] = {
        "questions": len(pos),
        "seg_token_rate": float(np.mean([r["num_seg"] > 0 for r in pos])),
        "target_named_rate": float(np.mean([r["named"] for r in pos])),
        "negatives": len(neg),
        "false_seg_rate": float(np.mean([r["num_seg"] > 0 for r in neg])) if neg else None,
        # the LLM's own answers, before the presence gate (equal to the above without a gate)
        "seg_token_rate_llm": float(np.mean([r["llm_seg"] for r in pos])),
        "false_seg_rate_llm": float(np.mean([r["llm_seg"] for r in neg])) if neg else None,
        "withdrawn": sum("withdrawn_answer" in r for r in records),
    }
    summary["model"] = getattr(model.config, "_name_or_path", "") or type(model).__name__
    summary["presence_gate"] = bool(getattr(model.config, "presence_gate", False))
    if fitted is not None:
        summary["presence_calibration"] = fitted
    with (out / "answers.jsonl").open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    write_outputs(
        out,
        summary,
        rows,
        ["id", "dataset", "class"] + METRICS + ["prediction_file"],
        METRICS[:5],
        "Reasoning segmentation",
    )
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description="Answer and segment a prepared split with a reasoning-segmentation model, "
        "scored by Bench/eval_seg.py"
    )
    p.add_argument("--model", required=True, help="reasoning model folder or hub id")
    p.add_argument("--manifest", required=True, help="prepared split manifest (test.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tasks", default="refer", help="comma-separated question sets: refer, seg (default refer)")
    p.add_argument("--classes", default="", help="comma-separated structures (default: every mask)")
    p.add_argument("--negatives", action="store_true", help="also ask about absent structures (false [SEG] rate)")
    p.add_argument("--tolerance-mm", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--calibration",
        default=None,
        help="prepared split with absent structures: calibrate the presence gate on it first (gate on)",
    )
    a = p.parse_args(argv)
    classes = [c for c in a.classes.split(",") if c] or None
    summary = run_reasoning_seg(
        a.model,
        a.manifest,
        a.out,
        [t for t in a.tasks.split(",") if t],
        classes,
        a.negatives,
        a.device,
        a.tolerance_mm,
        a.batch_size,
        a.max_new_tokens,
        calibration=a.calibration,
    )
    print(json.dumps({"overall": summary.get("overall", {}), "reasoning": summary["reasoning"]}, indent=1))
    return summary


if __name__ == "__main__":
    main()
