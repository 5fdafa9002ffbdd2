"""Checks of what a user hands to inference, made before any model runs.

Each check raises ``ValueError`` naming the option (``--prompt``, ``--threshold``, ...) and what is
wrong, so that the CLI prints one line instead of a traceback, and so that nothing is written for a
request that would have produced a silently wrong result (an empty prompt segmented as "", a
threshold of -1 giving an all-foreground mask, a question cut off past the model's positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "check_prompts",
    "check_threshold",
    "check_overlap",
    "check_device",
    "text_position_limit",
    "check_text_length",
    "MAX_OVERLAP",
]

# The windows per axis grow as 1 / (1 - overlap): 0.9 already runs 10x per axis (1000x in 3D) more
# windows than no overlap; beyond it a CPU run takes hours with nothing gained (MONAI defaults to 0.25).
MAX_OVERLAP = 0.9


def check_prompts(texts: Sequence[str], option: str = "--prompt") -> list:
    """The texts with surrounding spaces removed; an empty or blank one is refused."""
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{option}: expected text, got {type(text).__name__} (entry {i + 1})")
        if not text.strip():
            raise ValueError(f"{option}: entry {i + 1} is empty; give a structure name or a sentence")
        out.append(text.strip())
    return out


def check_threshold(threshold: float | None, option: str = "--threshold") -> float | None:
    """A probability threshold strictly between 0 and 1 (0 or 1 would mark every or no voxel)."""
    if threshold is None:
        return None
    t = float(threshold)
    if not math.isfinite(t) or not 0.0 < t < 1.0:
        raise ValueError(f"{option}: a probability threshold must lie strictly between 0 and 1, got {threshold}")
    return t


def check_overlap(overlap: float, option: str = "--overlap") -> float:
    """Sliding-window overlap in [0, MAX_OVERLAP]."""
    o = float(overlap)
    if not math.isfinite(o) or not 0.0 <= o <= MAX_OVERLAP:
        raise ValueError(
            f"{option}: the sliding-window overlap must lie in [0, {MAX_OVERLAP}], got {overlap} "
            f"(windows per axis grow as 1 / (1 - overlap))"
        )
    return o


def check_device(device: str, option: str = "--device") -> torch.device:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{option}: {device!r} is not a torch device (use cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{option}: {device!r} asked for, but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option}: {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{option}: {device!r} asked for, but MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option}: device type {dev.type!r} is not supported (use cpu, cuda, cuda:N or mps)")
    return dev


def text_position_limit(text_model: torch.nn.Module, tokenizer=None) -> int | None:
    """How many tokens ``text_model`` can take: its ``config.max_position_embeddings`` (and the
    tokenizer's ``model_max_length`` when that is a real, smaller limit); ``None`` when unknown."""
    limits = []
    config = getattr(text_model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        n = getattr(cfg, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            limits.append(n)
    n = getattr(tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 10**6:  # transformers uses ~1e30 for "no limit"
        limits.append(n)
    return min(limits) if limits else None


def check_text_length(
    tokenizer, texts: Sequence[str], limit: int | None, option: str, *, reserved: int = 0, what: str = "the text model"
) -> None:
    """Refuse a text whose token count (+ ``reserved`` positions) exceeds ``limit`` instead of
    letting the model truncate it silently or fail with a shape error deep inside."""
    if limit is None:
        return
    room = limit - reserved
    for i, text in enumerate(texts):
        n = len(tokenizer(text, add_special_tokens=True)["input_ids"])
        if n > room:
            extra = f" ({reserved} positions go to the image and the answer)" if reserved else ""
            raise ValueError(
                f"{option}: entry {i + 1} is {n} tokens long; {what} takes at most {room}{extra}. Shorten it."
            )
