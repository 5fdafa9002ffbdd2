"""Volume I/O with geometry: NIfTI, DICOM series, NRRD/MHA/MHD, ``.npy`` and BiomedSegFM ``.npz``.

Canonical orientation
---------------------
Every :class:`Volume` holds its voxels as ``array`` with axes ``(D, H, W)`` whose index increases
toward patient **Superior, Posterior and Left** ("LPS array order"). That is exactly what
``SimpleITK.GetArrayFromImage`` returns for an image with identity direction, so

* ``array[k]`` shown with ``imshow`` is the usual radiological axial view: anterior at the top,
  patient right on the image left;
* ``D`` runs over axial slices from inferior to superior.

A file is brought to this order by permuting and flipping its axes only (no resampling): each
file axis is matched to the closest patient axis (``nibabel.orientations.io_orientation``), so an
oblique acquisition keeps its exact geometry in ``Volume.affine``; only the array order is the
nearest one to SPL.

``Volume.affine`` is a 4x4 float64 matrix mapping a canonical voxel index ``(d, h, w, 1)`` to
**RAS** world millimetres (the NIfTI / nibabel convention; DICOM and ITK use LPS, which differs by
the sign of x and y). ``Volume.spacing`` is in mm in ``(D, H, W)`` order.

What is needed to go back to the file's own grid is kept too: the source array shape, the source
affine (source array index -> RAS), the permutation/flips, the original format and its header.
:meth:`Volume.to_source` maps a canonical array (e.g. a predicted mask) back onto the file grid and
:func:`save_volume` writes it so that it overlays the source image in 3D Slicer / ITK-SNAP.

Intensities have the NIfTI slope/intercept (DICOM RescaleSlope/Intercept) applied. Integer data
stay integer when the scaling is exact (slope and intercept integers); otherwise the array is
float32. Floating-point files come out float32, and any NaN/inf voxel is refused.

Errors are raised as :class:`VolumeError` (a ``ValueError``) whose message starts with the path.

Back ends: :mod:`LaMed.data.io_nifti` (nibabel), :mod:`LaMed.data.io_itk` (SimpleITK: DICOM,
NRRD/MHA/MHD), :mod:`LaMed.data.io_numpy` (``.npy``, BiomedSegFM ``.npz``); each is imported on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Volume", "VolumeError", "load_volume", "load_mask", "save_volume", "volume_format"]

# world axis of nibabel's io_orientation (0 = x toward R, 1 = y toward A, 2 = z toward S) ->
# canonical axis (0 = D, 1 = H, 2 = W)
_CANON_AXIS = {2: 0, 1: 1, 0: 2}
# sign of the RAS world axis along which each canonical index increases: D -> +S, H -> -A (P), W -> -R (L)
_CANON_SIGN = (1.0, -1.0, -1.0)
_NIFTI_EXT = (".nii", ".nii.gz")
_ITK_EXT = (".nrrd", ".nhdr", ".mha", ".mhd")
_NUMPY_EXT = (".npy", ".npz")


class VolumeError(ValueError):
    """A volume file that cannot be used; the message starts with the offending path."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path if self.path is not None else '<array>'}: {problem}")


@dataclass(eq=False)
class Volume:
    """A 3D image in canonical (D, H, W) = (S, P, L) order with its geometry.

    Attributes:
        array: ``(D, H, W)`` voxels, slope/intercept applied; integer dtype kept when exact,
            else float32.
        spacing: voxel size in mm, ``(D, H, W)`` order.
        affine: 4x4 float64, canonical voxel index ``(d, h, w, 1)`` -> RAS world mm.
        path: the file or DICOM folder it was read from (None for in-memory volumes).
        source_shape: shape of the array in the file's own axis order (singleton channel dropped).
        source_affine: 4x4 float64, file array index -> RAS world mm.
        axes: canonical axis ``k`` is source axis ``axes[k]``.
        flips: canonical axis ``k`` runs opposite to its source axis.
        source_format: ``"nifti"``, ``"itk"``, ``"dicom"``, ``"npy"`` or ``"npz"``.
        header: the nibabel header (NIfTI) or the ITK geometry dict (``origin``, ``spacing``,
            ``direction`` in SimpleITK's LPS convention) of the source.
        meta: free-form information (source orientation codes, on-disk dtype, DICOM tags, ...).
    """

    array: np.ndarray = field(repr=False)
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(repr=False)
    path: str | None = None
    source_shape: tuple[int, ...] | None = None
    source_affine: np.ndarray | None = field(default=None, repr=False)
    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)
    source_format: str = "npy"
    header: Any = field(default=None, repr=False)
    meta: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.source_shape is None:
            self.source_shape = tuple(self.array.shape)
        if self.source_affine is None:
            self.source_affine = _canonical_to_source_affine(self.affine, self.axes, self.flips, self.source_shape)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical ``(D, H, W)`` shape."""
        return tuple(self.array.shape)

    @property
    def orientation(self) -> str:
        """Direction codes of the file's index axes i, j, k (x-first), e.g. ``"RAS"`` or ``"LPS"``.

        Each letter names where that index increases toward (nibabel's convention). ITK, DICOM and
        numpy arrays are stored z-first, so their codes are read from the last array axis first.
        """
        return file_axcodes(self.source_affine, self.source_format)

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """Map a canonical ``(D, H, W)`` array (e.g. a mask) onto the file's own grid and axis order."""
        arr = np.asarray(array)
        if arr.shape != self.shape:
            raise VolumeError(self.path, f"array of shape {arr.shape} does not match the canonical shape {self.shape}")
        return from_canonical(arr, self.axes, self.flips)

    def to_canonical(self, source_array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_source`: a file-grid array -> canonical ``(D, H, W)``."""
        arr = np.asarray(source_array)
        if arr.shape != tuple(self.source_shape):
            raise VolumeError(
                self.path, f"array of shape {arr.shape} does not match the source shape {self.source_shape}"
            )
        return to_canonical(arr, self.axes, self.flips)

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        path: str | None = None,
        source_format: str = "npy",
        meta: dict | None = None,
    ) -> Volume:
        """A volume whose array is already canonical, with identity direction.

        ``origin`` is the LPS position (mm, SimpleITK convention, x/y/z) of voxel ``(0, 0, 0)``.
        """
        sp = tuple(float(s) for s in spacing)
        return cls(
            array=array,
            spacing=sp,
            affine=canonical_affine(sp, origin),
            path=path,
            source_format=source_format,
            meta=dict(meta or {}),
        )


# --------------------------------------------------------------------------- orientation helpers


def canonical_affine(spacing, origin_lps=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine of a canonical ``(D, H, W)`` grid with identity (LPS) direction.

    Args:
        spacing: ``(D, H, W)`` voxel size in mm.
        origin_lps: LPS world position (x, y, z) of voxel ``(0, 0, 0)`` in mm.
    """
    sd, sh, sw = (float(s) for s in spacing)
    aff = np.zeros((4, 4))
    aff[2, 0] = sd  # d -> +S
    aff[1, 1] = -sh  # h -> +P = -A
    aff[0, 2] = -sw  # w -> +L = -R
    aff[:3, 3] = np.asarray(origin_lps, float) * (-1.0, -1.0, 1.0)
    aff[3, 3] = 1.0
    return aff


def canonical_transform(source_affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Permutation and flips taking a source array to canonical (S, P, L) order.

    Returns ``(axes, flips)``: canonical axis ``k`` is source axis ``axes[k]``, reversed if
    ``flips[k]``. Raises ``ValueError`` for a degenerate affine.
    """
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(source_affine, float))
    if np.isnan(ornt).any():
        raise ValueError("the affine is degenerate (a voxel axis has no direction in world space)")
    axes, flips = [0, 0, 0], [False, False, False]
    for src_axis, (world_axis, sign) in enumerate(ornt):
        k = _CANON_AXIS[int(world_axis)]
        axes[k] = src_axis
        flips[k] = bool(sign != _CANON_SIGN[k])
    return tuple(axes), tuple(flips)


def _flip_slices(flips) -> tuple[slice, ...]:
    return tuple(slice(None, None, -1) if f else slice(None) for f in flips)


def to_canonical(source: np.ndarray, axes, flips) -> np.ndarray:
    """Source array -> canonical (C-contiguous; copies only when the layout changes)."""
    return np.ascontiguousarray(np.transpose(source, axes)[_flip_slices(flips)])


def from_canonical(canonical: np.ndarray, axes, flips) -> np.ndarray:
    """Canonical array -> source axis order (C-contiguous)."""
    return np.ascontiguousarray(np.transpose(canonical[_flip_slices(flips)], np.argsort(axes)))


def _index_map(axes, flips, source_shape) -> np.ndarray:
    """4x4 integer matrix M with ``source_index = M @ canonical_index`` (homogeneous)."""
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for k, (a, f) in enumerate(zip(axes, flips)):
        m[a, k] = -1.0 if f else 1.0
        if f:
            m[a, 3] = source_shape[a] - 1
    return m


def _source_to_canonical_affine(source_affine, axes, flips, source_shape) -> np.ndarray:
    return np.asarray(source_affine, float) @ _index_map(axes, flips, source_shape)


def _canonical_to_source_affine(affine, axes, flips, source_shape) -> np.ndarray:
    return np.asarray(affine, float) @ np.linalg.inv(_index_map(axes, flips, source_shape))


def file_axcodes(source_affine: np.ndarray, source_format: str) -> str:
    """Orientation codes of a file's index axes (x-first), given its source-array affine."""
    from nibabel.orientations import aff2axcodes

    codes = "".join(aff2axcodes(source_affine))
    return codes if source_format == "nifti" else codes[::-1]  # others keep z-first arrays


def _spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


# --------------------------------------------------------------------------- dtype / value checks


def _int_dtype_for(lo: int, hi: int) -> np.dtype:
    """The smallest of (u)int8/16/32/64 holding ``[lo, hi]``."""
    for dt in (np.uint8, np.int16, np.uint16, np.int32) if lo >= 0 else (np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _smallest_int(arr: np.ndarray) -> np.ndarray:
    """Exact integer array in the smallest integer dtype that holds its range."""
    if arr.size == 0:
        return arr
    return arr.astype(_int_dtype_for(int(arr.min()), int(arr.max())), copy=False)


def finalize_array(arr: np.ndarray, path, slope: float = 1.0, inter: float = 0.0) -> np.ndarray:
    """Apply slope/intercept and the dtype policy; refuse non-finite voxels.

    Integer data stay integer when ``slope`` and ``inter`` are integers (the result gets the
    smallest integer dtype holding it); bool becomes uint8; everything else becomes float32.
    """
    if arr.dtype.kind not in "biuf":
        raise VolumeError(path, f"unsupported voxel type {arr.dtype} (expected integer or real scalars)")
    if arr.dtype == bool:
        arr = arr.view(np.uint8)
    scaled = slope != 1.0 or inter != 0.0
    if scaled and arr.size:
        # The scaled extremes, in float64: a slope such as 1e38 would overflow float32 (and int64).
        ends = [float(arr.min()) * slope + inter, float(arr.max()) * slope + inter]
        if not all(np.isfinite(ends)) or max(abs(v) for v in ends) > float(np.finfo(np.float32).max):
            raise VolumeError(
                path,
                f"scale slope {slope:g} / intercept {inter:g} map the stored values to "
                f"[{min(ends):.4g}, {max(ends):.4g}], beyond the float32 range; the "
                "scaling (e.g. NIfTI scl_slope, DICOM RescaleSlope) is corrupt",
            )
    if arr.dtype.kind in "iu":
        if not scaled:
            return arr
        big = 2.0**62
        if (
            float(slope).is_integer()
            and float(inter).is_integer()
            and abs(slope) < big
            and abs(inter) < big
            and (not arr.size or max(abs(float(arr.min())), abs(float(arr.max()))) * abs(slope) + abs(inter) < big)
        ):
            # pick the output type from the scaled extremes: no full-size int64 temporary
            m, b = int(slope), int(inter)
            lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
            steps = (lo * m, hi * m, lo * m + b, hi * m + b, m, b)  # intermediates must fit too
            out = arr.astype(_int_dtype_for(min(steps), max(steps)))
            out *= out.dtype.type(m)
            out += out.dtype.type(b)
            return out
    out = arr.astype(np.float32, copy=False)
    if scaled:
        out = out * np.float32(slope) + np.float32(inter)
    finite = np.isfinite(out)
    if not finite.all():
        bad = out[~finite]
        raise VolumeError(
            path,
            f"contains non-finite voxels: {int(np.isnan(bad).sum())} NaN and "
            f"{int(np.isinf(bad).sum())} inf among {out.size}",
        )
    return out


def check_spatial_shape(shape, path, channel_axis: int) -> tuple[int, ...]:
    """Validate an on-disk shape: 3D, or 4D/5D with singleton extra axes; returns the 3D shape.

    ``channel_axis`` is where extra axes live in the file's array (3 for NIfTI x,y,z,t; 0 for
    channel-first numpy / ITK arrays).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise VolumeError(path, f"is a 2D image of shape {shape}; a 3D volume is needed")
    if len(shape) > 3:
        extra = range(3, len(shape)) if channel_axis >= 3 else range(0, len(shape) - 3)
        for ax in extra:
            if shape[ax] != 1:
                raise VolumeError(
                    path,
                    f"is a {len(shape)}D image of shape {shape} with {shape[ax]} channels/time "
                    f"points along axis {ax} (size {shape[ax]}); a single-channel 3D volume is "
                    "needed (a singleton extra axis is fine)",
                )
        shape = shape[:3] if channel_axis >= 3 else shape[len(shape) - 3 :]
    if sum(s > 1 for s in shape) < 3:
        raise VolumeError(path, f"is a 2D image (shape {shape} has a single slice); a 3D volume is needed")
    return shape


def build_volume(
    source: np.ndarray,
    source_affine: np.ndarray,
    path,
    source_format: str,
    header: Any = None,
    meta: dict | None = None,
    copy_if_shared: bool = False,
) -> Volume:
    """Canonicalise a source-order 3D array given its (source index -> RAS) affine."""
    try:
        axes, flips = canonical_transform(source_affine)
    except ValueError as e:
        raise VolumeError(path, str(e)) from None
    array = to_canonical(source, axes, flips)
    if copy_if_shared and np.shares_memory(array, source):
        array = array.copy()
    affine = _source_to_canonical_affine(source_affine, axes, flips, source.shape)
    meta = dict(meta or {})
    meta.setdefault("orientation", file_axcodes(source_affine, source_format))
    return Volume(
        array=array,
        spacing=_spacing_of(affine),
        affine=affine,
        path=None if path is None else str(path),
        source_shape=tuple(source.shape),
        source_affine=np.asarray(source_affine, float),
        axes=axes,
        flips=flips,
        source_format=source_format,
        header=header,
        meta=meta,
    )


# --------------------------------------------------------------------------- dispatch


def volume_format(path: str | Path) -> str:
    """``"nifti"``, ``"itk"``, ``"dicom"`` (a folder or ``.dcm``), ``"npy"`` or ``"npz"``; VolumeError otherwise."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "dicom"
    if name.endswith(_NIFTI_EXT):
        return "nifti"
    if name.endswith(_ITK_EXT):
        return "itk"
    if name.endswith(".dcm"):
        return "dicom"
    if name.endswith(_NUMPY_EXT):
        return name.rsplit(".", 1)[1]
    raise VolumeError(
        path, "unsupported file type; expected .nii/.nii.gz, a DICOM series folder, .nrrd/.nhdr/.mha/.mhd, .npy or .npz"
    )


def load_volume(
    path: str | Path,
    *,
    key: str = "imgs",
    series_uid: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    spacing_order: str = "auto",
    max_voxels: int | None = None,
    slice_gaps: str = "refuse",
) -> Volume:
    """Read a 3D volume into canonical (D, H, W) = (S, P, L) order with its geometry.

    Args:
        path: ``.nii``/``.nii.gz``, a DICOM series folder (or one ``.dcm`` file of the series),
            ``.nrrd``/``.nhdr``/``.mha``/``.mhd``, ``.npy`` (already canonical ``(D, H, W)``, or
            ``(1, D, H, W)``) or a CVPR-BiomedSegFM ``.npz``.
        key: the array of an ``.npz`` to read (``"imgs"`` for the image, ``"gts"`` for labels).
        series_uid: which series to read from a DICOM folder holding several.
        spacing: ``(D, H, W)`` mm for ``.npy`` (default 1 mm) or to override the ``.npz`` spacing.
        spacing_order: order of the ``spacing`` stored in an ``.npz`` (``"xyz"``, ``"zyx"`` or
            ``"auto"``; see :mod:`LaMed.data.io_numpy`).
        max_voxels: refuse a volume whose header declares more voxels (default
            ``$LAMED_MAX_VOXELS`` or 512 x 512 x 2048; checked before any voxel is read).
        slice_gaps: a DICOM series whose slices are not evenly spaced (a missing slice) is
            refused (``"refuse"``) or linearly resampled onto a uniform grid (``"resample"``).

    Raises:
        VolumeError: missing/empty/corrupt file, not an image, 2D, multi-channel 4D, non-finite
            voxels, several DICOM series without ``series_uid``, no DICOM series, ...
    """
    from LaMed.data.io_guard import check_regular
    from LaMed.data.io_guard import max_voxels as voxel_limit

    p = Path(path)
    if not p.exists():
        raise VolumeError(p, "file not found")
    check_regular(p)  # a named pipe would block the reader forever
    limit = voxel_limit(max_voxels)
    fmt = volume_format(p)
    if series_uid is not None and fmt != "dicom":
        raise VolumeError(p, f"series_uid={series_uid!r} was given but this is not a DICOM series")
    if p.is_file() and p.stat().st_size == 0:
        raise VolumeError(p, "file is empty (0 bytes)")
    if fmt == "nifti":
        from LaMed.data.io_nifti import load_nifti

        return load_nifti(p, limit)
    if fmt in ("npy", "npz"):
        from LaMed.data.io_numpy import load_npy, load_npz

        return load_npy(p, spacing, limit) if fmt == "npy" else load_npz(p, key, spacing, spacing_order, limit)
    from LaMed.data import io_itk

    if fmt == "dicom":
        return io_itk.load_dicom_series(p, series_uid=series_uid, max_voxels=limit, slice_gaps=slice_gaps)
    return io_itk.load_itk_file(p, max_voxels=limit)


def load_mask(path: str | Path, like: Volume, *, key: str = "gts", atol_mm: float = 1e-3, **kwargs) -> Volume:
    """Read a label volume that must lie on the same grid as ``like``.

    The comparison is made in canonical space (shape and affine within ``atol_mm``), so a mask
    stored with another axis order or flips (e.g. LAS against an LPS DICOM) is accepted when it
    covers the same voxels. Float masks holding whole numbers become integers.
    """
    vol = load_volume(path, key=key, **kwargs)
    diff = float(np.abs(vol.affine - like.affine).max()) if vol.shape == like.shape else None
    if diff is None or diff > atol_mm:
        detail = f"shape {vol.shape} vs {like.shape}" if diff is None else f"affines differ by up to {diff:.4g} mm"
        raise VolumeError(path, f"mask grid differs from its image {like.path}: {detail}")
    if vol.array.dtype.kind == "f":
        if not np.array_equal(vol.array, np.round(vol.array)):
            raise VolumeError(path, "mask has non-integer values; expected a label volume")
        vol.array = _smallest_int(vol.array)
    return vol


def save_volume(array: np.ndarray, path: str | Path, like: Volume) -> Path:
    """Write a canonical ``(D, H, W)`` array in the geometry of ``like``; the format follows the extension.

    * ``.nii``/``.nii.gz``: a NIfTI-sourced ``like`` keeps its own header, affine and axis order, so
      nibabel reloads the result onto exactly the source grid; other sources get their file grid
      and affine (qform = sform, scanner code).
    * ``.nrrd``/``.nhdr``/``.mha``/``.mhd``: SimpleITK with origin/spacing/direction of the source.
    * ``.npy``: the canonical array; ``.npz``: ``segs`` (canonical) + ``spacing`` (x, y, z order, as read).

    A leading singleton axis (``(1, D, H, W)``) is dropped; bool becomes uint8, int64 the smallest
    integer type that holds it, float16/float64 float32.
    """
    p = Path(path)
    arr = np.asarray(array)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != like.shape:
        raise VolumeError(
            p, f"array of shape {arr.shape} does not match the canonical shape {like.shape} of {like.path}"
        )
    arr = _writable_dtype(arr, p)
    fmt = "dicom" if p.name.lower().endswith(".dcm") else volume_format(p)
    if fmt == "nifti":
        from LaMed.data.io_nifti import save_nifti as writer
    elif fmt == "itk":
        from LaMed.data.io_itk import save_itk_file as writer
    elif fmt in ("npy", "npz"):
        from LaMed.data.io_numpy import save_npy, save_npz

        writer = save_npy if fmt == "npy" else save_npz
    else:
        raise VolumeError(p, "writing DICOM is not supported; save as .nii.gz, .nrrd or .mha")
    _write_atomically(p, lambda target: writer(arr, target, like))
    return p


# Extensions the writers read the format from; the temporary file keeps it (".tmp.nii.gz").
_SINGLE_FILE_EXT = (".nii.gz", ".nii", ".nrrd", ".mha", ".npy", ".npz")


def _write_atomically(path: Path, write) -> None:
    """Run ``write(target_path)`` so that ``path`` is replaced whole or not at all (never truncated).

    Single-file formats go through :func:`LaMed.utils.atomic.atomic_path`. A header + data pair
    (``.mhd`` + ``.raw``/``.zraw``, ``.nhdr`` + ``.raw.gz``) is written into a temporary folder
    beside ``path`` and moved into place data first, header last, so the header never points at
    data that is not there yet.
    """
    import shutil
    import tempfile

    from LaMed.utils.atomic import OutputError, atomic_path, check_writable_dir, current_umask

    name = path.name.lower()
    suffix = next((ext for ext in _SINGLE_FILE_EXT if name.endswith(ext)), None)
    if suffix is not None:
        with atomic_path(path, suffix=suffix) as tmp:
            write(tmp)
        return
    check_writable_dir(path.parent)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp_dir / path.name)
        produced = sorted(tmp_dir.iterdir(), key=lambda q: q.name == path.name)  # header last
        for q in produced:
            os.chmod(q, 0o666 & ~current_umask())
            os.replace(q, path.parent / q.name)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot write '{path}': {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _writable_dtype(arr: np.ndarray, path) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize == 8:
        return _smallest_int(arr)
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        return arr.astype(np.float32)
    if arr.dtype.kind not in "iuf":
        raise VolumeError(path, f"cannot write voxels of type {arr.dtype}")
    return arr
