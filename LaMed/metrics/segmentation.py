"""Segmentation metrics on one binary volume pair: Dice, NSD, HD95, ASSD, instance F1, M3D soft Dice.

Inputs are numpy arrays or torch tensors of the same shape (2-D or 3-D; leading singleton
batch/channel axes are dropped), any dtype; non-zero = foreground. ``spacing`` is the voxel size
in mm per axis, in the array's axis order (``(D, H, W)`` for LaMed volumes).

Surface conventions follow MONAI (``compute_surface_dice(use_subvoxels=False)``,
``compute_hausdorff_distance``, ``compute_average_surface_distance``), which the tests use as the
reference: the surface of a mask is the set of its voxels that have a background 6-neighbour
(``mask XOR binary_erosion(mask)``; voxels on the array border count as surface), and distances
are Euclidean between voxel centres in mm.

Empty masks (MONAI returns NaN or inf there; we return numbers so that averages stay defined):

=================  ==================  ==================
case               dice / nsd          hd95 / assd
=================  ==================  ==================
both empty         ``empty_score`` (1) 0.0
one empty          0.0                 ``inf``
=================  ==================  ==================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import to_numpy

__all__ = [
    "dice",
    "iou",
    "m3d_soft_dice",
    "surface_distances",
    "nsd",
    "hd95",
    "hausdorff_distance",
    "assd",
    "instance_f1",
    "detection_scores",
]


def _as_mask(x, name: str) -> np.ndarray:
    arr = to_numpy(x, name)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2-D or 3-D mask (leading size-1 axes allowed), got shape {arr.shape}")
    return arr.astype(bool, copy=False) if arr.dtype == bool else arr != 0


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    return p, g


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        return (float(spacing),) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing must have one value per axis ({ndim}), got {sp}")
    if any(s <= 0 or not np.isfinite(s) for s in sp):
        raise ValueError(f"spacing values must be positive mm, got {sp}")
    return sp


# ----------------------------------------------------------------------------------------------
# Overlap
# ----------------------------------------------------------------------------------------------


def dice(pred, gt, empty_score: float = 1.0) -> float:
    """Dice = 2 |P ∩ G| / (|P| + |G|) on binarised masks (MONAI ``DiceMetric``, ``ignore_empty=False``).

    Both empty: ``empty_score`` (1.0, as MONAI with ``ignore_empty=False``); one empty: 0.
    """
    p, g = _pair(pred, gt)
    sp, sg = int(p.sum()), int(g.sum())
    if sp + sg == 0:
        return float(empty_score)
    return 2.0 * int(np.count_nonzero(p & g)) / (sp + sg)


def iou(pred, gt, empty_score: float = 1.0) -> float:
    """Jaccard index |P ∩ G| / |P ∪ G| on binarised masks; both empty -> ``empty_score``."""
    p, g = _pair(pred, gt)
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return float(empty_score)
    return int(np.count_nonzero(p & g)) / union


def m3d_soft_dice(pred, gt, from_logits: bool = True, smooth: float = 1.0) -> float:
    """The "Dice" of M3D's Bench (``BinaryDice`` in ``Bench/eval/metrics.py``), for one sample.

    soft Dice = 2 * sum(p * g) / (sum(p) + sum(g) + smooth), with p = sigmoid(pred) when
    ``from_logits`` (M3D passes logits) and ``smooth`` = 1 in the denominator only. Probabilities
    are not thresholded, ground-truth voxels equal to -1 count as 0, and an empty ground truth
    always scores 0 (even for a perfect empty prediction). Not comparable to :func:`dice`.
    """
    p = np.asarray(to_numpy(pred, "pred"), dtype=np.float64)
    g = np.asarray(to_numpy(gt, "gt"), dtype=np.float64)
    if p.size != g.size:
        raise ValueError(f"pred and gt must have the same number of voxels, got shapes {p.shape} and {g.shape}")
    p, g = p.reshape(-1), g.reshape(-1)
    if from_logits:
        p = 0.5 * (1.0 + np.tanh(0.5 * p))  # sigmoid without overflow warnings
    g = np.where(g == -1, 0.0, g)
    return float(2.0 * np.dot(p, g) / (p.sum() + g.sum() + smooth))


# ----------------------------------------------------------------------------------------------
# Surfaces and distances
# ----------------------------------------------------------------------------------------------


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one background 6-neighbour (outside the array = background)."""
    if not mask.any():
        return mask.copy()
    inner = mask.copy()
    for axis in range(mask.ndim):
        n = mask.shape[axis]
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        inner[tuple(lo)] &= mask[tuple(hi)]  # neighbour at +1 along axis
        inner[tuple(hi)] &= mask[tuple(lo)]  # neighbour at -1 along axis
        first = [slice(None)] * mask.ndim
        last = [slice(None)] * mask.ndim
        first[axis], last[axis] = 0, n - 1
        inner[tuple(first)] = False  # the array border touches background
        inner[tuple(last)] = False
    return mask & ~inner


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


# Above this many voxels in the box holding both surfaces, a k-d tree over the surface voxels is
# faster than a distance transform of the box (a 300x512x512 pair of large organs: ~3 s vs ~50 s).
EDT_MAX_VOXELS = 4_000_000


def _directed(from_edges: np.ndarray, to_edges: np.ndarray, spacing, max_distance: float | None = None) -> np.ndarray:
    """Distance (mm) from every voxel of ``from_edges`` to the nearest voxel of ``to_edges``.

    Exact Euclidean distances between voxel centres; with ``max_distance`` set, distances above it
    may be returned as ``inf`` (enough for a tolerance test, and faster).
    """
    n_from = int(from_edges.sum())
    if n_from == 0:
        return np.zeros(0)
    if not to_edges.any():
        return np.full(n_from, np.inf)
    # Only the box holding both surfaces matters: every target voxel lies inside it, so the
    # nearest one of any source voxel is found there and the distance is exact.
    box = _bbox(from_edges | to_edges)
    if int(np.prod([s.stop - s.start for s in box])) <= EDT_MAX_VOXELS:
        from scipy.ndimage import distance_transform_edt

        dist = distance_transform_edt(~to_edges[box], sampling=spacing)
        return dist[from_edges[box]]
    from scipy.spatial import cKDTree

    scale = np.asarray(spacing, dtype=np.float64)
    src = np.argwhere(from_edges[box]) * scale
    dst = np.argwhere(to_edges[box]) * scale
    bound = np.inf if max_distance is None else float(max_distance) * (1 + 1e-9) + 1e-9
    dist, _ = cKDTree(dst).query(src, k=1, distance_upper_bound=bound, workers=-1)
    return dist


def surface_distances(
    pred, gt, spacing: Sequence[float] | float | None = None, max_distance: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Surface-to-surface distances in mm: ``(pred surface -> gt surface, gt surface -> pred surface)``.

    Same surfaces and distances as MONAI ``get_edge_surface_distance(symmetric=True)``. A surface
    measured against an empty mask gets ``inf`` distances; an empty mask has no distances.
    With ``max_distance``, distances above it may come back as ``inf`` (used by :func:`nsd`).
    """
    p, g = _pair(pred, gt)
    sp = _spacing(spacing, p.ndim)
    box = _bbox(p | g)
    if box is None:
        return np.zeros(0), np.zeros(0)
    # Crop to the union's box plus one voxel so the surfaces are computed on a small array; the
    # margin keeps the "array border is background" rule identical to the uncropped volume.
    crop = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, p.shape))
    ep, eg = _surface(p[crop]), _surface(g[crop])
    return _directed(ep, eg, sp, max_distance), _directed(eg, ep, sp, max_distance)


def nsd(
    pred, gt, spacing: Sequence[float] | float | None = None, tolerance_mm: float = 1.0, empty_score: float = 1.0
) -> float:
    """Normalised surface Dice (surface Dice at tolerance, Nikolov et al. 2021), voxel-counting form.

    NSD = (|{p in S_P : d(p, S_G) <= tau}| + |{g in S_G : d(g, S_P) <= tau}|) / (|S_P| + |S_G|),
    with S the surface voxels and tau = ``tolerance_mm``. Equals MONAI
    ``compute_surface_dice(..., spacing=spacing, use_subvoxels=False)``; DeepMind's
    ``surface-distance`` weights surface elements by area instead and gives slightly different
    values. Both empty: ``empty_score`` (MONAI: NaN); one empty: 0.
    """
    if tolerance_mm < 0 or not np.isfinite(tolerance_mm):
        raise ValueError(f"tolerance_mm must be a finite value >= 0, got {tolerance_mm}")
    d_pg, d_gp = surface_distances(pred, gt, spacing, max_distance=tolerance_mm)
    total = d_pg.size + d_gp.size
    if total == 0:
        return float(empty_score)
    return float((np.count_nonzero(d_pg <= tolerance_mm) + np.count_nonzero(d_gp <= tolerance_mm)) / total)


def hausdorff_distance(
    pred, gt, spacing: Sequence[float] | float | None = None, percentile: float | None = None
) -> float:
    """Symmetric (percentile) Hausdorff distance in mm between the two surfaces.

    max(q(d(S_P -> S_G)), q(d(S_G -> S_P))) where q is the maximum, or the ``percentile``-th
    percentile with linear interpolation (MONAI ``compute_hausdorff_distance``, which uses
    ``torch.quantile``). Both empty: 0.0; one empty: inf.
    """
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    if d_pg.size == 0 and d_gp.size == 0:
        return 0.0
    if d_pg.size == 0 or d_gp.size == 0:
        return float("inf")
    if percentile is None:
        return float(max(d_pg.max(), d_gp.max()))
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def hd95(pred, gt, spacing: Sequence[float] | float | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (see :func:`hausdorff_distance`)."""
    return hausdorff_distance(pred, gt, spacing, percentile=95)


def assd(pred, gt, spacing: Sequence[float] | float | None = None) -> float:
    """Average symmetric surface distance in mm: mean of all distances in both directions.

    MONAI ``compute_average_surface_distance(symmetric=True)``. Both empty: 0.0; one empty: inf.
    """
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    if d_pg.size == 0 and d_gp.size == 0:
        return 0.0
    if d_pg.size == 0 or d_gp.size == 0:
        return float("inf")
    return float(np.concatenate([d_pg, d_gp]).mean())


# ----------------------------------------------------------------------------------------------
# Instance (lesion) detection F1
# ----------------------------------------------------------------------------------------------


def _components(x, name: str, labeled: bool, connectivity: int) -> tuple[np.ndarray, int]:
    arr = to_numpy(x, name)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if labeled:
        values = np.unique(arr)
        values = values[values != 0]
        lab = np.zeros(arr.shape, dtype=np.int32)
        for i, v in enumerate(values, start=1):
            lab[arr == v] = i
        return lab, len(values)
    from scipy.ndimage import generate_binary_structure, label

    if not 1 <= connectivity <= arr.ndim:
        raise ValueError(f"connectivity must be in 1..{arr.ndim} (1 = faces, {arr.ndim} = full), got {connectivity}")
    lab, n = label(arr != 0, structure=generate_binary_structure(arr.ndim, connectivity))
    return lab, int(n)


def instance_f1(
    pred, gt, iou_threshold: float = 0.5, connectivity: int = 3, pred_labeled: bool = False, gt_labeled: bool = False
) -> dict:
    """Lesion-level detection F1: instances matched one to one at IoU >= ``iou_threshold``.

    As the CVPR 2025 BiomedSegFM text-guided track scores instance targets (and Text3DSAM
    reports): instances are the connected components of each binary mask (``connectivity`` 3 =
    26-neighbourhood in 3-D), or the distinct non-zero labels when ``*_labeled``. Every pair's
    IoU is computed, pairs below the threshold are discarded, and a maximum-IoU one-to-one
    assignment (Hungarian) decides the true positives. Precision = TP / #pred, recall = TP / #gt,
    F1 = 2 TP / (#pred + #gt); with no instance on either side F1 = precision = recall = 1.

    Returns:
        ``{"f1", "precision", "recall", "tp", "fp", "fn", "num_pred", "num_gt"}``.
    """
    lp, n_p = _components(pred, "pred", pred_labeled, connectivity)
    lg, n_g = _components(gt, "gt", gt_labeled, connectivity)
    if lp.shape != lg.shape:
        raise ValueError(f"pred and gt must have the same shape, got {lp.shape} and {lg.shape}")
    tp = 0
    if n_p and n_g:
        area_p = np.bincount(lp.ravel(), minlength=n_p + 1)
        area_g = np.bincount(lg.ravel(), minlength=n_g + 1)
        both = (lp > 0) & (lg > 0)
        pairs, inter = np.unique(lp[both].astype(np.int64) * (n_g + 1) + lg[both], return_counts=True)
        ip, ig = pairs // (n_g + 1), pairs % (n_g + 1)
        ious = inter / (area_p[ip] + area_g[ig] - inter)
        keep = ious >= iou_threshold
        if keep.any():
            from scipy.optimize import linear_sum_assignment

            weight = np.zeros((n_p, n_g))
            weight[ip[keep] - 1, ig[keep] - 1] = ious[keep]
            rows, cols = linear_sum_assignment(weight, maximize=True)
            tp = int(np.count_nonzero(weight[rows, cols] > 0))
    fp, fn = n_p - tp, n_g - tp
    if n_p + n_g == 0:
        prec = rec = f1 = 1.0
    else:
        prec = tp / n_p if n_p else 0.0
        rec = tp / n_g if n_g else 0.0
        f1 = 2 * tp / (n_p + n_g)
    return {"f1": f1, "precision": prec, "recall": rec, "tp": tp, "fp": fp, "fn": fn, "num_pred": n_p, "num_gt": n_g}


def detection_scores(
    pred_present: Sequence[bool], gt_present: Sequence[bool], dices: Sequence[float] | None = None
) -> dict:
    """Detection over prompts, as the CVPR 2025 BiomedSegFM text-guided task scores it beside Dice.

    One entry per (volume, prompt): ``gt_present`` = the structure is in the volume (its ground-truth
    mask is non-empty), ``pred_present`` = the model reported it (a non-empty mask / ``present``).
    TP = both, FP = reported but absent, FN = present but not reported, TN = neither.
    ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``f1 = 2 P R / (P + R)``; a ratio whose
    denominator is 0 is 1.0 (nothing claimed: no FP; nothing to find: no FN), and F1 is 0 when
    P + R = 0. ``dice_tp``: mean of ``dices`` over the TP
    entries (NaN when there is none), so a correct "absent" neither inflates nor dilutes the Dice.
    """
    p = np.asarray(list(pred_present), bool)
    g = np.asarray(list(gt_present), bool)
    if p.shape != g.shape or p.ndim != 1:
        raise ValueError(f"pred_present and gt_present must be 1-D of the same length, got {p.shape} and {g.shape}")
    tp, fp = int(np.sum(p & g)), int(np.sum(p & ~g))
    fn, tn = int(np.sum(~p & g)), int(np.sum(~p & ~g))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1}
    if dices is not None:
        d = np.asarray(list(dices), float)
        if d.shape != p.shape:
            raise ValueError(f"dices must have one value per entry ({p.shape[0]}), got {d.shape}")
        out["dice_tp"] = float(d[p & g].mean()) if tp else float("nan")
    return out
