"""Evaluate positioning (referring expression comprehension with boxes).

Predictions: JSON lines ``{"id", "target": "<structure in item['boxes']>", "prediction": "<text with a
box [d0, h0, w0, d1, h1, w1]>"}``; ``"box": [6 numbers]`` may replace the text. Boxes are compared
in the manifest's normalised [0, 1] coordinates.

Per sample: ``iou`` (standard 3D IoU; 0 when no box can be parsed), ``parsed`` (1 if a box was
found), ``m3d_score`` (M3D's enclosing-box "IoU" with M3D's strict ``", "`` regex, -1 when it finds
no box, as M3D averages it). Groups: per class = target structure, per dataset, overall.
"""

from __future__ import annotations

from collections.abc import Sequence

from Bench.common import (
    BenchError,
    aggregate,
    base_parser,
    item_dataset,
    load_manifest,
    match_ids,
    read_jsonl,
    write_outputs,
)

METRICS = ["iou", "parsed", "m3d_score", "iou_at_0.5"]


def evaluate_pos(predictions: str, manifest: str) -> tuple[dict, list[dict]]:
    """Score a box prediction file; returns ``(summary, per_sample_rows)``."""
    from LaMed.metrics import boxes as B

    man = load_manifest(manifest)
    recs = read_jsonl(predictions, required=("id", "target"))
    match_ids(man, [r["id"] for r in recs], predictions)
    by_id = {it["id"]: it for it in man["items"]}
    rows = []
    for r in recs:
        item = by_id[r["id"]]
        gt = (item.get("boxes") or {}).get(r["target"])
        if gt is None:
            raise BenchError(f"{man['_path']}: item {r['id']!r} has no box for target {r['target']!r}")
        if "box" in r:
            box, text = r["box"], None
        elif "prediction" in r:
            text = str(r["prediction"])
            box = B.parse_box(text)
        else:
            raise BenchError(f"{predictions}: record of {r['id']!r} needs 'prediction' (text) or 'box'")
        iou = B.box_iou_3d(box, gt) if box is not None else 0.0
        if text is not None:
            m3d_box = B.m3d_extract_box(text)
            m3d = B.m3d_box_score(m3d_box, gt) if m3d_box is not None else -1.0
        else:
            m3d = B.m3d_box_score(box, gt)
        rows.append(
            {
                "id": r["id"],
                "dataset": item_dataset(man, item),
                "class": r["target"],
                "iou": iou,
                "parsed": float(box is not None),
                "m3d_score": m3d,
                "iou_at_0.5": float(iou >= 0.5),
                "prediction": text if text is not None else str(box),
                "target_box": str(gt),
            }
        )
    if not rows:
        raise BenchError(f"{predictions}: no predictions to evaluate")
    summary = aggregate(rows, METRICS, class_field="class")
    summary.update(
        {
            "task": "positioning",
            "manifest": str(man["_path"]),
            "predictions": str(predictions),
            "counts": {"evaluated": len(rows), "unparsed": sum(r["parsed"] == 0 for r in rows)},
            "unavailable": {},
            "settings": {"box_format": "[d0, h0, w0, d1, h1, w1], normalised"},
        }
    )
    return summary, rows


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser("Positioning metrics (3D box IoU, M3D enclosing-box score)")
    a = p.parse_args(argv)
    summary, rows = evaluate_pos(a.predictions, a.manifest)
    write_outputs(
        a.out,
        summary,
        rows,
        ["id", "dataset", "class"] + METRICS + ["prediction", "target_box"],
        METRICS,
        "Positioning",
    )
    return summary


if __name__ == "__main__":
    main()
