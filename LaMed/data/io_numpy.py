"""Numpy back end of :mod:`LaMed.data.io`: ``.npy`` volumes and CVPR-BiomedSegFM ``.npz`` files.

Both hold arrays that are already z-first ``(D, H, W)`` and carry no direction, so they are taken
as canonical with identity (LPS) direction and origin 0.

BiomedSegFM ``.npz`` (CVPR 2025 text-guided / interactive 3D segmentation challenge): ``imgs``
``(D, H, W)``, ``gts`` ``(D, H, W)`` integer labels, ``spacing`` (3 floats). The arrays come from
SimpleITK's ``GetArrayFromImage`` (z, y, x) while ``spacing`` was taken from ``GetSpacing``, i.e.
**x, y, z order** (the reverse of the array axes). ``spacing_order="auto"`` keeps that reading
unless the values themselves say otherwise: with equal in-plane spacing at positions 1 and 2 and
a different value at 0 (e.g. ``[2.5, 0.8, 0.8]``) they are taken as already z, y, x.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from LaMed.data.io import Volume, VolumeError, check_spatial_shape, finalize_array


def _check_spacing(values, path, what: str) -> tuple[float, float, float]:
    try:
        sp = tuple(float(v) for v in np.asarray(values, dtype=float).ravel())
    except (TypeError, ValueError):
        raise VolumeError(path, f"{what} {values!r} is not numeric") from None
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise VolumeError(path, f"{what} {values!r} must be 3 positive finite numbers (mm)")
    return sp


def _as_volume(arr: np.ndarray, path: Path, spacing, fmt: str, meta: dict) -> Volume:
    shape = check_spatial_shape(arr.shape, path, channel_axis=0)
    arr = finalize_array(arr.reshape(shape), path)
    meta = {"format": fmt, "orientation": "LPS", **meta}
    return Volume.from_array(arr, spacing, path=str(path), source_format=fmt, meta=meta)


def _npy_header(fh) -> tuple:
    """``(shape, dtype)`` of an open ``.npy`` stream (left at the data's start), data untouched."""
    version = np.lib.format.read_magic(fh)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, _, dtype = read(fh)
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _check_declared(
    path: Path, shape, dtype, available: int, header_end: int, what: str, max_voxels: int | None
) -> None:
    """Voxel limit and "does the file hold what its header declares" before the data are read."""
    from LaMed.data.io_guard import check_voxels

    if dtype.hasobject:
        raise VolumeError(path, f"{what} holds Python objects (dtype {dtype}); refusing to unpickle data files")
    n = check_voxels(shape, path, max_voxels)
    needed = header_end + n * dtype.itemsize
    if available < needed:
        raise VolumeError(
            path,
            f"truncated: {what} declares shape {shape} {dtype} ({needed:,} bytes with its header) "
            f"but holds {available:,} bytes",
        )


def load_npy(path: Path, spacing=None, max_voxels: int | None = None) -> Volume:
    """A ``.npy`` array taken as canonical ``(D, H, W)`` (a leading singleton channel is dropped)."""
    try:
        with open(path, "rb") as fh:
            shape, dtype = _npy_header(fh)
            _check_declared(path, shape, dtype, path.stat().st_size, fh.tell(), "the .npy header", max_voxels)
        arr = np.load(path, allow_pickle=False)
    except VolumeError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise VolumeError(path, f"is not a readable .npy array ({e})") from None
    sp = _check_spacing((1.0, 1.0, 1.0) if spacing is None else spacing, path, "spacing")
    return _as_volume(arr, path, sp, "npy", {"dtype_on_disk": str(arr.dtype)})


def load_npz(
    path: Path, key: str = "imgs", spacing=None, spacing_order: str = "auto", max_voxels: int | None = None
) -> Volume:
    """One array (``imgs`` or ``gts``) of a BiomedSegFM ``.npz`` with its spacing in ``(D, H, W)`` order."""
    if spacing_order not in ("auto", "xyz", "zyx"):
        raise ValueError(f"spacing_order must be 'auto', 'xyz' or 'zyx', got {spacing_order!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise VolumeError(path, f"is not a readable .npz archive ({e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise VolumeError(path, "holds a single array, not an .npz archive of named arrays")
    with npz:
        if key not in npz.files:
            raise VolumeError(path, f"has no array {key!r}; arrays present: {sorted(npz.files)}")
        try:
            info = npz.zip.getinfo(f"{key}.npy")
            with npz.zip.open(info) as fh:
                shape, dtype = _npy_header(fh)
                end = fh.tell()
            _check_declared(path, shape, dtype, info.file_size, end, f"array {key!r}", max_voxels)
            arr = npz[key]
            raw_spacing = npz["spacing"] if "spacing" in npz.files else None
        except VolumeError:
            raise
        except (ValueError, OSError, KeyError, zipfile.BadZipFile) as e:
            raise VolumeError(path, f"cannot read array {key!r} ({e})") from None
    meta = {"key": key, "dtype_on_disk": str(arr.dtype)}
    if spacing is not None:
        sp = _check_spacing(spacing, path, "spacing")
    elif raw_spacing is None:
        sp = (1.0, 1.0, 1.0)
        meta["spacing_missing"] = True
    else:
        stored = _check_spacing(raw_spacing, path, "'spacing'")
        order = spacing_order
        if order == "auto":
            order = "zyx" if stored[1] == stored[2] != stored[0] else "xyz"
        sp = stored[::-1] if order == "xyz" else stored
        meta.update(spacing_stored=stored, spacing_order=order)
    return _as_volume(arr, path, sp, "npz", meta)


def save_npy(array: np.ndarray, path: Path, like: Volume) -> None:
    """The canonical array as ``.npy`` (geometry is not stored)."""
    np.save(path, array)


def save_npz(array: np.ndarray, path: Path, like: Volume) -> None:
    """BiomedSegFM-style output: ``segs`` (canonical) and ``spacing`` in x, y, z order."""
    np.savez_compressed(path, segs=array, spacing=np.asarray(like.spacing[::-1], dtype=np.float64))
