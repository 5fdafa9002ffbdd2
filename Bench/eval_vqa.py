"""Evaluate VQA: predictions JSONL against the manifest's ``vqa`` entries.

Predictions: JSON lines ``{"id", "question_index": <index into item["vqa"]>, "prediction"}`` or
``{"id", "question": "<exact question text>", "prediction"}``.

Per question (closed = ``type`` "closed" with ``answer_choice``; yes/no = ``type`` "yes_no"):

* ``correct`` -- closed: the parsed choice letter equals ``answer_choice``; yes/no: parsed yes/no;
* ``m3d_substring`` -- closed only: ``"<letter>."`` occurs in the output (M3D / Med3DVLM's number);
* ``exact_match``, ``token_f1``, ``hsenet_class`` (HSENet's "Major Class Accuracy" rule),
  ``rouge_l``, ``rouge1``, ``m3d_bleu1`` against the answer text.

Groups: per class = the entry's ``question_type`` if present, else its ``type``; per dataset;
overall. Accuracy is the group mean of ``correct``.
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

METRICS = ["correct", "m3d_substring", "exact_match", "token_f1", "hsenet_class", "rouge_l", "rouge1", "m3d_bleu1"]


def _question(item: dict, rec: dict, man: dict, pred_path: str) -> tuple[int, dict]:
    qs = item.get("vqa")
    if not isinstance(qs, list) or not qs:
        raise BenchError(f"{man['_path']}: item {item['id']!r} has no 'vqa' list")
    if "question_index" in rec:
        i = rec["question_index"]
        if not isinstance(i, int) or not 0 <= i < len(qs):
            raise BenchError(f"{pred_path}: question_index {i!r} of {item['id']!r} is outside 0..{len(qs) - 1}")
        return i, qs[i]
    if "question" in rec:
        for i, q in enumerate(qs):
            if q.get("question") == rec["question"]:
                return i, q
        raise BenchError(f"{pred_path}: question {rec['question']!r} not found in item {item['id']!r}")
    raise BenchError(f"{pred_path}: record of {item['id']!r} needs 'question_index' or 'question'")


def evaluate_vqa(predictions: str, manifest: str) -> tuple[dict, list[dict]]:
    """Score a VQA prediction file; returns ``(summary, per_sample_rows)``."""
    from LaMed.metrics import text as T
    from LaMed.metrics import vqa as V

    man = load_manifest(manifest)
    recs = read_jsonl(predictions, required=("id", "prediction"))
    match_ids(man, [r["id"] for r in recs], predictions)
    by_id = {it["id"]: it for it in man["items"]}
    rows, seen = [], set()
    for r in recs:
        item = by_id[r["id"]]
        qi, q = _question(item, r, man, predictions)
        if (r["id"], qi) in seen:
            raise BenchError(f"{predictions}: question {qi} of {r['id']!r} is predicted twice")
        seen.add((r["id"], qi))
        pred, answer, qtype = str(r["prediction"]), str(q.get("answer", "")), q.get("type", "open")
        row = {
            "id": r["id"],
            "question_index": qi,
            "dataset": item_dataset(man, item),
            "class": q.get("question_type", qtype),
            "type": qtype,
            "question": q.get("question", ""),
            "answer": answer,
            "prediction": pred,
        }
        if qtype == "closed":
            letter = q.get("answer_choice")
            if not isinstance(letter, str):
                raise BenchError(f"{man['_path']}: closed question {qi} of {r['id']!r} lacks 'answer_choice'")
            row["correct"] = float(V.parse_choice(pred, q.get("choices")) == letter.strip().upper())
            row["m3d_substring"] = V.m3d_choice_substring_scores([pred], [letter])[0]
        elif qtype == "yes_no":
            row["correct"] = float(V.parse_yes_no(pred) == answer.strip().lower().rstrip("."))
        row["exact_match"] = V.exact_match(pred, answer)
        row["token_f1"] = V.token_f1(pred, answer)
        row["hsenet_class"] = V.hsenet_class_match_scores([pred], [answer])[0]
        rows.append(row)
    if not rows:
        raise BenchError(f"{predictions}: no predictions to evaluate")
    preds, answers = [r["prediction"] for r in rows], [r["answer"] for r in rows]
    for name, vals in (
        ("rouge_l", T.rouge_l_scores(preds, answers)),
        ("rouge1", T.rouge_n_scores(preds, answers, 1)),
        ("m3d_bleu1", T.m3d_bleu1_scores(preds, answers)),
    ):
        for row, v in zip(rows, vals):
            row[name] = v
    total = sum(len(it.get("vqa") or []) for it in man["items"])
    summary = aggregate(rows, METRICS, class_field="class")
    summary.update(
        {
            "task": "vqa",
            "manifest": str(man["_path"]),
            "predictions": str(predictions),
            "counts": {
                "evaluated": len(rows),
                "missing_predictions": total - len(rows),
                "closed": sum(r["type"] == "closed" for r in rows),
                "yes_no": sum(r["type"] == "yes_no" for r in rows),
                "open": sum(r["type"] not in ("closed", "yes_no") for r in rows),
            },
            "unavailable": {},
            "settings": {"correct": "parsed choice letter / yes-no", "m3d_substring": "'<letter>.' in output"},
        }
    )
    return summary, rows


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser("VQA metrics (closed accuracy, M3D substring accuracy, open-ended text scores)")
    a = p.parse_args(argv)
    summary, rows = evaluate_vqa(a.predictions, a.manifest)
    cols = ["id", "question_index", "dataset", "class", "type"] + METRICS + ["answer", "prediction"]
    write_outputs(a.out, summary, rows, cols, ["correct", "m3d_substring", "token_f1", "rouge_l", "m3d_bleu1"], "VQA")
    return summary


if __name__ == "__main__":
    main()
