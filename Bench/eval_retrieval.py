"""Evaluate image-report retrieval from embeddings, and volume-to-volume retrieval by label overlap.

Predictions: an ``.npz`` with ``ids`` (N,) manifest item ids, ``image`` (N, C) and ``text`` (N, C)
embeddings; row i of both belongs to item ``ids[i]`` (its image and its report are the pair).
Scores are cosine similarities (``--no-normalize`` for raw dot products).

Reported: ``image_to_text_R@K`` (rank the N reports for each image; Med3DVLM calls it IR) and
``text_to_image_R@K``, ranks with ties not pushing a query down; ``--first-n 100,500`` adds
groups evaluated on the first n pairs only (Med3DVLM's protocol). When items carry ``labels``:
``v2v_jaccard@K`` / ``v2v_precision@K`` over volumes with at least one label (self excluded), and
``hsenet_v2v@K`` (HSENet's running-average numbers, self included). Per dataset: the ranks of that
dataset's queries within the full candidate pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from Bench.common import BenchError, aggregate, base_parser, item_dataset, load_manifest, match_ids, write_outputs


def _load(predictions: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    path = Path(predictions)
    if not path.is_file():
        raise BenchError(f"{path}: predictions file not found")
    with np.load(path, allow_pickle=False) as z:
        for key in ("ids", "image", "text"):
            if key not in z:
                raise BenchError(f"{path}: npz must hold 'ids', 'image' and 'text'; missing {key!r}")
        ids, img, txt = [str(i) for i in z["ids"]], z["image"].astype(np.float32), z["text"].astype(np.float32)
    if img.ndim != 2 or txt.shape != img.shape or len(ids) != img.shape[0]:
        raise BenchError(
            f"{path}: 'image' and 'text' must both be (N, C) with N = len(ids); got {img.shape}, "
            f"{txt.shape}, {len(ids)} ids"
        )
    if len(set(ids)) != len(ids):
        raise BenchError(f"{path}: 'ids' has duplicates")
    return ids, img, txt


def evaluate_retrieval(
    predictions: str,
    manifest: str,
    ks: Sequence[int] = (1, 5, 10),
    v2v_ks: Sequence[int] = (1, 5, 10, 50),
    first_n: Sequence[int] = (),
    normalize: bool = True,
) -> tuple[dict, list[dict]]:
    """Score retrieval embeddings; returns ``(summary, per_sample_rows)``."""
    from LaMed.metrics import retrieval as R

    man = load_manifest(manifest)
    ids, img, txt = _load(predictions)
    match_ids(man, ids, predictions)
    by_id = {it["id"]: it for it in man["items"]}
    i2t = R.retrieval_ranks_from_embeddings(img, txt, normalize=normalize)
    t2i = R.retrieval_ranks_from_embeddings(txt, img, normalize=normalize)
    rows = []
    for n, item_id in enumerate(ids):
        row = {
            "id": item_id,
            "dataset": item_dataset(man, by_id[item_id]),
            "rank_image_to_text": int(i2t[n]),
            "rank_text_to_image": int(t2i[n]),
        }
        for k in ks:
            row[f"image_to_text_R@{k}"] = float(i2t[n] < k)
            row[f"text_to_image_R@{k}"] = float(t2i[n] < k)
        rows.append(row)
    metrics = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in ks]
    summary = aggregate(rows, metrics, class_field=None)
    summary["first_n"] = {}
    for n in first_n:
        if n > len(ids):
            continue
        sub_i = R.recall_at_k_from_embeddings(img[:n], txt[:n], ks, normalize=normalize)
        sub_t = R.recall_at_k_from_embeddings(txt[:n], img[:n], ks, normalize=normalize)
        summary["first_n"][str(n)] = {
            "count": n,
            **{f"image_to_text_R@{k}": sub_i[k] for k in ks},
            **{f"text_to_image_R@{k}": sub_t[k] for k in ks},
        }
    labels = [by_id[i].get("labels") for i in ids]
    if all(isinstance(lab, list) for lab in labels):
        keep = [n for n, lab in enumerate(labels) if lab]
        if len(keep) > 1:
            lab, vocab = R.labels_to_multihot([labels[n] for n in keep])
            e = img[keep] / np.maximum(np.linalg.norm(img[keep], axis=1, keepdims=True), 1e-12)
            sim = e @ e.T
            ks_v = [k for k in v2v_ks if k < len(keep)]
            jac = R.label_overlap_at_k(sim, lab, lab, ks_v, "jaccard", exclude_self=True)
            prec = R.label_overlap_at_k(sim, lab, lab, ks_v, "precision", exclude_self=True)
            hs = R.hsenet_cumulative_label_overlap(sim, lab, lab, ks_v)
            summary["overall"].update({f"v2v_jaccard@{k}": jac[k] for k in ks_v})
            summary["overall"].update({f"v2v_precision@{k}": prec[k] for k in ks_v})
            summary["overall"].update({f"hsenet_v2v@{k}": hs[k] for k in ks_v})
            summary["v2v_count"] = len(keep)
    summary.update(
        {
            "task": "retrieval",
            "manifest": str(man["_path"]),
            "predictions": str(predictions),
            "counts": {"pairs": len(ids)},
            "unavailable": {},
            "settings": {"similarity": "cosine" if normalize else "dot", "ties": "do not push a query down"},
        }
    )
    return summary, rows


def main(argv: Sequence[str] | None = None) -> dict:
    p = base_parser("Retrieval metrics (Recall@K both directions, volume-to-volume label overlap)")
    p.add_argument("--ks", default="1,5,10", help="K values for Recall@K")
    p.add_argument("--v2v-ks", default="1,5,10,50", help="K values for label-overlap retrieval")
    p.add_argument("--first-n", default="", help="also evaluate the first n pairs, e.g. 100,500,1000,2000")
    p.add_argument("--no-normalize", action="store_true", help="dot product instead of cosine similarity")
    a = p.parse_args(argv)
    ks = [int(k) for k in a.ks.split(",") if k]
    summary, rows = evaluate_retrieval(
        a.predictions,
        a.manifest,
        ks,
        [int(k) for k in a.v2v_ks.split(",") if k],
        [int(n) for n in a.first_n.split(",") if n],
        not a.no_normalize,
    )
    metrics = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in ks]
    write_outputs(
        a.out,
        summary,
        rows,
        ["id", "dataset", "rank_image_to_text", "rank_text_to_image"] + metrics,
        metrics,
        "Retrieval",
    )
    return summary


if __name__ == "__main__":
    main()
