"""Linear probes on a CLIP's image embeddings: how much of each finding the embedding carries.

    probe = fit_linear_probe(train.embeddings, train.labels, train.names, c=1.0)   # ZeroShotResult fields
    p = probe.predict_proba(test.embeddings)                                    # (N, K) probabilities

One L2-regularised logistic regression per finding on the L2-normalised image embeddings of a
labelled training split (the linear-probe evaluation of CLIP, Radford et al. 2021, section 3.2, with
a fixed inverse regularisation ``c`` instead of a sweep), scored on the test split with the same
metrics as the zero-shot scores. Side by side they tell the two failures of a zero-shot score apart:
the image embedding does not carry the finding (the probe is near chance too), or it does and the
prompts do not reach it (the probe is high, zero-shot is not). A probe is supervised: it is a
diagnostic of the representation, not a zero-shot result.

Fit it on labelled volumes the CLIP was not trained on, so that the probe's training data is as new
to the encoder as the test split is. With few positives the probe's AUROC is noisy: on the demo's
phantoms, a probe fitted on 150 volumes (15 with a kidney removed) read 0.74 for a finding that one
fitted on 2400 volumes showed absent from the embedding (0.40-0.50).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearProbe:
    """Fitted probes: finding ``names[k]`` scores ``sigmoid(unit(x) . coef[k] + intercept[k])``."""

    names: tuple[str, ...]
    coef: np.ndarray  # (K, E)
    intercept: np.ndarray  # (K,)
    c: float

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """``(N, E)`` image embeddings (any norm) -> ``(N, K)`` probabilities."""
        x = _unit(embeddings, "embeddings")
        if x.shape[1] != self.coef.shape[1]:
            raise ValueError(f"embeddings have {x.shape[1]} dimensions, the probe was fitted on {self.coef.shape[1]}")
        z = x @ self.coef.T + self.intercept
        # sigmoid without overflow for large |z|
        return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"{what}: expected a non-empty (N, E) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def fit_linear_probe(
    embeddings: np.ndarray, labels: np.ndarray, names: Sequence[str], c: float = 1.0, max_iter: int = 5000
) -> LinearProbe:
    """Fit one logistic regression per finding.

    Args:
        embeddings: ``(N, E)`` image embeddings of the training split.
        labels: ``(N, K)`` 0/1 ground truth (``manifest_labels``).
        names: the ``K`` finding names.
        c: inverse L2 regularisation strength (scikit-learn's ``C``), > 0.

    A finding without both a positive and a negative training case is refused: a probe fitted on one
    class would score every test case alike and report a meaningless AUROC.
    """
    from sklearn.linear_model import LogisticRegression

    x = _unit(embeddings, "embeddings")
    y = np.asarray(labels)
    names = tuple(str(n) for n in names)
    if y.shape != (len(x), len(names)):
        raise ValueError(f"labels: expected shape {(len(x), len(names))} (cases, findings), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels: expected 0/1 values")
    if not c > 0:
        raise ValueError(f"c: the inverse regularisation must be > 0, got {c}")
    one_class = [n for k, n in enumerate(names) if y[:, k].min() == y[:, k].max()]
    if one_class:
        raise ValueError(
            f"finding(s) {one_class} have only positive or only negative cases in the probe's training "
            "split; a probe needs both"
        )
    coef, intercept = [], []
    for k in range(len(names)):
        clf = LogisticRegression(C=float(c), max_iter=max_iter).fit(x, y[:, k])
        coef.append(clf.coef_[0])
        intercept.append(clf.intercept_[0])
    return LinearProbe(names, np.asarray(coef), np.asarray(intercept), float(c))
