"""SimpleITK back end of :mod:`LaMed.data.io`: DICOM series and NRRD/MHA/MHD files, read and write.

SimpleITK describes a grid by ``origin`` (mm, LPS world position of voxel ``(0, 0, 0)``),
``spacing`` (mm, ITK index order i, j, k = x-first) and a 3x3 ``direction`` (LPS, columns = index
axes), while its numpy arrays are z-first ``(k, j, i)``. :func:`itk_affine` / :func:`itk_geometry`
convert between that description and the RAS affine of the z-first array used by :mod:`LaMed.data.io`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from LaMed.data.io import Volume, VolumeError, build_volume, check_spatial_shape, finalize_array

_LPS_RAS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS (its own inverse)
# DICOM tags kept in Volume.meta (keyword -> "group|element")
_DICOM_TAGS = {
    "modality": "0008|0060",
    "series_description": "0008|103e",
    "study_instance_uid": "0020|000d",
    "rescale_slope": "0028|1053",
    "rescale_intercept": "0028|1052",
    "slice_thickness": "0018|0050",
}


def itk_affine(origin, spacing, direction) -> np.ndarray:
    """4x4 affine mapping a SimpleITK array index ``(k, j, i)`` (z-first) to RAS mm."""
    step = _LPS_RAS @ np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    aff = np.eye(4)
    aff[:3, :3] = step[:, ::-1]  # the array's axis 0 is ITK index k
    aff[:3, 3] = _LPS_RAS @ np.asarray(origin, float)
    return aff


def itk_geometry(array_affine: np.ndarray) -> dict:
    """Inverse of :func:`itk_affine`: ``origin``, ``spacing``, ``direction`` (SimpleITK, LPS) of a z-first grid."""
    aff = np.asarray(array_affine, float)
    step = aff[:3, :3][:, ::-1]
    spacing = np.linalg.norm(step, axis=0)
    direction = _LPS_RAS @ (step / spacing)
    origin = _LPS_RAS @ aff[:3, 3]
    return {
        "origin": tuple(map(float, origin)),
        "spacing": tuple(map(float, spacing)),
        "direction": tuple(map(float, direction.ravel())),
    }


def _itk_message(err: Exception) -> str:
    """The informative line of a SimpleITK/ITK exception (they start with C++ source locations)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR:" in ln or "Description:" in ln:
            return ln.split("ERROR:", 1)[-1].split("Description:", 1)[-1].strip()
    return lines[-1] if lines else type(err).__name__


def _image_to_volume(img, path: Path, source_format: str, meta: dict) -> Volume:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() > 1:
        raise VolumeError(
            path,
            f"has {img.GetNumberOfComponentsPerPixel()} components per voxel (vector/RGB "
            "image); a scalar 3D volume is needed",
        )
    size = img.GetSize()  # ITK order: x, y, z(, t)
    check_spatial_shape(size, path, channel_axis=3)
    if img.GetDimension() > 3:
        img = sitk.Extract(img, [*size[:3]] + [0] * (len(size) - 3), [0] * len(size))
    geom = {"origin": img.GetOrigin(), "spacing": img.GetSpacing(), "direction": img.GetDirection()}
    meta = {"format": source_format, "dtype_on_disk": img.GetPixelIDTypeAsString(), **meta}
    # A view avoids one copy; build_volume copies whenever the result would still alias ITK's buffer.
    src = finalize_array(sitk.GetArrayViewFromImage(img), path)
    return build_volume(src, itk_affine(**geom), path, source_format, header=geom, meta=meta, copy_if_shared=True)


def load_itk_file(path: str | Path, max_voxels: int | None = None) -> Volume:
    """Read ``.nrrd``/``.nhdr``/``.mha``/``.mhd`` (any single file SimpleITK reads) into canonical order.

    The header is read first and its size checked against the voxel limit
    (:func:`LaMed.data.io_guard.check_voxels`) before any voxel is allocated.
    """
    import SimpleITK as sitk

    from LaMed.data.io_guard import check_voxels

    p = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
        check_voxels(reader.GetSize(), p, max_voxels)
        img = reader.Execute()
    except RuntimeError as e:
        raise VolumeError(p, f"cannot be read as an image ({_itk_message(e)})") from None
    return _image_to_volume(img, p, "itk", {})


def list_dicom_series(folder: str | Path) -> dict[str, list[str]]:
    """``{SeriesInstanceUID: [files sorted along the slice normal]}`` for the DICOM series in ``folder``."""
    import SimpleITK as sitk

    folder = str(folder)
    return {
        uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    }


def _series_listing(series: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{uid if uid else '(empty SeriesInstanceUID)'} ({len(files)} files, e.g. {Path(files[0]).name})"
        for uid, files in series.items()
    )


def _check_folder_entries(folder: Path) -> None:
    """Refuse a folder holding a named pipe / device (GDCM would block opening it)."""
    from LaMed.data.io_guard import check_regular

    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith("."):
            check_regular(entry)


def load_dicom_series(
    path: str | Path, series_uid: str | None = None, max_voxels: int | None = None, slice_gaps: str = "refuse"
) -> Volume:
    """Read one DICOM series (GDCM, rescale slope/intercept applied) into canonical order.

    ``path`` is the series folder, or one of its files (the file's series is then read). A folder
    holding several series needs ``series_uid`` (``--series-uid`` on the command line); the error
    lists the UIDs with their file counts. Refused with the files named: a DICOM file of the folder
    that no series could read (it would leave a gap), slice positions that are duplicated, not
    uniformly spaced or not on one orientation (:func:`LaMed.data.io_guard.check_slice_positions`),
    and a series larger than the voxel limit. ``slice_gaps="resample"`` instead resamples a series
    with uneven spacing (e.g. a missing slice) linearly onto a uniform grid of its usual spacing,
    recorded in ``meta["resampled_slices"]``; duplicates, mixed orientations and shear stay refused.
    """
    import SimpleITK as sitk

    from LaMed.data.io_guard import check_slice_positions, check_voxels, is_dicom_file, resample_slices

    if slice_gaps not in ("refuse", "resample"):
        raise ValueError(f"slice_gaps must be 'refuse' or 'resample', got {slice_gaps!r}")
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    _check_folder_entries(folder)
    if p.is_file() and series_uid is None:
        info = sitk.ImageFileReader()
        info.SetFileName(str(p))
        try:
            info.ReadImageInformation()
        except RuntimeError as e:
            raise VolumeError(p, f"is not a readable DICOM file ({_itk_message(e)})") from None
        if info.HasMetaDataKey("0020|000e"):
            series_uid = info.GetMetaData("0020|000e").strip().rstrip("\x00")
    series = list_dicom_series(folder)
    if not series:
        raise VolumeError(folder, "no DICOM series found in this folder")
    if series_uid is None:
        if len(series) > 1:
            raise VolumeError(
                folder,
                f"holds {len(series)} DICOM series; choose one with --series-uid UID "
                f"(series_uid=UID in Python), or give one file of the series as the "
                f"image: {_series_listing(series)}",
            )
        series_uid = next(iter(series))
    if series_uid not in series:
        raise VolumeError(folder, f"has no DICOM series {series_uid!r}; available: {_series_listing(series)}")
    files = series[series_uid]
    listed = {Path(f).name for fs in series.values() for f in fs}
    unread = [
        e.name
        for e in sorted(folder.iterdir())
        if not e.name.startswith(".") and e.name not in listed and is_dicom_file(e)
    ]
    if unread:
        raise VolumeError(
            folder,
            f"{len(unread)} DICOM file(s) could not be read as part of any series: "
            f"{', '.join(unread[:5])}{' ...' if len(unread) > 5 else ''}; the series would "
            "have a gap (repair or remove the file)",
        )
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as e:
        raise VolumeError(files[0], f"is not a readable DICOM file ({_itk_message(e)})") from None
    size = first.GetSize()
    check_voxels((size[0], size[1], len(files)), folder, max_voxels)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise VolumeError(folder, f"cannot read DICOM series {series_uid} ({_itk_message(e)})") from None
    if len(files) > 1:
        get = [
            (
                reader.GetMetaData(i, "0020|0032") if reader.HasMetaDataKey(i, "0020|0032") else "",
                reader.GetMetaData(i, "0020|0037") if reader.HasMetaDataKey(i, "0020|0037") else "",
            )
            for i in range(len(files))
        ]
        geo = check_slice_positions(
            folder, files, [g[0] for g in get], [g[1] for g in get], allow_gaps=slice_gaps == "resample"
        )
    else:
        geo = {"uniform": True}
    meta = {"series_uid": series_uid, "num_files": len(files), "files": files}
    if not geo["uniform"]:
        img = _resampled_image(img, geo, resample_slices)
        meta["resampled_slices"] = {"files": len(files), "slices": img.GetSize()[2], "spacing_mm": geo["step"]}
    for name, tag in _DICOM_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            meta[name] = reader.GetMetaData(0, tag).strip()
    return _image_to_volume(img, folder, "dicom", meta)


def _resampled_image(img, geo: dict, resample_slices):
    """A SimpleITK image of the series resampled onto a uniform slice grid (see ``resample_slices``)."""
    import SimpleITK as sitk

    arr, step, first = resample_slices(sitk.GetArrayViewFromImage(img), geo)
    out = sitk.GetImageFromArray(arr)
    row, col = geo["iop"][:3], geo["iop"][3:]
    direction = np.stack([row, col, geo["normal"]], axis=1)  # columns: the i, j, k index axes (LPS)
    out.SetDirection(tuple(float(v) for v in direction.ravel()))
    out.SetSpacing((img.GetSpacing()[0], img.GetSpacing()[1], step))
    out.SetOrigin(tuple(float(v) for v in geo["ipp"][first]))
    return out


def save_itk_file(array: np.ndarray, path: Path, like: Volume) -> None:
    """Write a canonical array with SimpleITK in the physical geometry of ``like``.

    ITK-sourced volumes reuse their exact origin/spacing/direction; NIfTI-sourced ones derive them
    from the NIfTI affine (x-first file axes), numpy-sourced ones from the canonical affine.
    """
    import SimpleITK as sitk

    src = like.to_source(array)
    if like.source_format in ("itk", "dicom") and isinstance(like.header, dict):
        itk_arr, geom = src, like.header
    elif like.source_format == "nifti":
        itk_arr = src.transpose(2, 1, 0)  # NIfTI arrays are x-first, ITK arrays z-first
        geom = itk_geometry(like.source_affine[:, [2, 1, 0, 3]])
    else:
        itk_arr, geom = src, itk_geometry(like.source_affine)
    img = sitk.GetImageFromArray(np.ascontiguousarray(itk_arr))
    try:
        img.SetOrigin(tuple(geom["origin"]))
        img.SetSpacing(tuple(geom["spacing"]))
        img.SetDirection(tuple(geom["direction"]))
        sitk.WriteImage(img, str(path), useCompression=True)
    except RuntimeError as e:
        raise VolumeError(path, f"SimpleITK could not write the image ({_itk_message(e)})") from None
