"""Evaluate medical report generation (MRG): predictions JSONL against the manifest's ``text``.

Predictions: JSON lines ``{"id": "<manifest item id>", "prediction": "<generated report>"}``.

Reported, overall and per dataset:

* corpus metrics over the group: ``bleu1..bleu4`` (corpus BLEU, basic tokens; = pycocoevalcap),
  ``cider`` (CIDEr-D, IDF from the group's references), ``meteor`` (METEOR 1.5 jar; ``--meteor``);
* means of per-sample metrics: ``rouge_l`` (rouge-score F), ``rouge1``, ``m3d_bleu1`` (M3D /
  Med3DVLM "BLEU"), ``hsenet_bleu1..4`` (HSENet's per-sample n-gram precisions), ``bert_f1``
  (``--bert-model <local folder>``).

Usage: ``python -m Bench.eval_mrg --predictions preds.jsonl --manifest data/test.json --out out/``
"""

from __future__ import annotations

from collections.abc import Sequence

from Bench.common import (
    BenchError,
    aggregate,
    base_parser,
    group_rows,
    item_dataset,
    load_manifest,
    match_ids,
    read_jsonl,
    write_outputs,
)

PER_SAMPLE = [
    "rouge_l",
    "rouge1",
    "m3d_bleu1",
    "hsenet_bleu1",
    "hsenet_bleu2",
    "hsenet_bleu3",
    "hsenet_bleu4",
    "cider",
    "bert_f1",
]
CORPUS = ["bleu1", "bleu2", "bleu3", "bleu4", "cider", "meteor"]


def _corpus(preds: list[str], refs: list[str], meteor: bool, unavailable: dict) -> dict:
    from LaMed.metrics import text as T
    from LaMed.metrics.base import MetricUnavailable

    b = T.corpus_bleu(preds, refs, max_n=4)
    out = {f"bleu{k}": b[f"bleu{k}"] for k in range(1, 5)}
    out["cider"] = T.cider(preds, refs)
    if meteor:
        try:
            out["meteor"] = T.meteor(preds, refs)
        except MetricUnavailable as exc:
            unavailable["meteor"] = str(exc)
    return out


def evaluate_mrg(
    predictions: str, manifest: str, meteor: bool = False, bert_model: str | None = None, strict: bool = False
) -> tuple[dict, list[dict]]:
    """Score a report-generation prediction file; returns ``(summary, per_sample_rows)``."""
    from LaMed.metrics import text as T
    from LaMed.metrics.base import MetricUnavailable

    man = load_manifest(manifest)
    recs = read_jsonl(predictions, required=("id", "prediction"))
    match_ids(man, [r["id"] for r in recs], predictions)
    by_id = {it["id"]: it for it in man["items"]}
    rows = []
    for r in recs:
        item = by_id[r["id"]]
        if not isinstance(item.get("text"), str):
            raise BenchError(f"{man['_path']}: item {r['id']!r} has no 'text' report to compare with")
        if not isinstance(r["prediction"], str):
            raise BenchError(f"{predictions}: prediction of {r['id']!r} must be a string")
        rows.append(
            {
                "id": r["id"],
                "dataset": item_dataset(man, item),
                "prediction": r["prediction"],
                "reference": item["text"],
            }
        )
    with_text = [it for it in man["items"] if isinstance(it.get("text"), str)]
    missing = len({it["id"] for it in with_text} - {r["id"] for r in rows})
    if strict and missing:
        raise BenchError(f"{predictions}: {missing} manifest item(s) with a report have no prediction")
    if not rows:
        raise BenchError(f"{predictions}: no predictions to evaluate")

    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    for name, vals in (
        ("rouge_l", T.rouge_l_scores(preds, refs)),
        ("rouge1", T.rouge_n_scores(preds, refs, 1)),
        ("m3d_bleu1", T.m3d_bleu1_scores(preds, refs)),
        ("cider", T.cider_scores(preds, refs)),
    ):
        for row, v in zip(rows, vals):
            row[name] = v
    for row, ps in zip(rows, T.hsenet_ngram_precision_scores(preds, refs)):
        for k, v in enumerate(ps, start=1):
            row[f"hsenet_bleu{k}"] = v
    unavailable: dict = {}
    if bert_model is not None:
        from LaMed.metrics.text_model import bert_score

        try:
            for row, v in zip(rows, bert_score(preds, refs, model_path=bert_model)["f1"]):
                row["bert_f1"] = v
        except MetricUnavailable as exc:
            unavailable["bert_f1"] = str(exc)

    per_sample_metrics = [m for m in PER_SAMPLE if m != "cider"]
    summary = aggregate(rows, per_sample_metrics, class_field=None)
    # Corpus metrics are recomputed on each group's own subset (a corpus score is not a mean).
    summary["overall"].update(_corpus(preds, refs, meteor, unavailable))
    for name, group in group_rows(rows, "dataset").items():
        summary["per_dataset"][name].update(
            _corpus([r["prediction"] for r in group], [r["reference"] for r in group], meteor, unavailable)
        )
    summary.update(
        {
            "task": "report_generation",
            "manifest": str(man["_path"]),
            "predictions": str(predictions),
            "counts": {"evaluated": len(rows), "missing_predictions": missing},
            "unavailable": unavailable,
            "settings": {
                "tokenize": "basic (corpus BLEU/CIDEr/ROUGE); 13a for m3d_bleu1/hsenet_bleu*",
                "cider_idf": "references of each reported group",
                "meteor": meteor,
                "bert_model": bert_model,
            },
        }
    )
    return summary, rows


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser("Report generation metrics (BLEU, ROUGE, CIDEr, METEOR, BERTScore, paper variants)")
    p.add_argument("--meteor", action="store_true", help="also run the METEOR 1.5 jar (needs Java, ~10 s)")
    p.add_argument("--bert-model", default=None, help="local model folder for BERTScore (opt-in)")
    p.add_argument("--strict", action="store_true", help="fail when a manifest report has no prediction")
    a = p.parse_args(argv)
    summary, rows = evaluate_mrg(a.predictions, a.manifest, meteor=a.meteor, bert_model=a.bert_model, strict=a.strict)
    table = ["bleu1", "bleu4", "rouge_l", "cider", "meteor", "m3d_bleu1", "hsenet_bleu4", "bert_f1"]
    write_outputs(
        a.out, summary, rows, ["id", "dataset"] + PER_SAMPLE + ["prediction", "reference"], table, "Report generation"
    )
    return summary


if __name__ == "__main__":
    main()
