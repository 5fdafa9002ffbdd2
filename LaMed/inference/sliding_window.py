"""Sliding-window inference over a volume larger than the network input (MONAI semantics).

``sliding_window_inference(volume, roi_size, predictor)`` cuts ``volume`` ``(B, C, D, H, W)`` into
windows of ``roi_size`` with the given ``overlap``, runs ``predictor`` on batches of windows and
blends the outputs with a constant or Gaussian importance map. Window placement, padding and
blending follow ``monai.inferers.sliding_window_inference`` (``tests/test_seg_inference.py``
compares the two), so results match MONAI's; what is added is the window origin handed to the
predictor, which SegVol's zoom-in needs to place box / point prompts inside each window.

A volume smaller than the window on some axis is padded symmetrically (constant ``cval``) and the
padding is cropped from the output, as MONAI does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

BLEND_MODES = ("constant", "gaussian")
Window = tuple[slice, slice, slice]


def scan_intervals(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[int]:
    """Step between window starts per axis: the whole axis when the window spans it, else
    ``int(roi * (1 - overlap))`` (at least 1)."""
    out = []
    for n, r in zip(image_size, roi_size):
        out.append(r if r == n else max(int(r * (1.0 - overlap)), 1))
    return out


def window_starts(image_size: int, roi: int, interval: int) -> list[int]:
    """Window starts along one axis: every ``interval`` until a window reaches the end; the last
    window is shifted back to end exactly at ``image_size``."""
    starts = []
    for i in range(int(math.ceil(image_size / interval))):
        s = i * interval
        starts.append(s - max(s + roi - image_size, 0))
        if s + roi >= image_size:
            break
    return starts


def dense_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[Window]:
    """All windows (D-major order) covering a volume of ``image_size`` (each axis >= roi)."""
    steps = scan_intervals(image_size, roi_size, overlap)
    per_axis = [window_starts(n, r, s) for n, r, s in zip(image_size, roi_size, steps)]
    return [
        tuple(slice(s, s + r) for s, r in zip((a, b, c), roi_size))
        for a in per_axis[0]
        for b in per_axis[1]
        for c in per_axis[2]
    ]


def importance_map(roi_size: Sequence[int], mode: str = "constant", sigma_scale: float = 0.125) -> torch.Tensor:
    """Blending weights of shape ``roi_size``: ones, or a separable sampled Gaussian
    ``exp(-x^2 / (2 sigma^2))`` centred at ``(n - 1) / 2`` with sigma = ``sigma_scale`` x side,
    clamped below at ``max(min, 1e-3)`` (MONAI >= 1.2's ``compute_importance_map``)."""
    if mode == "constant":
        return torch.ones(tuple(roi_size))
    if mode != "gaussian":
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
    m = None
    for n in roi_size:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
        g = torch.exp(x**2 / (-2.0 * (sigma_scale * n) ** 2))
        m = g if m is None else m.unsqueeze(-1) * g
    return m.clamp(min=max(float(m.min()), 1e-3))


def sliding_window_inference(
    volume: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[torch.Tensor, list[tuple[int, int, int]]], torch.Tensor],
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    mode: str = "constant",
    sigma_scale: float = 0.125,
    cval: float = 0.0,
    progress: bool = False,
) -> torch.Tensor:
    """Blend ``predictor`` outputs over windows of ``roi_size``.

    Args:
        volume: ``(B, C, D, H, W)``.
        roi_size: window ``(D, H, W)`` in voxels.
        predictor: ``(windows (n, C, *roi), origins [(d, h, w)] * n) -> (n, C_out, *roi)``; the
            origins are window starts in ``volume`` voxels (negative when a window reaches into
            the padding of a small volume). The batch axis of ``volume`` is folded into ``n``.
        overlap: fraction of a window shared with its neighbour (MONAI's meaning).
        sw_batch_size: windows per predictor call.
        mode: ``"constant"`` or ``"gaussian"`` blending.

    Returns:
        ``(B, C_out, D, H, W)`` float32.
    """
    if volume.ndim != 5:
        raise ValueError(f"sliding_window_inference expects (B, C, D, H, W), got {tuple(volume.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    roi = [int(r) for r in roi_size]
    size = list(volume.shape[2:])
    pad_before = [max(r - n, 0) // 2 for r, n in zip(roi, size)]
    pad_after = [max(r - n, 0) - p for r, n, p in zip(roi, size, pad_before)]
    if any(pad_before) or any(pad_after):
        pads = []
        for b, a in zip(reversed(pad_before), reversed(pad_after)):
            pads += [b, a]
        volume = F.pad(volume, pads, value=cval)
    padded = list(volume.shape[2:])
    windows = dense_windows(padded, roi, overlap)
    weight = importance_map(roi, mode, sigma_scale).to(volume.device)
    b = volume.shape[0]
    jobs = [(i, w) for i in range(b) for w in windows]
    out = count = None
    iterator = range(0, len(jobs), sw_batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="windows", leave=False)
    for start in iterator:
        chunk = jobs[start : start + sw_batch_size]
        batch = torch.stack([volume[i][(slice(None),) + w] for i, w in chunk])
        origins = [tuple(s.start - p for s, p in zip(w, pad_before)) for _, w in chunk]
        pred = predictor(batch, origins).float()
        if tuple(pred.shape[2:]) != tuple(roi):
            raise ValueError(
                f"predictor returned spatial size {tuple(pred.shape[2:])}, expected the window {tuple(roi)}"
            )
        if out is None:
            out = torch.zeros(b, pred.shape[1], *padded, device=pred.device)
            count = torch.zeros(b, 1, *padded, device=pred.device)
        for (i, w), p in zip(chunk, pred):
            out[i][(slice(None),) + w] += p * weight
            count[i][(slice(None),) + w] += weight
    out = out / count
    crop = tuple(slice(p, p + n) for p, n in zip(pad_before, size))
    return out[(slice(None), slice(None)) + crop]
