"""Is the prompted structure in the volume at all? A calibrated mask-score rule.

Text-prompted models (SegVol, Text3DSAM, RefSAM3D) always return some mask, also for an organ that
was removed (nephrectomy, splenectomy) or lies outside the field of view. LaMed turns the mask into
a per-prompt decision without a new head, so every published checkpoint gets it:

* **score** ``s`` = the largest logit of the prompt's final (zoom-out + zoom-in) prediction over
  the volume: a structure that is there gives a confident voxel somewhere; an absent one only
  lukewarm ones. It needs no extra forward pass.
* **presence probability** ``p = sigmoid(a * s + b)`` (Platt scaling). Uncalibrated, ``a = 1`` and
  ``b = -logit(threshold)``, so ``p > 0.5`` exactly when the mask is non-empty (the behaviour of
  the seed systems). :func:`calibrate_presence` fits ``(a, b)`` by L2-regularised logistic
  regression on a validation split of (volume, prompt, present?) triples and stores them in the
  model's config (``presence_calibration``), so they travel with ``save_pretrained``.
* a prompt with ``p < 0.5`` is reported ``"present": false`` and gets an **empty mask** (and no
  label in the label map), instead of a false mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from LaMed.inference.preprocessing import model_preset

__all__ = ["presence_scores", "presence_probability", "fit_platt", "calibrate_presence", "decide"]


def presence_scores(logits: torch.Tensor) -> np.ndarray:
    """Score per prompt: the largest logit of ``logits`` ``(K, *spatial)``; shape ``(K,)`` float64."""
    return logits.reshape(logits.shape[0], -1).amax(1).double().cpu().numpy()


def _calibration(config, threshold: float | None = None, calibrated: bool = True) -> dict[str, float]:
    cal = getattr(config, "presence_calibration", None) if calibrated else None
    if cal:
        return {"a": float(cal["a"]), "b": float(cal["b"])}
    thr = float(config.threshold if threshold is None else threshold)
    return {"a": 1.0, "b": -math.log(thr / (1.0 - thr))}


def presence_probability(
    config, scores: np.ndarray, threshold: float | None = None, calibrated: bool = True
) -> np.ndarray:
    """``sigmoid(a * scores + b)`` with the config's calibration (or, without one or with
    ``calibrated=False``, the uncalibrated rule at ``threshold``, default the config's)."""
    cal = _calibration(config, threshold, calibrated)
    z = cal["a"] * np.asarray(scores, np.float64) + cal["b"]
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free sigmoid


def fit_platt(scores: Sequence[float], present: Sequence[bool], l2: float = 1e-2, iters: int = 100) -> dict[str, float]:
    """``(a, b)`` minimising ``sum log-loss(sigmoid(a s + b), y) + l2 / 2 * a^2`` (Newton steps; the
    intercept is not penalised, as in scikit-learn's ``LogisticRegression(C=1 / l2)``). The penalty
    keeps ``a`` finite when the validation split is perfectly separable."""
    s = np.asarray(list(scores), np.float64)
    y = np.asarray(list(present), np.float64)
    if s.ndim != 1 or s.shape != y.shape or s.size < 2:
        raise ValueError(f"fit_platt: need matching 1-D scores and labels (at least 2), got {s.shape} and {y.shape}")
    if y.min() == y.max():
        raise ValueError("fit_platt: the validation split needs both present and absent prompts")
    x = np.stack([s, np.ones_like(s)], 1)
    w = np.zeros(2)
    reg = np.diag([l2, 0.0])
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ w)))
        grad = x.T @ (p - y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"a": float(w[0]), "b": float(w[1])}


@torch.no_grad()
def calibrate_presence(
    model, cases: Sequence[tuple], zoom_in: bool = True, l2: float = 1e-2, preset=None
) -> dict[str, float]:
    """Fit the presence calibration on a validation split and store it in ``model.config``.

    ``cases``: ``(volume, {prompt: present?})`` pairs (``volume`` a ``LaMed.data.io.Volume``). Each
    volume is segmented once with all its prompts; returns ``{"a", "b", "n", "n_present"}``.
    """
    # segment.py decides presence with this module's functions: imported here to keep the layer acyclic
    from LaMed.inference.segment import preprocess, zoom_out_zoom_in

    scores, labels = [], []
    for volume, truth in cases:
        names = list(truth)
        if not names:
            continue
        pre = preprocess(volume, model.config.img_size, model_preset(model, preset), native=zoom_in)
        logits, _ = zoom_out_zoom_in(model, pre, names, zoom_in)
        scores.extend(presence_scores(logits))
        labels.extend(bool(truth[n]) for n in names)
    cal = fit_platt(scores, labels, l2=l2)
    model.config.presence_calibration = dict(cal)
    return {**cal, "n": len(labels), "n_present": int(sum(labels))}


def decide(config, scores: np.ndarray, threshold: float | None = None, calibrated=True) -> tuple:
    """``(probabilities, present)`` per prompt; present = probability >= 0.5. ``calibrated``: a bool, or
    one per prompt (``False`` rows use the uncalibrated rule, present exactly when the mask is not
    empty)."""
    use = np.broadcast_to(np.asarray(calibrated, bool), np.shape(scores))
    prob = np.where(
        use,
        presence_probability(config, scores, threshold, True),
        presence_probability(config, scores, threshold, False),
    )
    return prob, prob >= 0.5
