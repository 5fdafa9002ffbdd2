"""Small helpers shared by the metric modules: input checks and the "metric unavailable" error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed in this environment (no Java, no local model, missing package).

    Raised instead of returning a made-up score; the message says what is missing and how to
    provide it. Bench scripts catch it and record the message under ``"unavailable"``.
    """


def to_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or nested sequence) as a numpy array without copying when possible."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - defensive
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to a numpy array") from exc


def check_same_length(a: Sequence, b: Sequence, name_a: str = "predictions", name_b: str = "references") -> None:
    """Refuse pairs of lists whose lengths differ, naming both."""
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} items but {name_b} has {len(b)}; they must pair one to one")


def mean_or_nan(values: Sequence[float]) -> float:
    """Arithmetic mean of ``values``; NaN for an empty list (never a silent 0)."""
    return float(np.mean(values)) if len(values) else float("nan")
