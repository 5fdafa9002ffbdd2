"""Evaluate zero-shot (or any) multi-label findings classification against a manifest's labels.

Predictions: JSON lines ``{"id", "findings": {name: {"probability": p, "similarity": s, ...}}}``
(what ``Bench/run_classify.py`` and ``lamed predict --classify`` write). Ground truth: a finding
is positive for an item when one of its labels (the prompt set's ``labels``, default the finding's
name) is in the item's ``labels`` list; a manifest with ``label_names`` must know every finding.

Thresholds: chosen on ``--val-predictions`` / ``--val-manifest`` (``--criterion f1`` or ``youden``)
or, without a validation split, 0.5 on ``probability`` (CT-CLIP / DCFormer round at 0.5).

Reported, as in CT-CLIP's zero-shot table (arXiv 2403.17834): per finding AUROC, F1, precision,
recall, accuracy (+ threshold and positives); ``overall`` = macro averages, ``weighted`` =
averages weighted by positives; ``ci95``: bootstrap percentile intervals (``--n-boot``, ``--seed``:
the same seed gives the same intervals). ``per_sample.csv`` has one row per (case, finding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from Bench.common import BenchError, base_parser, item_dataset, load_manifest, match_ids, read_jsonl, write_outputs

METRICS = ["auroc", "f1", "precision", "recall", "accuracy"]
SCORES = ("probability", "similarity")


def _matrix(pred_path: str, manifest: str, names: Sequence[str] | None, score: str, prompt_set: str):
    """``(ids, names, scores (N, K), labels (N, K), manifest, items)`` of one split."""
    from LaMed.inference.classify import PromptSetError, load_prompt_set, manifest_labels

    man = load_manifest(manifest)
    recs = read_jsonl(pred_path, ("id", "findings"))
    if not recs:
        raise BenchError(f"{pred_path}: no predictions")
    ids = [r["id"] for r in recs]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{pred_path}: repeated ids")
    match_ids(man, ids, pred_path)
    names = list(names or recs[0]["findings"])
    for n, r in enumerate(recs):
        f = r["findings"]
        if not isinstance(f, dict) or set(f) != set(names):
            raise BenchError(
                f"{pred_path}: record {n + 1} ({r['id']}) has findings {sorted(f) if isinstance(f, dict) else f!r}, "
                f"expected {sorted(names)}"
            )
        for name in names:
            v = f[name].get(score) if isinstance(f[name], dict) else None
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BenchError(f"{pred_path}: record {n + 1} ({r['id']}), finding {name!r}: no finite {score!r}")
    try:
        ps = load_prompt_set(prompt_set, findings=names)
        by_id = {it["id"]: it for it in man["items"]}
        items = [by_id[i] for i in ids]
        labels = manifest_labels(man, items, ps, str(man["_path"]))
    except PromptSetError as exc:
        raise BenchError(str(exc)) from None
    if labels is None:
        raise BenchError(f"{man['_path']}: the items carry no 'labels'; nothing to evaluate against")
    s = np.asarray([[r["findings"][n][score] for n in names] for r in recs], np.float64)
    return ids, names, s, labels, man, items


def evaluate_classify(
    predictions: str,
    manifest: str,
    val_predictions: str = "",
    val_manifest: str = "",
    score: str = "probability",
    criterion: str = "f1",
    prompt_set: str = "ct_rate",
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """Score classification predictions; returns ``(summary, per_sample_rows)``."""
    from LaMed.metrics.classification import bootstrap_ci, multilabel_report, select_thresholds

    if score not in SCORES:
        raise BenchError(f"--score {score!r} is not one of {SCORES}")
    if bool(val_predictions) != bool(val_manifest):
        raise BenchError("--val-predictions and --val-manifest go together")
    ids, names, s, y, man, items = _matrix(predictions, manifest, None, score, prompt_set)
    if val_predictions:
        _, _, vs, vy, _, _ = _matrix(val_predictions, val_manifest, names, score, prompt_set)
        thr, source = select_thresholds(vy, vs, criterion), f"{val_predictions} ({criterion})"
    elif score == "probability":
        thr, source = np.full(len(names), 0.5), "fixed 0.5"
    else:
        raise BenchError("--score similarity has no natural threshold: give --val-predictions and --val-manifest")
    rep = multilabel_report(y, s, thr, names)
    ci = bootstrap_ci(y, s, thr, names, n_boot=n_boot, seed=seed) if n_boot > 0 else {}
    per_class = {n: {**rep["per_finding"][n], "count": rep["per_finding"][n]["positives"]} for n in names}
    summary = {
        "task": "classification",
        "manifest": str(man["_path"]),
        "predictions": str(predictions),
        "counts": {"cases": len(ids), "findings": len(names)},
        "overall": {**rep["macro"], "count": len(ids)},
        "weighted": rep["weighted"],
        "per_dataset": {},
        "per_class": per_class,
        "ci95": ci,
        "unavailable": {},
        "settings": {
            "score": score,
            "thresholds": source,
            "criterion": criterion,
            "prompt_set": prompt_set,
            "n_boot": n_boot,
            "seed": seed,
            "chance_auroc": 0.5,
        },
    }
    rows = []
    for i, item_id in enumerate(ids):
        for k, n in enumerate(names):
            rows.append(
                {
                    "id": item_id,
                    "dataset": item_dataset(man, items[i]),
                    "finding": n,
                    "score": float(s[i, k]),
                    "label": int(y[i, k]),
                    "predicted": int(s[i, k] >= thr[k]),
                }
            )
    return summary, rows


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def summary_markdown(summary: dict) -> str:
    """``summary.md``: one row a finding, then macro and weighted, each with its 95 % interval."""
    ci = summary.get("ci95", {})
    lines = [
        f"# Findings classification ({summary['settings']['score']}, thresholds {summary['settings']['thresholds']})",
        "",
        f"{summary['counts']['cases']} cases; chance AUROC 0.5; [95 % bootstrap interval].",
        "",
        "| finding | positives | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]

    def cell(group, key, m):
        v = _fmt(group.get(m))
        iv = ci.get(key, {}).get(m)
        return v + (f" [{_fmt(iv[0])}, {_fmt(iv[1])}]" if iv and v != "-" else "")

    for n, g in summary["per_class"].items():
        lines.append(f"| {n} | {g['positives']} | " + " | ".join(cell(g, n, m) for m in METRICS) + " |")
    lines.append("| **macro** | | " + " | ".join(cell(summary["overall"], "macro", m) for m in METRICS) + " |")
    lines.append("| **weighted** | | " + " | ".join(cell(summary["weighted"], "weighted", m) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def write_classify_outputs(out: str | Path, summary: dict, rows: list[dict]) -> None:
    from LaMed.utils.atomic import atomic_write_text

    write_outputs(
        out,
        summary,
        rows,
        ["id", "dataset", "finding", "score", "label", "predicted"],
        METRICS,
        "Findings classification",
    )
    atomic_write_text(Path(out) / "summary.md", summary_markdown(summary))


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser("Multi-label findings classification (AUROC, F1, precision, recall, accuracy, bootstrap CIs)")
    p.add_argument("--val-predictions", default="", help="predictions on the validation split (thresholds)")
    p.add_argument("--val-manifest", default="", help="manifest of the validation split")
    p.add_argument("--score", default="probability", choices=SCORES, help="which score to threshold / rank")
    p.add_argument("--criterion", default="f1", choices=("f1", "youden"), help="threshold selection criterion")
    p.add_argument("--prompt-set", default="ct_rate", help="prompt set naming each finding's labels (name or YAML)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws (0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    a = p.parse_args(argv)
    summary, rows = evaluate_classify(
        a.predictions,
        a.manifest,
        a.val_predictions,
        a.val_manifest,
        a.score,
        a.criterion,
        a.prompt_set,
        a.n_boot,
        a.seed,
    )
    write_classify_outputs(a.out, summary, rows)
    return summary


if __name__ == "__main__":
    main()
