"""Intensity and geometry transforms for 3D volumes, and the published train-time augmentation.

Conventions
-----------
* Arrays are ``(D, H, W)`` or channel-first ``(C, D, H, W)``; every spatial argument (sizes,
  spacings, boxes) is given in ``(D, H, W)`` order. The spatial axes are always the last three, so
  the same call works with or without a channel axis. This is also what MONAI's spatial
  transforms assume of a channel-first array, so a size passed here means the same thing there.
* Computation is float32 (never float64) on torch tensors. Functions accept numpy arrays or
  tensors and return a ``torch.Tensor`` unless stated otherwise.
* Each operation names the MONAI transform it is equivalent to; ``tests/test_transforms.py``
  checks the equivalence numerically. We do not call MONAI on the hot path because a published
  pipeline (window -> crop -> resize) run transform by transform touches every voxel of a
  512x512x300 CT several times; here the intensity steps are folded into one clip+scale
  (:class:`IntensityMap`) and resizing is a separable per-axis operator (:func:`linear_op`, sparse:
  its memory grows with the output size, never with the square of an axis) that only reads the
  input slices it needs, which is what makes a full CT -> 32x256x256 take a
  fraction of a second on two CPU cores.

The named preprocessing presets (``m3d``, ``med3dvlm``, ``flare``, ``hsenet``, ...) live in
:mod:`LaMed.data.presets` and are re-exported here: ``list_presets``, ``get_preset``,
``apply_preset``, ``Preset``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

if TYPE_CHECKING:  # pragma: no cover
    from monai.transforms import Compose

ArrayLike = np.ndarray | torch.Tensor
Box = tuple[int, int, int, int, int, int]
"""A half-open box ``(d0, h0, w0, d1, h1, w1)`` in voxels: ``array[d0:d1, h0:h1, w0:w1]``."""

__all__ = [
    "Box",
    "IntensityMap",
    "window_map",
    "percentile_map",
    "segvol_foreground_stats",
    "window",
    "min_max",
    "percentile_scale",
    "segvol_normalize",
    "foreground_box",
    "crop",
    "linear_matrix",
    "nearest_matrix",
    "antialias_matrix",
    "linear_op",
    "nearest_index",
    "selection_op",
    "antialias_op",
    "apply_axis",
    "render",
    "resize",
    "resampled_shape",
    "resample_to_spacing",
    "select_slices",
    "slice_min_max",
    "train_augmentation",
    # re-exported from LaMed.data.presets (lazily, see __getattr__)
    "Preset",
    "list_presets",
    "get_preset",
    "apply_preset",
    "register_preset",
]


def _f32(x: ArrayLike) -> torch.Tensor:
    """float32 tensor view/copy of ``x`` (copies only when the dtype differs)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.to(torch.float32)


# --------------------------------------------------------------------------------------------
# Intensity: every published normalisation is "clip, then a positive affine map", so a whole
# chain (window -> min-max, or fg-percentile clip -> z-score -> min-max) folds into one map.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntensityMap:
    """``y = (clip(x, lo, hi) - zero) * scale``, a monotone non-decreasing point-wise map.

    ``zero`` is the input value sent to 0, written in input units so that the darkest voxel of a
    min-max normalisation comes out as exactly 0.0 (not 1e-8), which keeps MONAI's
    "foreground is > 0" cropping rule exact. ``scale == 0`` means a constant (all-zero) output.
    The bounds and ``zero`` are stored rounded to float32 because that is the precision the
    voxels are computed in.
    """

    lo: float = -math.inf
    hi: float = math.inf
    zero: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        for name in ("lo", "hi", "zero", "scale"):
            v = float(np.float32(getattr(self, name)))
            object.__setattr__(self, name, v)
        if not self.lo <= self.hi:
            raise ValueError(f"IntensityMap: lo ({self.lo}) must be <= hi ({self.hi})")
        if not (self.scale >= 0 and math.isfinite(self.scale)):
            raise ValueError(f"IntensityMap: scale must be finite and >= 0, got {self.scale}")

    def __call__(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Apply to a float tensor (in place when ``inplace``)."""
        y = x if inplace else x.clone()
        if self.scale == 0.0:
            return y.zero_()
        if math.isfinite(self.lo) or math.isfinite(self.hi):
            y.clamp_(None if math.isinf(self.lo) else self.lo, None if math.isinf(self.hi) else self.hi)
        return y.sub_(self.zero).mul_(self.scale)

    def clip_value(self, v: float) -> float:
        return float(np.float32(min(max(float(v), self.lo), self.hi)))

    def value(self, v: float) -> float:
        """The map applied to one scalar."""
        return 0.0 if self.scale == 0.0 else (self.clip_value(v) - self.zero) * self.scale

    def then_min_max(self, vmin: float, vmax: float) -> IntensityMap:
        """This map followed by min-max to [0, 1], given the input's min and max.

        A positive affine step between the clip and the min-max cancels out, so the result is
        ``(clip(x) - clip(vmin)) / (clip(vmax) - clip(vmin))``.
        """
        cmin, cmax = self.clip_value(vmin), self.clip_value(vmax)
        if not cmax > cmin or self.scale == 0.0:
            return IntensityMap(zero=0.0, scale=0.0)
        return IntensityMap(self.lo, self.hi, cmin, 1.0 / (cmax - cmin))

    def foreground_threshold(self) -> float | None:
        """``t`` with ``map(x) > 0  <=>  x > t``; ``None`` if no input value maps above 0."""
        if self.scale == 0.0 or self.hi <= self.zero:
            return None
        # lo <= zero < hi: clip(x) > zero exactly when x > zero; lo > zero: every voxel is above.
        return -math.inf if self.lo > self.zero else self.zero


def window_map(lo: float, hi: float) -> IntensityMap:
    """HU window: clip to ``[lo, hi]`` and scale to [0, 1] (MONAI ``ScaleIntensityRange(lo, hi, 0, 1, clip=True)``)."""
    if not hi > lo:
        raise ValueError(f"window: hi ({hi}) must be greater than lo ({lo})")
    return IntensityMap(lo, hi, lo, 1.0 / (float(np.float32(hi)) - float(np.float32(lo))))


class _Histogram:
    """Exact value histogram of a <= 16-bit integer array (CT HU are int16): percentiles, mean
    and std from one counting pass instead of a partition of a float copy of the volume."""

    _CHUNK = 1 << 20

    def __init__(self, a: np.ndarray):
        info = np.iinfo(a.dtype)
        flat = a.reshape(-1)
        counts = np.zeros(int(info.max) - int(info.min) + 1, np.int64)
        for i in range(0, flat.size, self._CHUNK):  # chunked: bincount copies its input to intp
            counts += np.bincount(flat[i : i + self._CHUNK].astype(np.int32) - int(info.min), minlength=counts.size)
        nz = np.flatnonzero(counts)
        self.values = (nz + int(info.min)).astype(np.float64)
        self.counts = counts[nz]

    @staticmethod
    def usable(a: np.ndarray) -> bool:
        return np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize <= 2 and a.size > 0

    def above(self, t: float) -> _Histogram:
        h = object.__new__(_Histogram)
        keep = self.values > t
        h.values, h.counts = self.values[keep], self.counts[keep]
        return h

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> float:
        return float((self.values * self.counts).sum() / self.n)

    def std(self) -> float:
        return float(math.sqrt((((self.values - self.mean()) ** 2) * self.counts).sum() / self.n))

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        """numpy's default (linear) percentile of the underlying array."""
        cum = np.cumsum(self.counts)
        n = int(cum[-1])
        out = []
        for q in qs:
            pos = q / 100.0 * (n - 1)
            lo = int(math.floor(pos))
            v0 = self.values[np.searchsorted(cum, lo, side="right")]
            v1 = self.values[np.searchsorted(cum, min(lo + 1, n - 1), side="right")]
            out.append(float(v0 + (v1 - v0) * (pos - lo)))
        return out


def _percentiles(a: np.ndarray, qs: Sequence[float]) -> list[float]:
    if _Histogram.usable(a):
        return _Histogram(a).percentiles(qs)
    return [float(v) for v in np.percentile(a, list(qs))]


def percentile_map(x: ArrayLike, lower: float = 0.5, upper: float = 99.5) -> IntensityMap:
    """Clip to the ``[lower, upper]`` percentiles of ``x`` and scale that range to [0, 1].

    Equivalent to MONAI ``ScaleIntensityRangePercentiles(lower, upper, 0, 1, clip=True)``
    (numpy's default linear percentile). M3D-RefSeg uses 0.5 / 99.5.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
    a = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x)
    plo, phi = (float(np.float32(v)) for v in _percentiles(a, (lower, upper)))
    if not phi > plo:
        return IntensityMap(zero=0.0, scale=0.0)
    return IntensityMap(plo, phi, plo, 1.0 / (phi - plo))


def segvol_foreground_stats(
    x: ArrayLike, lower: float = 0.05, upper: float = 99.95
) -> tuple[float, float, float, float]:
    """SegVol's foreground statistics: ``(p_lower, p_upper, mean, std)``.

    Foreground = voxels strictly above the volume mean. The clip bounds are that foreground's
    ``lower`` / ``upper`` percentiles; ``mean`` / ``std`` are the (population) mean and std of
    the same foreground voxels before clipping, as in SegVol's data processing.
    A constant volume has no foreground: returns its value for both bounds and std 0.
    """
    a = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x)
    if _Histogram.usable(a):
        h = _Histogram(a)
        fg = h.above(h.mean())
        if fg.n == 0:
            return float(h.values[0]), float(h.values[0]), float(h.values[0]), 0.0
        plo, phi = fg.percentiles((lower, upper))
        return plo, phi, fg.mean(), fg.std()
    thr = a.mean(dtype=np.float64)
    fgv = a[a > thr]
    if fgv.size == 0:
        v = float(a.flat[0]) if a.size else 0.0
        return v, v, v, 0.0
    plo, phi = np.percentile(fgv, [lower, upper])
    return float(plo), float(phi), float(fgv.mean(dtype=np.float64)), float(fgv.std(dtype=np.float64))


def window(x: ArrayLike, lo: float, hi: float) -> torch.Tensor:
    """Clip to ``[lo, hi]`` (e.g. HU) and scale to [0, 1]. Any shape; float32 out."""
    return window_map(lo, hi)(_f32(x))


def min_max(x: ArrayLike) -> torch.Tensor:
    """Scale to [0, 1] by the global min and max; a constant input gives zeros.

    MONAI ``ScaleIntensity(minv=0, maxv=1)``.
    """
    t = _f32(x)
    return IntensityMap().then_min_max(float(t.min()), float(t.max()))(t)


def percentile_scale(x: ArrayLike, lower: float = 0.5, upper: float = 99.5) -> torch.Tensor:
    """Clip to the ``[lower, upper]`` percentiles and scale them to [0, 1] (see :func:`percentile_map`)."""
    return percentile_map(x, lower, upper)(_f32(x))


def segvol_normalize(x: ArrayLike, lower: float = 0.05, upper: float = 99.95) -> torch.Tensor:
    """SegVol "foreground normalisation": clip to the foreground's [0.05, 99.95] percentiles,
    then z-score with the foreground mean and std (std floored at 1e-8). Output is unbounded.

    Foreground = voxels above the volume mean (see :func:`segvol_foreground_stats`). Note that a
    min-max after this (as SegVol and M3D-Seg do) cancels the z-score: the [0, 1] result only
    depends on the two clip bounds.
    """
    plo, phi, mean, std = segvol_foreground_stats(x, lower, upper)
    t = _f32(x).clamp(plo, phi)  # not in place: _f32 may share memory with the caller's array
    return t.sub_(mean).div_(max(std, 1e-8))


# --------------------------------------------------------------------------------------------
# Foreground box and crop (MONAI CropForeground with its default select_fn: value > 0).
# --------------------------------------------------------------------------------------------


def _above(a: np.ndarray, t: float) -> tuple[np.ndarray, ...]:
    """Per-axis 1-D profiles of ``a > t`` for a (D, H, W) array, without a full boolean copy."""
    if math.isinf(t) and t < 0:
        return tuple(np.ones(n, bool) for n in a.shape)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        # x > t  <=>  x > floor(t) for integers, and the comparison then stays in the int dtype.
        info = np.iinfo(a.dtype)
        ti = math.floor(t)
        if ti < info.min:
            return tuple(np.ones(n, bool) for n in a.shape)
        if ti >= info.max:
            return tuple(np.zeros(n, bool) for n in a.shape)
        t = a.dtype.type(ti)
    else:
        t = a.dtype.type(t)
    # max-projections read the array twice and allocate only (D,) and (H, W) outputs.
    prof_d = a.reshape(a.shape[0], -1).max(axis=1) > t
    plane = a.max(axis=0) > t
    return prof_d, plane.any(axis=1), plane.any(axis=0)


def foreground_box(x: ArrayLike, threshold: float = 0.0) -> Box | None:
    """Smallest box holding every voxel ``> threshold`` of a ``(D, H, W)`` or ``(C, D, H, W)``
    array (any channel counts). ``None`` if there is no such voxel.

    With ``threshold=0`` this is the box of MONAI ``CropForeground()`` (margin 0). MONAI crops an
    all-background volume to an empty array; callers here keep the whole volume instead.
    """
    a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 4:
        a = a.max(axis=0)
    if a.ndim != 3:
        raise ValueError(f"foreground_box: expected (D, H, W) or (C, D, H, W), got shape {a.shape}")
    profiles = _above(a, threshold)
    if not profiles[0].any():
        return None
    lo_hi = [(int(np.argmax(p)), len(p) - int(np.argmax(p[::-1]))) for p in profiles]
    return (lo_hi[0][0], lo_hi[1][0], lo_hi[2][0], lo_hi[0][1], lo_hi[1][1], lo_hi[2][1])


def crop(x: ArrayLike, box: Box | None) -> ArrayLike:
    """``x[..., d0:d1, h0:h1, w0:w1]`` (a view); ``box=None`` returns ``x`` unchanged."""
    if box is None:
        return x
    d0, h0, w0, d1, h1, w1 = box
    return x[..., d0:d1, h0:h1, w0:w1]


# --------------------------------------------------------------------------------------------
# Resizing as separable per-axis operators. A (n_out, n_in) matrix per axis reproduces torch's
# interpolation exactly (trilinear = product of three 1-D linear interpolations), composes by
# matrix product (resample then crop then resize), and tells which input slices are needed.
# --------------------------------------------------------------------------------------------


def _check_sizes(n_in: int, n_out: int) -> None:
    if n_in < 1 or n_out < 1:
        raise ValueError(f"resize: sizes must be >= 1, got {n_in} -> {n_out}")


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(i0, i1, w0, w1)``: output ``i`` = ``w0[i] * in[i0[i]] + w1[i] * in[i1[i]]`` (torch sampling)."""
    _check_sizes(n_in, n_out)
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, 1.0 - w1, w1


def linear_op(n_in: int, n_out: int) -> sparse.csr_matrix:
    """:func:`linear_matrix` as a sparse ``(n_out, n_in)`` matrix: two taps a row, memory O(n_out)."""
    i0, i1, w0, w1 = _linear_taps(n_in, n_out)
    rows = np.arange(n_out)
    return sparse.csr_matrix(
        (np.concatenate([w0, w1]), (np.concatenate([rows, rows]), np.concatenate([i0, i1]))), shape=(n_out, n_in)
    )  # duplicate (row, col) entries are summed


def linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """1-D linear interpolation ``n_in -> n_out`` as a dense ``(n_out, n_in)`` float64 matrix.

    Same sampling as ``F.interpolate(mode="linear"/"trilinear", align_corners=False)`` and MONAI
    ``Resize(mode="trilinear")``: output centre ``i`` reads input position
    ``(i + 0.5) * n_in / n_out - 0.5``, clamped at the borders. The resize engine uses the sparse
    :func:`linear_op`; this dense form is for inspection and tests.
    """
    return linear_op(n_in, n_out).toarray()


def nearest_index(n_in: int, n_out: int, exact: bool = False) -> np.ndarray:
    """Input index read by each output position of a 1-D nearest-neighbour resize (int64, ``(n_out,)``).

    ``exact=False`` is torch/MONAI ``mode="nearest"`` (input index ``floor(i * n_in / n_out)``,
    what M3D used for masks); ``exact=True`` is ``"nearest-exact"`` (``floor((i + 0.5) * n_in /
    n_out)``, pixel-centre aligned, what SegVol used).
    """
    _check_sizes(n_in, n_out)
    pos = (np.arange(n_out) + (0.5 if exact else 0.0)) * (n_in / n_out)
    return np.minimum(np.floor(pos).astype(np.int64), n_in - 1)


def selection_op(index: np.ndarray, n_in: int) -> sparse.csr_matrix:
    """Sparse ``(len(index), n_in)`` 0/1 matrix picking input ``index[i]`` for output ``i``."""
    index = np.asarray(index, np.int64)
    return sparse.csr_matrix((np.ones(index.size), (np.arange(index.size), index)), shape=(index.size, n_in))


def nearest_matrix(n_in: int, n_out: int, exact: bool = False) -> np.ndarray:
    """:func:`nearest_index` as a dense ``(n_out, n_in)`` 0/1 matrix (for inspection and tests)."""
    return selection_op(nearest_index(n_in, n_out, exact), n_in).toarray()


def _gaussian_rows(n: int, rows: np.ndarray, sigma: float, truncate: float = 4.0) -> sparse.csr_matrix:
    """Rows ``rows`` of the 1-D Gaussian smoothing operator with mirror boundaries (scipy.ndimage
    ``mode="mirror"``), as a sparse ``(len(rows), n)`` matrix: only the rows a resize reads are built,
    so smoothing a 100,000-sample axis never forms an n x n matrix."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (offsets / sigma) ** 2)
    k /= k.sum()
    j = np.asarray(rows, np.int64)[:, None] + offsets[None, :]
    if n > 1:  # mirror about the edge samples: -1 -> 1, n -> n - 2, repeated with period 2n-2
        period = 2 * n - 2
        j = np.abs(np.mod(j, period))
        j = np.where(j >= n, period - j, j)
    else:
        j = np.zeros_like(j)
    r = np.repeat(np.arange(len(rows)), offsets.size)
    return sparse.csr_matrix((np.tile(k, len(rows)), (r, j.ravel())), shape=(len(rows), n))


def antialias_op(n_in: int, n_out: int) -> sparse.csr_matrix:
    """Linear resize with scikit-image's anti-aliasing (``skimage.transform.resize(...,
    anti_aliasing=True, order=1)``): a Gaussian pre-filter of ``sigma = max(0, (n_in/n_out - 1)/2)``
    (mirror boundary, truncated at 4 sigma), then linear sampling at pixel centres; sparse
    ``(n_out, n_in)``, memory O(n_out * sigma).

    Matches skimage exactly when downsampling; when upsampling (no filter) the outermost half
    voxel differs slightly because skimage mirrors where torch clamps.
    """
    sigma = max(0.0, (n_in / n_out - 1.0) / 2.0)
    lin = linear_op(n_in, n_out)
    if sigma == 0.0:
        return lin
    need = np.unique(lin.indices)  # the only smoothed samples the linear step reads
    return (lin[:, need] @ _gaussian_rows(n_in, need, sigma)).tocsr()


def antialias_matrix(n_in: int, n_out: int) -> np.ndarray:
    """:func:`antialias_op` as a dense ``(n_out, n_in)`` matrix (for inspection and tests)."""
    return antialias_op(n_in, n_out).toarray()


def _csr(m) -> sparse.csr_matrix:
    m = m.tocsr() if sparse.issparse(m) else sparse.csr_matrix(np.asarray(m))
    m.eliminate_zeros()
    m.sort_indices()
    return m


def _rows(m) -> list[tuple[np.ndarray, np.ndarray]]:
    """Nonzero (columns, weights) of each row of a per-axis operator (dense or sparse)."""
    m = _csr(m)
    return [(m.indices[a:b], m.data[a:b]) for a, b in zip(m.indptr[:-1], m.indptr[1:])]


def _is_selection(m) -> bool:
    m = _csr(m)
    return bool(np.all(np.diff(m.indptr) == 1) and np.all(m.data == 1))


def _selected(m) -> np.ndarray:
    """Input index of each row of a selection operator (see :func:`_is_selection`)."""
    return _csr(m).indices.astype(np.int64)


def apply_axis(x: torch.Tensor, axis: int, m) -> torch.Tensor:
    """Apply the ``(n_out, n_in)`` per-axis operator ``m`` (dense or sparse) along ``axis`` of a float tensor.

    Each output slice is the weighted sum of the few input slices its row of ``m`` touches
    (two for linear interpolation), so the cost is ``taps * output size``, not a dense product.
    """
    if x.shape[axis] != m.shape[1]:
        raise ValueError(f"apply_axis: axis {axis} has size {x.shape[axis]}, operator expects {m.shape[1]}")
    # numpy on purpose: these are many small slab operations, where torch's intra-op thread
    # pool costs more than it gains (and stalls badly when the cores are shared).
    src = np.moveaxis(x.detach().to(torch.float32).numpy(), axis, 0)
    out = np.zeros((m.shape[0], *src.shape[1:]), dtype=np.float32)
    tmp = np.empty(src.shape[1:], dtype=np.float32)
    for r, (cols, ws) in enumerate(_rows(m)):
        if not cols.size:
            continue
        np.multiply(src[cols[0]], np.float32(ws[0]), out=out[r])
        for c, wc in zip(cols[1:], ws[1:]):
            np.multiply(src[c], np.float32(wc), out=tmp)
            out[r] += tmp
    return torch.from_numpy(np.moveaxis(out, 0, axis))


_MODES = ("trilinear", "nearest", "nearest-exact")


def _nearest_indices(n_in: int, n_out: int, mode: str) -> np.ndarray:
    return nearest_index(n_in, n_out, exact=mode == "nearest-exact")


def render(
    a: ArrayLike,
    d_op: np.ndarray | None,
    hw_size: Sequence[int] | None,
    mode: str = "trilinear",
    antialias: bool = False,
    intensity: IntensityMap | None = None,
) -> torch.Tensor:
    """The resize engine: ``intensity`` then a per-axis resize of one ``(D, H, W)`` volume.

    Args:
        a: ``(D, H, W)`` array of any numeric dtype (e.g. raw int16 HU); never modified.
        d_op: ``(D', D)`` operator along D (:func:`linear_matrix`, :func:`antialias_matrix`,
            :func:`nearest_matrix`, or a product of them); ``None`` keeps D.
        hw_size: ``(H', W')`` in-plane output size; ``None`` keeps it.
        mode: in-plane interpolation, ``"trilinear"`` (bilinear in-plane, torch/MONAI sampling),
            ``"nearest"`` or ``"nearest-exact"``.
        antialias: scikit-image Gaussian pre-filter in-plane (D's is part of ``d_op``).
        intensity: point-wise map, applied to the gathered slices before interpolating.

    Returns float32 ``(D', H', W')``. Only the D slices that ``d_op`` reads (and, for nearest,
    the rows/columns selected) are gathered and converted to float, which is what makes a
    512x512x300 CT -> 32x256x256 cheap.
    """
    if mode not in _MODES:
        raise ValueError(f"resize: unknown mode {mode!r}; expected one of {_MODES}")
    x = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if x.ndim != 3:
        raise ValueError(f"render: expected a (D, H, W) array, got shape {x.shape}")
    f = intensity or IntensityMap()
    if d_op is not None:
        if d_op.shape[1] != x.shape[0]:
            raise ValueError(f"render: D operator expects {d_op.shape[1]} slices, volume has {x.shape[0]}")
        d_op = _csr(d_op)
        if _is_selection(d_op):
            x, d_op = np.take(x, _selected(d_op), axis=0), None
        else:
            need = np.unique(d_op.indices)
            if need.size < x.shape[0]:
                x, d_op = np.take(x, need, axis=0), d_op[:, need]
    h_out, w_out = hw_size if hw_size is not None else x.shape[1:]
    if mode != "trilinear" and hw_size is not None:  # nearest in-plane is a pure selection: do it first
        x = np.take(
            np.take(x, _nearest_indices(x.shape[1], h_out, mode), axis=1),
            _nearest_indices(x.shape[2], w_out, mode),
            axis=2,
        )
    buf = x.astype(np.float32, copy=True)
    if f.scale == 0.0:
        buf[...] = 0.0
    else:
        # The whole map runs before interpolating, so the darkest voxels are exactly 0.0 and any
        # weighted sum of them stays exactly 0.0: "foreground is > 0" survives the resize.
        if math.isfinite(f.lo) or math.isfinite(f.hi):
            np.clip(buf, f.lo, f.hi, out=buf)
        buf -= np.float32(f.zero)
        buf *= np.float32(f.scale)
    t = torch.from_numpy(buf)

    def inplane(t: torch.Tensor) -> torch.Tensor:
        if mode != "trilinear" or tuple(t.shape[1:]) == (h_out, w_out):
            return t
        if antialias:
            from scipy.ndimage import gaussian_filter1d

            arr = t.numpy()
            for axis, n_out in ((1, h_out), (2, w_out)):
                sigma = max(0.0, (arr.shape[axis] / n_out - 1.0) / 2.0)
                if sigma > 0:
                    arr = gaussian_filter1d(arr, sigma, axis=axis, mode="mirror", truncate=4.0)
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        return F.interpolate(t[None], size=(h_out, w_out), mode="bilinear", align_corners=False)[0]

    if d_op is not None and d_op.shape[0] > d_op.shape[1]:  # D grows: shrink in-plane first
        t = apply_axis(inplane(t), 0, d_op)
    else:
        t = inplane(apply_axis(t, 0, d_op) if d_op is not None else t)
    return t


def resize(
    x: ArrayLike,
    size: Sequence[int],
    mode: str = "trilinear",
    antialias: bool = False,
) -> torch.Tensor:
    """Resize the last three axes of a ``(D, H, W)`` / ``(C, D, H, W)`` array to ``size`` (D, H, W).

    ``mode``: ``"trilinear"`` (images; same values as MONAI ``Resize(mode="trilinear")`` and
    ``F.interpolate(..., align_corners=False)``; float32 out), ``"nearest"`` or
    ``"nearest-exact"`` (masks and label maps: values are copied, never interpolated, and the
    dtype is kept). ``antialias=True`` adds scikit-image's Gaussian pre-filter
    (:func:`antialias_matrix`); the published pipelines other than FLARE do not use it.
    """
    if len(size) != 3 or any(int(s) < 1 for s in size):
        raise ValueError(f"resize: size must be three positive ints (D, H, W), got {tuple(size)}")
    if mode not in _MODES:
        raise ValueError(f"resize: unknown mode {mode!r}; expected one of {_MODES}")
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.ndim not in (3, 4):
        raise ValueError(f"resize: expected (D, H, W) or (C, D, H, W), got shape {tuple(t.shape)}")
    size = tuple(int(s) for s in size)
    if mode != "trilinear":  # pure index selection: keep the dtype
        for k, (n, s) in enumerate(zip(t.shape[-3:], size)):
            t = t.index_select(t.ndim - 3 + k, torch.from_numpy(_nearest_indices(n, s, mode)))
        return t
    if t.ndim == 4:
        return torch.stack([resize(c, size, mode, antialias) for c in t])
    d_op = antialias_op(t.shape[0], size[0]) if antialias else linear_op(t.shape[0], size[0])
    return render(t, d_op, size[1:], mode, antialias)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """Grid size after resampling to ``target`` spacing: ``floor(n * spacing / target)`` per axis
    (at least 1), the rule of HSENet's CT-RATE scripts. All in (D, H, W) order, mm."""
    return tuple(max(1, int(math.floor(n * s / t + 1e-6))) for n, s, t in zip(shape, spacing, target))


def resample_to_spacing(
    x: ArrayLike,
    spacing: Sequence[float],
    target: Sequence[float],
    mode: str = "trilinear",
) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Resample the last three axes from ``spacing`` to about ``target`` mm (both (D, H, W)).

    The grid size is :func:`resampled_shape`; the field of view is kept, so the effective
    spacing returned is ``n_in * spacing / n_out`` (equal to ``target`` when it divides evenly).
    """
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    new = resampled_shape(t.shape[-3:], spacing, target)
    eff = tuple(float(n * s / m) for n, s, m in zip(t.shape[-3:], spacing, new))
    return resize(t, new, mode=mode), eff


def select_slices(x: ArrayLike, n: int) -> torch.Tensor:
    """``n`` evenly spaced slices along D (float32): indices ``round(linspace(0, D - 1, n))``,
    or linear interpolation of D up to ``n`` when the volume has fewer slices (HSENet 2D branch).
    """
    t = _f32(x)
    d = t.shape[-3]
    if d >= n:
        idx = torch.from_numpy(np.rint(np.linspace(0, d - 1, n)).astype(np.int64))
        return t.index_select(t.ndim - 3, idx)
    return apply_axis(t, t.ndim - 3, linear_op(d, n))


def slice_min_max(x: ArrayLike) -> torch.Tensor:
    """Min-max each D slice of ``(..., D, H, W)`` to [0, 1] on its own; a constant slice gives 0."""
    t = _f32(x)
    flat = t.reshape(*t.shape[:-2], -1)
    lo = flat.amin(dim=-1, keepdim=True).unsqueeze(-1)
    hi = flat.amax(dim=-1, keepdim=True).unsqueeze(-1)
    rng = hi - lo
    return torch.where(rng > 0, (t - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(t))


# --------------------------------------------------------------------------------------------
# Train-time augmentation (M3D-LaMed, Med3DVLM, HSENet all use the same four MONAI transforms).
# --------------------------------------------------------------------------------------------


def train_augmentation(
    image_key: str = "image",
    mask_keys: Sequence[str] = (),
    rotate_prob: float = 0.5,
    flip_prob: float = 0.1,
    scale: float = 0.1,
    scale_prob: float = 0.5,
    shift: float = 0.1,
    shift_prob: float = 0.5,
) -> Compose:
    """The published train augmentation as a MONAI ``Compose`` of dictionary transforms.

    For ``(C, D, H, W)`` arrays: RandRotate90 (p 0.5) in the axial (H, W) plane, i.e. MONAI
    ``spatial_axes=(1, 2)``; RandFlip (p 0.1) independently on D, H and W; RandScaleIntensity
    (factor 0.1, p 0.5); RandShiftIntensity (offset 0.1, p 0.5). The geometric ones apply to the
    image and every mask key with the same random draw; the intensity ones to the image only.
    Seed it with ``.set_random_state(seed)``.
    """
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    geo = [image_key, *mask_keys]
    return Compose(
        [
            RandRotate90d(keys=geo, prob=rotate_prob, spatial_axes=(1, 2)),
            RandFlipd(keys=geo, prob=flip_prob, spatial_axis=0),
            RandFlipd(keys=geo, prob=flip_prob, spatial_axis=1),
            RandFlipd(keys=geo, prob=flip_prob, spatial_axis=2),
            RandScaleIntensityd(keys=image_key, factors=scale, prob=scale_prob),
            RandShiftIntensityd(keys=image_key, offsets=shift, prob=shift_prob),
        ]
    )


_PRESET_NAMES = {"Preset", "list_presets", "get_preset", "apply_preset", "register_preset", "WINDOWS"}


def __getattr__(name: str):
    # Lazy re-export: presets.py imports this module, so a top-level import here would be circular.
    if name in _PRESET_NAMES:
        from LaMed.data import presets

        return getattr(presets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
