"""Speed / memory benchmark of the metric library; prints its figures (no pass/fail).

Targets: Recall@K on 10^5 x 10^5 pairs under 60 s and 4 GB on a 2-core
CPU; NSD on a 512x512x300 mask pair under 5 s. Each figure is printed with a baseline measured in
the same run (a reference library or the naive computation) and the ratio.

    python -m Bench.perf.metrics            # full sizes (a few minutes)
    python -m Bench.perf.metrics --quick    # small sizes, seconds (smoke run)
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time

import numpy as np


def _rss_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux ru_maxrss is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


_CPU: dict = {}


def _time(fn, *args, **kwargs):
    """Wall seconds of one call; the process CPU seconds of the last call are kept in ``_CPU["last"]``
    (on a shared, overloaded machine wall time inflates while CPU time / cores does not)."""
    c = time.process_time()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    _CPU["last"] = time.process_time() - c
    return out, time.perf_counter() - t


def bench_retrieval(n_small: int, n_large: int, dim: int, results: list) -> None:
    from LaMed.metrics.retrieval import recall_at_k, recall_at_k_from_embeddings

    rng = np.random.default_rng(0)
    q = rng.standard_normal((n_small, dim)).astype(np.float32)
    c = (q + 0.8 * rng.standard_normal((n_small, dim))).astype(np.float32)
    sim = q @ c.T
    ours, t_ours = _time(recall_at_k, sim, (1, 5, 10))

    def naive(s):  # full argsort of every row (what topk-based scripts effectively do)
        order = np.argsort(-s, axis=1)
        rank = np.argmax(order == np.arange(s.shape[0])[:, None], axis=1)
        return {k: float(np.mean(rank < k)) for k in (1, 5, 10)}

    base, t_base = _time(naive, sim)
    results.append(
        {
            "name": f"recall_at_k matrix {n_small}x{n_small}",
            "seconds": t_ours,
            "baseline": "argsort ranks",
            "baseline_seconds": t_base,
            "speedup": t_base / t_ours,
            "R@1": ours[1],
            "R@1_baseline": base[1],
        }
    )
    _, t_emb = _time(recall_at_k_from_embeddings, q, c, (1, 5, 10))
    results.append({"name": f"recall_at_k_from_embeddings {n_small} pairs dim {dim}", "seconds": t_emb})

    del q, c, sim
    q = rng.standard_normal((n_large, dim)).astype(np.float32)
    c = (q + 0.8 * rng.standard_normal((n_large, dim))).astype(np.float32)
    before = _rss_gb()
    r, t_large = _time(recall_at_k_from_embeddings, q, c, (1, 5, 10))
    inputs_gb = 2 * q.nbytes / 1024**3
    results.append(
        {
            "name": f"recall_at_k_from_embeddings {n_large} pairs dim {dim}",
            "seconds": t_large,
            "cpu_seconds": _CPU["last"],
            "peak_rss_gb": _rss_gb(),
            "rss_before_gb": before,
            "inputs_gb": inputs_gb,
            "full_matrix_would_be_gb": n_large * n_large * 4 / 1024**3,
            "R@1": r[1],
            "target": "< 60 s and < 4 GB",
        }
    )


def _ellipsoid(shape, centre, radii):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (x - centre[2]) / radii[2]
    ) ** 2 <= 1


def bench_nsd(shape, results: list, with_monai: bool) -> None:
    from LaMed.metrics.segmentation import hd95, nsd

    d, h, w = shape
    # Two large, slightly different organs filling most of the volume (worst case for the crop).
    gt = _ellipsoid(shape, (d / 2, h / 2, w / 2), (0.37 * d, 0.39 * h, 0.37 * w))
    pred = _ellipsoid(shape, (d / 2 + 2, h / 2 - 6, w / 2 + 2), (0.36 * d, 0.40 * h, 0.36 * w))
    spacing = (1.0, 0.8, 0.8)
    warm = np.zeros((4, 4, 4), bool)
    warm[1:3, 1:3, 1:3] = True
    nsd(warm, warm, spacing, 2.0)  # import scipy outside the timing
    value, t = _time(nsd, pred, gt, spacing, 2.0)
    entry = {
        "name": f"nsd {d}x{h}x{w} (large organs)",
        "seconds": t,
        "cpu_seconds": _CPU["last"],
        "nsd": value,
        "target": "< 5 s",
    }
    hd, t_hd = _time(hd95, pred, gt, spacing)
    results.append({"name": f"hd95 {d}x{h}x{w} (large organs)", "seconds": t_hd, "hd95_mm": hd})
    small_gt = _ellipsoid(shape, (d / 2, h / 2, w / 2), (0.1 * d, 0.08 * h, 0.1 * w))
    small_pred = _ellipsoid(shape, (d / 2 + 1, h / 2 + 2, w / 2), (0.1 * d, 0.09 * h, 0.09 * w))
    _, t_small = _time(nsd, small_pred, small_gt, spacing, 2.0)
    results.append({"name": f"nsd {d}x{h}x{w} (small organ)", "seconds": t_small})
    if with_monai:
        import torch
        from monai.metrics import compute_surface_dice

        P = torch.from_numpy(pred)[None, None].float()
        G = torch.from_numpy(gt)[None, None].float()
        ref, t_ref = _time(compute_surface_dice, P, G, [2.0], include_background=True, spacing=spacing)
        entry.update(
            {
                "baseline": "MONAI compute_surface_dice",
                "baseline_seconds": t_ref,
                "speedup": t_ref / t,
                "nsd_baseline": float(ref[0, 0]),
            }
        )
    results.append(entry)


def bench_text(n_reports: int, results: list) -> None:
    from LaMed.metrics.text import corpus_bleu, rouge_l, tokenize_basic

    rng = random.Random(0)
    vocab = [
        "liver",
        "spleen",
        "kidney",
        "lesion",
        "mass",
        "cyst",
        "no",
        "normal",
        "the",
        "left",
        "right",
        "enlarged",
        "hypodense",
        "segment",
        "lobe",
        "contrast",
        "enhancement",
        "fluid",
        "collection",
        "small",
        "large",
        "within",
        "adjacent",
        "noted",
    ]
    refs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(30, 90))) for _ in range(n_reports)]
    preds = [" ".join(w for w in r.split() if rng.random() > 0.2) for r in refs]
    ours, t_bleu = _time(corpus_bleu, preds, refs)
    from pycocoevalcap.bleu.bleu import Bleu

    tok = lambda s: " ".join(tokenize_basic(s))  # noqa: E731
    gts = {i: [tok(r)] for i, r in enumerate(refs)}
    res = {i: [tok(p)] for i, p in enumerate(preds)}
    (ref_scores, _), t_coco = _time(Bleu(4).compute_score, gts, res, verbose=0)
    results.append(
        {
            "name": f"corpus BLEU-4 {n_reports} reports",
            "seconds": t_bleu,
            "baseline": "pycocoevalcap Bleu",
            "baseline_seconds": t_coco,
            "speedup": t_coco / t_bleu,
            "bleu4": ours["bleu4"],
            "bleu4_baseline": ref_scores[3],
        }
    )
    score, t_rouge = _time(rouge_l, preds, refs)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    t = time.perf_counter()
    ref = float(np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]))
    t_ref = time.perf_counter() - t
    results.append(
        {
            "name": f"ROUGE-L {n_reports} reports",
            "seconds": t_rouge,
            "baseline": "rouge-score",
            "baseline_seconds": t_ref,
            "speedup": t_ref / t_rouge,
            "rouge_l": score,
            "rouge_l_baseline": ref,
        }
    )


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--dim", type=int, default=256, help="embedding size for retrieval (time grows linearly)")
    p.add_argument("--no-monai", action="store_true", help="skip the MONAI NSD baseline (slow on big volumes)")
    p.add_argument("--only", choices=["retrieval", "nsd", "text"], default=None)
    a = p.parse_args(argv)
    results: list = []
    if a.only in (None, "retrieval"):
        bench_retrieval(500 if a.quick else 2000, 5000 if a.quick else 100_000, a.dim, results)
    if a.only in (None, "nsd"):
        bench_nsd((60, 128, 128) if a.quick else (300, 512, 512), results, with_monai=not a.no_monai)
    if a.only in (None, "text"):
        bench_text(500 if a.quick else 10_000, results)
    for r in results:
        extra = ""
        if "baseline_seconds" in r:
            extra = f"   baseline {r['baseline']}: {r['baseline_seconds']:.2f} s (x{r['speedup']:.1f})"
        mem = f"   peak RSS {r['peak_rss_gb']:.2f} GB" if "peak_rss_gb" in r else ""
        cpu = f" (CPU {r['cpu_seconds']:.1f} s)" if "cpu_seconds" in r else ""
        print(f"{r['name']:<58} {r['seconds']:8.2f} s{cpu}{mem}{extra}")
    import os

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
