"""Named preprocessing presets reproducing the published 3D medical VLM pipelines.

``apply_preset(name, image, spacing, masks)`` turns a canonical ``(D, H, W)`` volume (HU for CT,
D = inferior -> superior, spacing in mm, see :mod:`LaMed.data.io`) into the network input
``(1, D', H', W')`` float32 in [0, 1], with masks carried along by nearest-neighbour selection.

Each preset is data (:class:`Preset`); one engine runs them all:

1. an intensity map from whole-volume statistics (window / percentiles / SegVol foreground
   statistics, then min-max), folded into one clip + scale (:class:`~LaMed.data.transforms.IntensityMap`);
2. optional resampling to a target spacing (HSENet / CT-RATE);
3. optional crop to the foreground, MONAI's rule (normalised value > 0);
4. resize to the target size with per-axis operators that read only the input slices they need.

The result equals running the published MONAI chain step by step (checked in
``tests/test_transforms.py``), at a fraction of the cost: the intensity map is applied only to
the slices the resize reads, and no full-resolution float copy of the volume is made unless the
pipeline resamples before cropping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from LaMed.data.transforms import (
    Box,
    IntensityMap,
    antialias_op,
    foreground_box,
    linear_op,
    nearest_index,
    percentile_map,
    render,
    resampled_shape,
    segvol_foreground_stats,
    selection_op,
    slice_min_max,
    window_map,
)
from LaMed.utils.registry import Registry

__all__ = [
    "Preset",
    "WINDOWS",
    "register_preset",
    "list_presets",
    "get_preset",
    "apply_preset",
    "preset_spec",
    "preset_from_spec",
]

NORMALIZATIONS = ("minmax", "percentile", "segvol", "slice_minmax", "none")
IMAGE_MODES = ("trilinear", "nearest-exact", "nearest")
MASK_MODES = ("nearest", "nearest-exact")

WINDOWS: dict[str, tuple[float, float]] = {
    # W400 / L40: the usual abdominal soft-tissue display window; FLARE25's window for CT-AMOS.
    "soft_tissue": (-160.0, 240.0),
    # Med3DVLM's FLARE25 window for every non-AMOS (chest, CT-RATE) case.
    "flare_chest": (-1350.0, 150.0),
    # HSENet's CT-RATE / BIMCV-R 3D window.
    "ct_rate": (-1000.0, 200.0),
    # HSENet's 2D-slice branch (the published "/1000" only rescales; min-max per slice follows).
    "ct_rate_slices": (-1000.0, 1000.0),
}


@dataclass(frozen=True)
class Preset:
    """One published preprocessing pipeline, as data.

    Attributes:
        name: registry name.
        size: output ``(D, H, W)`` in voxels; ``None`` keeps the grid (only with ``slices``).
        spacing: resample to this ``(D, H, W)`` spacing in mm before cropping; ``None`` skips.
        window: ``(lo, hi)`` intensity clip (HU), applied first; ``None`` for none.
        normalize: ``"minmax"`` (global min-max after the window), ``"percentile"`` (clip to
            ``percentiles`` and scale), ``"segvol"`` (SegVol foreground clip + z-score, then
            min-max), ``"slice_minmax"`` (per output slice), ``"none"`` (the window's [0, 1]).
        crop_foreground: crop to the box of voxels > 0 after normalisation (MONAI CropForeground).
        description: the published source and its steps, and what we chose where it is silent.
        image_mode / mask_mode: interpolation of the image and of masks.
        antialias: scikit-image style Gaussian pre-filter before a linear downsample (FLARE).
        percentiles: ``(lower, upper)`` for ``"percentile"`` / ``"segvol"``.
        slices: take this many evenly spaced D slices instead of resizing D (HSENet 2D branch).
    """

    name: str
    size: tuple[int, int, int] | None
    spacing: tuple[float, float, float] | None = None
    window: tuple[float, float] | None = None
    normalize: str = "minmax"
    crop_foreground: bool = True
    description: str = ""
    image_mode: str = "trilinear"
    mask_mode: str = "nearest"
    antialias: bool = False
    percentiles: tuple[float, float] | None = None
    slices: int | None = None

    def __post_init__(self):
        def bad(field, msg):
            raise ValueError(f"Preset {self.name!r}: field '{field}' {msg}")

        if self.size is not None and (len(self.size) != 3 or any(int(s) < 1 for s in self.size)):
            bad("size", f"must be three positive ints (D, H, W), got {self.size}")
        if self.size is None and self.slices is None:
            bad("size", "may only be None together with 'slices'")
        if self.spacing is not None and (
            len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing)
        ):
            bad("spacing", f"must be three positive mm values (D, H, W), got {self.spacing}")
        if self.window is not None and not (len(self.window) == 2 and self.window[1] > self.window[0]):
            bad("window", f"must be (lo, hi) with hi > lo, got {self.window}")
        if self.normalize not in NORMALIZATIONS:
            bad("normalize", f"must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.normalize in ("percentile", "segvol") and self.window is not None:
            bad("window", f"cannot be combined with normalize={self.normalize!r}")
        if self.normalize == "none" and self.window is None:
            bad("normalize", "'none' needs a window, or the output would not be in [0, 1]")
        if (self.normalize == "slice_minmax") != (self.slices is not None):
            bad("slices", "is set exactly when normalize='slice_minmax'")
        if self.slices is not None and (self.crop_foreground or self.size is not None):
            bad("slices", "presets keep the in-plane grid: size must be None and crop_foreground False")
        if self.image_mode not in IMAGE_MODES:
            bad("image_mode", f"must be one of {IMAGE_MODES}, got {self.image_mode!r}")
        if self.mask_mode not in MASK_MODES:
            bad("mask_mode", f"must be one of {MASK_MODES}, got {self.mask_mode!r}")


_PRESETS: Registry[Preset] = Registry("preprocessing preset")


def register_preset(preset: Preset, *aliases: str) -> Preset:
    """Add a preset (and optional alias names resolving to the same object) to the registry."""
    for key in (preset.name, *aliases):
        _PRESETS.register(key, lambda p=preset: p)
    return preset


def list_presets() -> list[str]:
    """Registered preset names, aliases included, sorted."""
    return _PRESETS.names()


def get_preset(name: str) -> Preset:
    """The preset registered as ``name``; KeyError listing the known names otherwise."""
    return _PRESETS.create(name)


# ------------------------------------------------------------------------------------------
# The published pipelines.
# ------------------------------------------------------------------------------------------

register_preset(
    Preset(
        "m3d",
        (32, 256, 256),
        window=WINDOWS["soft_tissue"],
        description=(
            "M3D-LaMed / M3D-CLIP input (32x256x256): HU window -> min-max -> CropForeground (>0) -> "
            "trilinear resize; masks nearest (M3D-Seg). M3D-Cap was built from Radiopaedia PNGs that "
            "were already display-windowed, so the paper has no HU window; the authors advise "
            "windowing for the target anatomy (BAAI-DCAI/M3D#18). We take the abdominal soft-tissue "
            "window W400/L40 = [-160, 240] HU, the common display window and the one Med3DVLM uses "
            "for abdominal CT; use dataclasses.replace(..., window=WINDOWS['flare_chest']) for lungs."
        ),
    )
)
register_preset(
    Preset(
        "m3d_seg",
        (32, 256, 256),
        normalize="segvol",
        percentiles=(0.05, 99.95),
        description=(
            "M3D-Seg: SegVol foreground normalisation (clip to the [0.05, 99.95] percentiles of the "
            "voxels above the mean, z-score) -> min-max -> CropForeground -> trilinear resize "
            "32x256x256; masks nearest."
        ),
    )
)
register_preset(
    Preset(
        "m3d_refseg",
        (32, 256, 256),
        normalize="percentile",
        percentiles=(0.5, 99.5),
        description=(
            "M3D-RefSeg: ScaleIntensityRangePercentiles 0.5-99.5 -> [0, 1] (clipped) -> "
            "CropForeground -> trilinear resize 32x256x256; masks nearest. Also a sensible MR preset."
        ),
    )
)
register_preset(
    Preset(
        "segvol",
        (32, 256, 256),
        normalize="segvol",
        percentiles=(0.05, 99.95),
        image_mode="nearest-exact",
        mask_mode="nearest-exact",
        description=(
            "SegVol zoom-out volume: foreground normalisation -> min-max -> CropForeground (>0) -> "
            "resize to 32x256x256 with nearest-exact for image and masks. SegVol's SpatialPad to "
            "32x256x256 before the crop is omitted: padded voxels are 0, so the crop removes them. "
            "The z-score cancels in the min-max; it changes nothing in [0, 1]."
        ),
    )
)
register_preset(
    Preset(
        "med3dvlm",
        (128, 256, 256),
        window=WINDOWS["soft_tissue"],
        description=(
            "Med3DVLM / DCFormer / Text3DSAM input (128x256x256): window -> min-max -> "
            "CropForeground -> trilinear resize; masks nearest. Med3DVLM's M3D-Cap data had no HU "
            "window (pre-windowed PNGs); for raw CT we use its own FLARE25 abdominal window "
            "[-160, 240] HU (WINDOWS['flare_chest'] = [-1350, 150] is its chest window)."
        ),
    )
)
register_preset(
    Preset(
        "flare",
        (128, 256, 256),
        window=WINDOWS["soft_tissue"],
        crop_foreground=False,
        antialias=True,
        description=(
            "FLARE25 Task 5 (Med3DVLM FLARE branch), abdominal CT-AMOS cases: clip [-160, 240] HU -> "
            "min-max -> skimage resize to 128x256x256 with anti-aliasing (Gaussian pre-filter, "
            "sigma (factor-1)/2), no crop; masks nearest."
        ),
    )
)
register_preset(
    Preset(
        "flare_chest",
        (128, 256, 256),
        window=WINDOWS["flare_chest"],
        crop_foreground=False,
        antialias=True,
        description="FLARE25 Task 5 non-AMOS (chest, CT-RATE) cases: as 'flare' with the [-1350, 150] HU window.",
    )
)
register_preset(
    Preset(
        "hsenet",
        (32, 256, 256),
        spacing=(1.5, 0.75, 0.75),
        window=WINDOWS["ct_rate"],
        description=(
            "HSENet CT-RATE 3D volumes: clip [-1000, 200] HU -> trilinear resample to 1.5 (D) / "
            "0.75 / 0.75 mm with size floor(n * spacing / target) -> global min-max -> "
            "CropForeground (>0, drops the air margin) -> trilinear resize 32x256x256; masks nearest."
        ),
    ),
    "ct_rate",
)
register_preset(
    Preset(
        "hsenet_bimcv",
        (32, 256, 256),
        window=WINDOWS["ct_rate"],
        description=(
            "HSENet BIMCV-R 3D volumes: as 'hsenet' without the spacing resample (the published "
            "script does not resample), i.e. clip [-1000, 200] -> min-max -> crop -> resize."
        ),
    )
)
register_preset(
    Preset(
        "hsenet_slices",
        None,
        spacing=(1.5, 0.75, 0.75),
        window=WINDOWS["ct_rate_slices"],
        normalize="slice_minmax",
        crop_foreground=False,
        slices=32,
        description=(
            "HSENet 2D-slice branch (input of the BiomedCLIP slice encoder): clip [-1000, 1000] HU "
            "(/1000) -> resample to 1.5/0.75/0.75 mm -> 32 evenly spaced slices "
            "(round(linspace(0, D-1, 32)); linear interpolation when D < 32) -> min-max per slice. "
            "Output (1, 32, H, W) at the resampled in-plane size; ['image'][0] is the (32, H, W) "
            "stack. The published JPEG export (uint8, rotated -90 deg) is left to the writer: our "
            "canonical (D, H, W) slices are already in radiological display orientation."
        ),
    )
)


# ------------------------------------------------------------------------------------------
# Engine
# ------------------------------------------------------------------------------------------


def _validate(image, spacing, masks) -> tuple[np.ndarray, tuple[float, float, float], dict[str, np.ndarray]]:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"apply_preset: image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"apply_preset: image must be a 3-D (D, H, W) array, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"apply_preset: image is empty (shape {image.shape})")
    if image.dtype == np.bool_ or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise TypeError(f"apply_preset: image dtype must be integer or float, got {image.dtype}")
    if np.issubdtype(image.dtype, np.floating):
        if image.dtype != np.float32:  # computation is float32; float64 would double every pass
            image = image.astype(np.float32)
        if not np.isfinite(image).all():
            n = int(image.size - np.isfinite(image).sum())
            raise ValueError(f"apply_preset: image has {n} non-finite (NaN/inf) voxels")
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError:
        raise TypeError(f"apply_preset: spacing must be three numbers (D, H, W) in mm, got {spacing!r}") from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"apply_preset: spacing must be three positive finite mm values (D, H, W), got {spacing!r}")
    out: dict[str, np.ndarray] = {}
    for name, m in (masks or {}).items():
        if isinstance(m, torch.Tensor):
            m = m.detach().cpu().numpy()
        m = np.asarray(m)
        if m.shape != image.shape:
            raise ValueError(f"apply_preset: mask {name!r} has shape {m.shape} but the image has shape {image.shape}")
        if m.dtype != np.bool_ and m.dtype != np.uint8:
            if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
                raise TypeError(f"apply_preset: mask {name!r} has non-numeric dtype {m.dtype}")
            lo, hi = (m.min(), m.max()) if m.size else (0, 0)
            if not (lo >= 0 and hi <= 255) or (
                np.issubdtype(m.dtype, np.floating) and not np.array_equal(m, np.round(m))
            ):
                raise ValueError(
                    f"apply_preset: mask {name!r} must hold integer labels in 0..255 (got range {lo}..{hi})"
                )
        out[name] = m
    return image, sp, out


def _first_map(p: Preset, a: np.ndarray) -> IntensityMap:
    """The intensity map that precedes any resampling: window / percentile / SegVol clip+z-score."""
    if p.normalize == "percentile":
        lo, hi = p.percentiles or (0.5, 99.5)
        return percentile_map(a, lo, hi)
    if p.normalize == "segvol":
        lo, hi = p.percentiles or (0.05, 99.95)
        plo, phi, mean, std = segvol_foreground_stats(a, lo, hi)
        return IntensityMap(plo, max(plo, phi), mean, 1.0 / max(std, 1e-8))
    return window_map(*p.window) if p.window is not None else IntensityMap()


def _select(a: np.ndarray, index: Sequence[np.ndarray | None]) -> np.ndarray:
    """Apply per-axis nearest-neighbour selections (input index of each output position) to a label array.

    Index arrays, not 0/1 matrices: composing resample -> crop -> resize is indexing one array
    with another, so a 100,000-sample axis costs 100,000 integers, not a 100,000^2 matrix.
    """
    # one fancy-indexing step: memory is the output's only (one axis after another could blow an
    # axis up before another shrinks, e.g. 2x2x100000 -> 128x256x100000 on the way to 128x256x256)
    full = [np.arange(n) if idx is None else np.asarray(idx, np.int64) for n, idx in zip(a.shape, index)]
    return a[np.ix_(*full)]


def apply_preset(
    name_or_preset: str | Preset,
    image: np.ndarray,
    spacing: Sequence[float],
    masks: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Prepare a canonical volume with a published preprocessing pipeline.

    Args:
        name_or_preset: a name from :func:`list_presets` or a :class:`Preset`.
        image: ``(D, H, W)`` intensities (HU for CT), integer or float; computed in float32.
        spacing: ``(D, H, W)`` voxel size in mm.
        masks: optional ``{name: (D, H, W) label array}`` on the image grid (bool or integer
            labels 0..255); each follows the image geometry with nearest-neighbour selection.

    Returns:
        ``{"image": float32 (1, D', H', W') in [0, 1], "masks": {name: uint8 (1, D', H', W')},
        "spacing": (D', H', W') effective output voxel size in mm, "crop": (d0, h0, w0, d1, h1,
        w1) the half-open foreground box applied, in input voxels (the whole volume when the
        preset does not crop or finds no foreground), "preset": the preset name}``.
    """
    p = name_or_preset if isinstance(name_or_preset, Preset) else get_preset(name_or_preset)
    raw, sp, mask_in = _validate(image, spacing, masks)
    n_in = raw.shape
    f = _first_map(p, raw)

    # Optional resample; pre_mask maps the input grid to the resampled grid per axis.
    src, src_sp, mid = raw, sp, n_in
    pre_mask: list = [None, None, None]
    if p.spacing is not None:
        mid = resampled_shape(n_in, sp, p.spacing)
        pre_mask = [nearest_index(n, m) for n, m in zip(n_in, mid)]
        src_sp = tuple(s * n / m for s, n, m in zip(sp, n_in, mid))

    if p.slices is not None:
        return _apply_slices(p, raw, f, mid, pre_mask, src_sp, mask_in)

    if p.spacing is not None:
        # Min-max and the crop depend on the resampled values: materialise that grid once.
        src = render(raw, linear_op(n_in[0], mid[0]), mid[1:], intensity=f).numpy()
        f = IntensityMap()
    if p.normalize in ("minmax", "segvol"):
        f = f.then_min_max(float(src.min()), float(src.max()))

    shape = src.shape
    box: Box | None = None
    if p.crop_foreground:
        t = f.foreground_threshold()
        box = foreground_box(src, t) if t is not None else None
    if box is None:
        box = (0, 0, 0, *shape)
    lo, hi = box[:3], box[3:]
    crop_n = [b - a for a, b in zip(lo, hi)]
    view = src[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]

    if p.image_mode == "trilinear":
        d_op = (antialias_op if p.antialias else linear_op)(crop_n[0], p.size[0])
    else:
        d_op = selection_op(nearest_index(crop_n[0], p.size[0], exact=p.image_mode == "nearest-exact"), crop_n[0])
    out = render(view, d_op, p.size[1:], p.image_mode, p.antialias, f).clamp_(0.0, 1.0)

    # Masks: one composite selection per axis, input grid -> (resampled) -> crop -> output.
    out_masks = {}
    if mask_in:
        mask_idx = []
        for k in range(3):
            idx = lo[k] + nearest_index(crop_n[k], p.size[k], exact=p.mask_mode == "nearest-exact")
            mask_idx.append(pre_mask[k][idx] if pre_mask[k] is not None else idx)
        for name, m in mask_in.items():
            out_masks[name] = _select(m, mask_idx).astype(np.uint8)[None]

    out_sp = tuple(float(s * n / o) for s, n, o in zip(src_sp, crop_n, p.size))
    if p.spacing is not None:  # report the crop in input voxels
        box = tuple(
            [int(math.floor(lo[k] * n_in[k] / shape[k])) for k in range(3)]
            + [min(n_in[k], int(math.ceil(hi[k] * n_in[k] / shape[k] - 1e-9))) for k in range(3)]
        )
    return {
        "image": out.numpy()[None],
        "masks": out_masks,
        "spacing": out_sp,
        "crop": tuple(int(v) for v in box),
        "preset": p.name,
    }


def _apply_slices(p, raw, f, mid, pre_mask, src_sp, mask_in) -> dict:
    """HSENet 2D branch: resample, pick ``p.slices`` slices along D, min-max each slice."""
    n_mid = mid[0]
    n = p.slices
    if n_mid >= n:
        sel_mask = np.rint(np.linspace(0, n_mid - 1, n)).astype(np.int64)
        sel_img = selection_op(sel_mask, n_mid)
        d_sp = src_sp[0] * (n_mid - 1) / (n - 1) if n > 1 else src_sp[0]
    else:
        sel_img, sel_mask = linear_op(n_mid, n), nearest_index(n_mid, n, exact=True)
        d_sp = src_sp[0] * n_mid / n
    d_img = sel_img @ linear_op(raw.shape[0], n_mid)
    d_mask = pre_mask[0][sel_mask] if pre_mask[0] is not None else sel_mask
    out = slice_min_max(render(raw, d_img, mid[1:], intensity=f)).clamp_(0.0, 1.0)
    masks = {name: _select(m, [d_mask, pre_mask[1], pre_mask[2]]).astype(np.uint8)[None] for name, m in mask_in.items()}
    return {
        "image": out.numpy()[None],
        "masks": masks,
        "spacing": (float(d_sp), float(src_sp[1]), float(src_sp[2])),
        "crop": (0, 0, 0, *raw.shape),
        "preset": p.name,
    }


# ------------------------------------------------------------------------------------------
# Preprocessing stored with a model
# ------------------------------------------------------------------------------------------

_SPEC_FIELDS = (
    "size",
    "spacing",
    "window",
    "normalize",
    "crop_foreground",
    "image_mode",
    "mask_mode",
    "antialias",
    "percentiles",
    "slices",
)


def preset_spec(name_or_preset: str | Preset, **overrides) -> dict:
    """A JSON-able record of a preset and the fields that differ from it, as a model config stores it:
    ``{"preset": "m3d", "window": [-160.0, 240.0], "size": [32, 256, 256]}``.

    Every field is written out (not only the overrides) so a model folder says exactly what it expects
    even if the registered preset changes later; :func:`preset_from_spec` rebuilds the :class:`Preset`.
    """
    import dataclasses

    base = name_or_preset if isinstance(name_or_preset, Preset) else get_preset(name_or_preset)
    unknown = sorted(set(overrides) - set(_SPEC_FIELDS))
    if unknown:
        raise ValueError(f"preprocessing: unknown field(s) {unknown}; known: {list(_SPEC_FIELDS)}")
    p = dataclasses.replace(base, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()})
    spec = {"preset": base.name}
    for k in _SPEC_FIELDS:
        v = getattr(p, k)
        spec[k] = list(v) if isinstance(v, tuple) else v
    return spec


def preset_from_spec(spec: str | Mapping) -> Preset:
    """The :class:`Preset` a stored record (or a bare preset name) describes; errors name the field."""
    import dataclasses

    if isinstance(spec, str):
        return get_preset(spec)
    if not isinstance(spec, Mapping) or not spec.get("preset"):
        raise ValueError(f"preprocessing: expected a mapping with a 'preset' name, got {spec!r}")
    fields = {k: v for k, v in spec.items() if k != "preset"}
    unknown = sorted(set(fields) - set(_SPEC_FIELDS))
    if unknown:
        raise ValueError(f"preprocessing: unknown field(s) {unknown}; known: {list(_SPEC_FIELDS)}")
    base = get_preset(str(spec["preset"]))
    return dataclasses.replace(base, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items()})
