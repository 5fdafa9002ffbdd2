"""NIfTI back end of :mod:`LaMed.data.io` (nibabel): read with slope/intercept, write on the source grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from LaMed.data.io import Volume, VolumeError, build_volume, check_spatial_shape, finalize_array


def load_nifti(p: Path) -> Volume:
    import zlib

    import nibabel as nib

    if p.name.lower().endswith(".gz"):
        with open(p, "rb") as f:
            magic = f.read(2)
        if magic != b"\x1f\x8b":
            raise VolumeError(p, "is not gzip-compressed although it is named .gz (not a NIfTI image)")
    try:
        img = _load_gz_in_memory(p, nib) if p.name.lower().endswith(".gz") else None
        img = img if img is not None else nib.load(str(p), mmap=False)
    except nib.filebasedimages.ImageFileError as e:
        raise VolumeError(p, f"is not a NIfTI image ({e})") from None
    except (OSError, EOFError, ValueError) as e:
        raise VolumeError(p, f"cannot read the NIfTI header ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(p, f"is a {type(img).__name__}, not a NIfTI-1/2 image")
    check_spatial_shape(img.shape, p, channel_axis=3)
    proxy = img.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled())
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise VolumeError(p, f"truncated or corrupt data ({type(e).__name__}: {e})") from None
    while raw.ndim > 3:
        raw = raw[..., 0]
    slope = float(proxy.slope) if np.isfinite(proxy.slope) and proxy.slope != 0 else 1.0
    inter = float(proxy.inter) if np.isfinite(proxy.inter) else 0.0
    src = finalize_array(raw, p, slope, inter)
    meta = {"format": "nifti", "dtype_on_disk": str(raw.dtype), "slope": slope, "inter": inter,
            "sform_code": int(img.header["sform_code"]), "qform_code": int(img.header["qform_code"])}
    return build_volume(src, img.affine, p, "nifti", header=img.header, meta=meta)


def _load_gz_in_memory(p: Path, nib):
    """Decompress a ``.nii.gz`` with ISA-L (``isal``, ~2.5x faster than zlib) and parse it in memory.

    Decompression dominates the cost of reading a CT (about 1.2 s of CPU for a 512x512x300 int16
    volume with zlib, 0.45 s with ISA-L). Returns None when ``isal`` is not installed or the
    header is not NIfTI-1/2, so that nibabel's own reader handles (and reports) everything else.
    """
    try:
        from isal import igzip
    except ImportError:
        return None
    try:
        with igzip.open(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError, ValueError, igzip.isal_zlib.error) as e:
        raise VolumeError(p, f"truncated or corrupt data ({type(e).__name__}: {e})") from None
    sizeof_hdr = {int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")}
    klass = nib.Nifti1Image if 348 in sizeof_hdr else nib.Nifti2Image if 540 in sizeof_hdr else None
    return klass.from_bytes(data) if klass is not None else None


def save_nifti(arr: np.ndarray, p: Path, like: Volume) -> None:
    import nibabel as nib

    src = like.to_source(arr)
    if like.source_format == "nifti" and like.header is not None:
        hdr = like.header.copy()
        klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        hdr.set_data_dtype(src.dtype)
        hdr.set_slope_inter(1.0, 0.0)
        hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0  # the source's display window means nothing for a mask
        img = klass(src, like.source_affine, header=hdr)
    else:
        # SimpleITK/numpy sources keep z-first arrays; NIfTI files are conventionally x-first.
        src = np.ascontiguousarray(src.transpose(2, 1, 0))
        aff = like.source_affine[:, [2, 1, 0, 3]]
        img = nib.Nifti1Image(src, aff)
        img.header.set_xyzt_units("mm")
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
    nib.save(img, str(p))
