"""Multi-label findings classification: AUROC, thresholded F1 / precision / recall / accuracy, thresholds, CIs.

Definitions (each matches scikit-learn; the tests compare them):

* ``roc_auc`` -- area under the ROC curve by the Mann-Whitney statistic with average ranks, so a
  tied positive / negative pair counts 1/2 (``sklearn.metrics.roc_auc_score``); NaN when the
  labels hold only one class (the AUROC is undefined there, never a made-up 0.5).
* ``binary_scores`` -- precision, recall, F1 and accuracy of ``score >= threshold`` with 0 for a
  0 / 0 ratio (``sklearn.metrics.*_score(..., zero_division=0)``).
* ``select_threshold`` -- the threshold maximising F1 (or Youden's J = TPR - FPR) over the
  observed scores; among equally good thresholds the highest (fewest positive calls).
* ``multilabel_report`` -- the above per finding plus ``macro`` (unweighted mean over the findings
  where the metric is defined) and ``weighted`` (mean weighted by each finding's positives, as
  sklearn's ``average="weighted"``): the columns of CT-CLIP's zero-shot table
  (Hamamci et al., arXiv 2403.17834).
* ``bootstrap_ci`` -- percentile 95 % intervals over cases resampled with replacement
  (``n_boot`` draws from ``numpy.random.default_rng(seed)``: the same seed gives the same
  intervals), thresholds held fixed, as CT-CLIP's ``bootstrap_values.py`` does with 1000 draws.

Shapes: ``y_true`` (N,) or (N, K) of 0/1, ``scores`` the same shape (any real numbers: a
probability, a cosine similarity, a logit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .base import to_numpy

METRICS = ("auroc", "f1", "precision", "recall", "accuracy")
THRESHOLD_CRITERIA = ("f1", "youden")


def _check_pair(y_true, scores, ndim: int | None = None):
    y = to_numpy(y_true, "y_true")
    s = to_numpy(scores, "scores").astype(np.float64)
    if y.shape != s.shape:
        raise ValueError(f"y_true has shape {y.shape} but scores has {s.shape}; they must match")
    if ndim is not None and y.ndim != ndim:
        raise ValueError(f"y_true must have {ndim} dimension(s), got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold only 0 and 1, got values {np.unique(y)[:6].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y.astype(bool), s


def _rank_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Column-wise AUROC of ``(N, K)`` arrays by average ranks; NaN for a column with one class."""
    from scipy.stats import rankdata

    ranks = rankdata(s, axis=0)  # average ranks: a tie between a positive and a negative counts 1/2
    n_pos = y.sum(axis=0).astype(np.float64)
    n_neg = y.shape[0] - n_pos
    rank_sum = (ranks * y).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def roc_auc(y_true, scores) -> float:
    """AUROC of one finding (see the module doc); NaN when ``y_true`` holds one class only."""
    y, s = _check_pair(y_true, scores, 1)
    if y.size == 0:
        return float("nan")
    return float(_rank_auc(y[:, None], s[:, None])[0])


def _counts(y: np.ndarray, pred: np.ndarray):
    tp = (pred & y).sum(axis=0).astype(np.float64)
    fp = (pred & ~y).sum(axis=0).astype(np.float64)
    fn = (~pred & y).sum(axis=0).astype(np.float64)
    tn = (~pred & ~y).sum(axis=0).astype(np.float64)
    return tp, fp, fn, tn


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def _binary(y: np.ndarray, s: np.ndarray, thr: np.ndarray) -> dict[str, np.ndarray]:
    tp, fp, fn, tn = _counts(y, s >= thr)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def binary_scores(y_true, scores, threshold: float) -> dict[str, float]:
    """Precision, recall, F1, accuracy of ``scores >= threshold`` for one finding (0 for 0 / 0)."""
    y, s = _check_pair(y_true, scores, 1)
    out = _binary(y[:, None], s[:, None], np.asarray([threshold], np.float64))
    return {k: float(v[0]) for k, v in out.items()}


def select_threshold(y_true, scores, criterion: str = "f1") -> float:
    """Threshold (one of the observed scores) maximising ``criterion`` (``f1`` or ``youden``).

    Predictions are ``scores >= threshold``; among equally good thresholds the highest is chosen.
    With no positive case F1 is 0 everywhere and the highest score is returned (one positive
    call at most); choose thresholds on a split where every finding has both classes.
    """
    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(f"threshold criterion {criterion!r} is not one of {THRESHOLD_CRITERIA}")
    y, s = _check_pair(y_true, scores, 1)
    if y.size == 0:
        raise ValueError("select_threshold: no cases")
    cand = np.unique(s)[::-1]  # descending: argmax keeps the first (highest) of equal values
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Positives called at threshold t = all cases with score >= t: cumulative counts at the last
    # index of each distinct score in descending order.
    last = np.searchsorted(-s_sorted, -cand, side="right") - 1
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    fp = np.cumsum(~y_sorted)[last].astype(np.float64)
    n_pos, n_neg = float(y.sum()), float((~y).sum())
    if criterion == "f1":
        value = _ratio(2 * tp, tp + fp + n_pos)
    else:
        value = _ratio(tp, np.full_like(tp, n_pos)) - _ratio(fp, np.full_like(fp, n_neg))
    return float(cand[int(np.argmax(value))])


def select_thresholds(y_true, scores, criterion: str = "f1") -> np.ndarray:
    """:func:`select_threshold` for each column of ``(N, K)`` arrays; returns ``(K,)``."""
    y, s = _check_pair(y_true, scores, 2)
    return np.asarray([select_threshold(y[:, k], s[:, k], criterion) for k in range(y.shape[1])])


def _table(y: np.ndarray, s: np.ndarray, thr: np.ndarray) -> dict[str, np.ndarray]:
    out = {"auroc": _rank_auc(y, s)}
    out.update(_binary(y, s, thr))
    return out


def _averages(per: Mapping[str, np.ndarray], support: np.ndarray) -> dict[str, dict[str, float]]:
    macro, weighted = {}, {}
    for m, v in per.items():
        ok = np.isfinite(v)
        macro[m] = float(np.mean(v[ok])) if ok.any() else float("nan")
        w = support * ok
        weighted[m] = float(np.sum(v[ok] * w[ok]) / w.sum()) if w.sum() > 0 else float("nan")
    return {"macro": macro, "weighted": weighted}


def multilabel_report(y_true, scores, thresholds, names: Sequence[str]) -> dict[str, dict]:
    """Per-finding and averaged metrics of ``(N, K)`` labels / scores with ``(K,)`` thresholds.

    Returns ``{"per_finding": {name: {auroc, f1, precision, recall, accuracy, threshold,
    positives, negatives}}, "macro": {...}, "weighted": {...}}`` (AUROC NaN for a finding with one
    class; the averages skip it).
    """
    y, s = _check_pair(y_true, scores, 2)
    thr = np.asarray(thresholds, np.float64).reshape(-1)
    if thr.shape[0] != y.shape[1] or len(names) != y.shape[1]:
        raise ValueError(f"{y.shape[1]} findings in the arrays, {thr.shape[0]} thresholds and {len(names)} names")
    per = _table(y, s, thr)
    pos = y.sum(axis=0)
    out: dict[str, dict] = {"per_finding": {}}
    for k, name in enumerate(names):
        row = {m: float(per[m][k]) for m in METRICS}
        row.update(threshold=float(thr[k]), positives=int(pos[k]), negatives=int(y.shape[0] - pos[k]))
        out["per_finding"][name] = row
    out.update(_averages(per, pos.astype(np.float64)))
    return out


def bootstrap_ci(
    y_true, scores, thresholds, names: Sequence[str], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, dict[str, list[float]]]:
    """Percentile ``1 - alpha`` intervals of :func:`multilabel_report`'s metrics over resampled cases.

    Returns ``{name | "macro" | "weighted": {metric: [low, high]}}``; draws in which a finding has
    one class leave its AUROC out (``nanpercentile``); an interval with no valid draw is NaN.
    """
    y, s = _check_pair(y_true, scores, 2)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    thr = np.asarray(thresholds, np.float64).reshape(-1)
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    keys = list(names) + ["macro", "weighted"]
    draws = {k: {m: np.empty(n_boot) for m in METRICS} for k in keys}
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        yb, sb = y[idx], s[idx]
        per = _table(yb, sb, thr)
        avg = _averages(per, yb.sum(axis=0).astype(np.float64))
        for m in METRICS:
            for k, name in enumerate(names):
                draws[name][m][b] = per[m][k]
            draws["macro"][m][b] = avg["macro"][m]
            draws["weighted"][m][b] = avg["weighted"][m]
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    out: dict[str, dict[str, list[float]]] = {}
    for k in keys:
        out[k] = {}
        for m in METRICS:
            v = draws[k][m]
            v = v[np.isfinite(v)]
            out[k][m] = [float(np.percentile(v, lo)), float(np.percentile(v, hi))] if v.size else [float("nan")] * 2
    return out
