"""Findings-classification metrics against scikit-learn (random and tied scores), thresholds, bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest

from LaMed.metrics.classification import (
    binary_scores,
    bootstrap_ci,
    multilabel_report,
    roc_auc,
    select_threshold,
    select_thresholds,
)

sk = pytest.importorskip("sklearn.metrics")


def _cases(seed: int, n: int = 57, tied: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    s = rng.normal(size=n) + 0.8 * y
    if tied:  # few distinct values: many positive / negative ties
        s = np.round(s * 2) / 2
    return y, s


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_auroc_matches_sklearn(seed, tied):
    y, s = _cases(seed, tied=tied)
    assert roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_auroc_by_hand_and_undefined():
    # positives 0.8, 0.5; negatives 0.5, 0.1: pairs (0.8>0.5) 1, (0.8>0.1) 1, (0.5=0.5) 1/2, (0.5>0.1) 1 -> 3.5/4
    assert roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert np.isnan(roc_auc([1, 1, 1], [0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_binary_scores_match_sklearn(seed, tied):
    y, s = _cases(seed, tied=tied)
    for thr in (np.median(s), s.max() + 1, s.min()):
        pred = (s >= thr).astype(int)
        got = binary_scores(y, s, thr)
        assert got["f1"] == pytest.approx(sk.f1_score(y, pred, zero_division=0))
        assert got["precision"] == pytest.approx(sk.precision_score(y, pred, zero_division=0))
        assert got["recall"] == pytest.approx(sk.recall_score(y, pred, zero_division=0))
        assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_threshold_is_the_best_by_brute_force_and_sklearn(seed, tied):
    y, s = _cases(seed, tied=tied)
    thr = select_threshold(y, s, "f1")
    f1s = {t: sk.f1_score(y, (s >= t).astype(int), zero_division=0) for t in np.unique(s)}
    best = max(f1s.values())
    assert f1s[thr] == pytest.approx(best)
    assert thr == max(t for t, v in f1s.items() if v == pytest.approx(best))  # the highest of the ties
    # Youden's J: sklearn's full ROC curve, argmax of tpr - fpr (thresholds descending: the first is highest)
    fpr, tpr, thresholds = sk.roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    assert select_threshold(y, s, "youden") == pytest.approx(thresholds[int(np.argmax(j))])
    with pytest.raises(ValueError, match="criterion"):
        select_threshold(y, s, "accuracy")


def test_multilabel_report_macro_and_weighted_match_sklearn():
    rng = np.random.default_rng(3)
    n, k = 80, 4
    y = (rng.random((n, k)) < [0.1, 0.3, 0.5, 0.7]).astype(int)
    s = rng.normal(size=(n, k)) + y
    thr = select_thresholds(y, s)
    rep = multilabel_report(y, s, thr, ["a", "b", "c", "d"])
    pred = (s >= thr).astype(int)
    for avg in ("macro", "weighted"):
        assert rep[avg]["f1"] == pytest.approx(sk.f1_score(y, pred, average=avg, zero_division=0))
        assert rep[avg]["precision"] == pytest.approx(sk.precision_score(y, pred, average=avg, zero_division=0))
        assert rep[avg]["recall"] == pytest.approx(sk.recall_score(y, pred, average=avg, zero_division=0))
        assert rep[avg]["auroc"] == pytest.approx(sk.roc_auc_score(y, s, average=avg))
    accs = [sk.accuracy_score(y[:, i], pred[:, i]) for i in range(k)]
    assert rep["macro"]["accuracy"] == pytest.approx(np.mean(accs))
    assert rep["per_finding"]["b"]["positives"] == int(y[:, 1].sum())
    # a finding without positives: AUROC undefined, left out of both averages
    y2 = y.copy()
    y2[:, 0] = 0
    rep2 = multilabel_report(y2, s, thr, ["a", "b", "c", "d"])
    assert np.isnan(rep2["per_finding"]["a"]["auroc"])
    assert rep2["macro"]["auroc"] == pytest.approx(np.mean([sk.roc_auc_score(y[:, i], s[:, i]) for i in (1, 2, 3)]))


def test_bootstrap_is_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.4).astype(int)
    s = rng.normal(size=(120, 3)) + 1.2 * y
    thr = np.full(3, 0.5)
    a = bootstrap_ci(y, s, thr, ["x", "y", "z"], n_boot=200, seed=7)
    b = bootstrap_ci(y, s, thr, ["x", "y", "z"], n_boot=200, seed=7)
    c = bootstrap_ci(y, s, thr, ["x", "y", "z"], n_boot=200, seed=8)
    assert a == b and a != c
    rep = multilabel_report(y, s, thr, ["x", "y", "z"])
    for key in ("x", "macro", "weighted"):
        for m in ("auroc", "f1", "accuracy"):
            lo, hi = a[key][m]
            point = rep["per_finding"][key][m] if key == "x" else rep[key][m]
            assert lo < point < hi, (key, m, lo, point, hi)
    # by hand: the interval of the AUROC of finding x equals the percentiles of the same resamples
    draws = np.random.default_rng(7)
    aucs = []
    for _ in range(200):
        idx = draws.integers(0, 120, size=120)
        aucs.append(sk.roc_auc_score(y[idx, 0], s[idx, 0]))
    assert a["x"]["auroc"] == pytest.approx([np.percentile(aucs, 2.5), np.percentile(aucs, 97.5)])
