"""Checks every training dataset applies to what it hands the model (one implementation for all)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["require_unit_interval", "require_text"]

# float16 storage rounds 1.0 + a hair; anything further out was not normalised.
_TOLERANCE = 1e-3


def require_unit_interval(array: Any, where: str) -> None:
    """Refuse an image whose values are not finite or lie outside [0, 1] (an un-normalised CT in HU
    trains without error but teaches the model nothing it can use at inference)."""
    arr = np.asarray(array)
    if arr.size == 0:
        raise ValueError(f"{where}: empty image")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{where}: the image contains NaN or infinite values")
    if lo < -_TOLERANCE or hi > 1 + _TOLERANCE:
        raise ValueError(f"{where}: values must lie in [0, 1] (a prepared image), found [{lo:.4g}, {hi:.4g}]")


def require_text(text: Any, what: str, where: str) -> str:
    """The text, refused when missing or blank (an empty report or answer would teach the model to
    stop at once)."""
    if text is None or not str(text).strip():
        raise ValueError(f"{where}: empty {what}")
    return str(text)
