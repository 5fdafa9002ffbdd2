"""NIfTI back end of :mod:`LaMed.data.io` (nibabel): read with slope/intercept, write on the source grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from LaMed.data.io import Volume, VolumeError, build_volume, check_spatial_shape, finalize_array


def load_nifti(p: Path, max_voxels: int | None = None) -> Volume:
    """Read a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) into canonical order.

    Only the header is parsed first; refused before any voxel is read: a declared size above the
    voxel limit, a file (or gzip stream) shorter than the header's size, a voxel size of 0 with
    no sform to replace it, a non-finite affine. Then slope/intercept are applied (an overflowing
    ``scl_slope`` is refused by :func:`LaMed.data.io.finalize_array`).
    """
    import zlib

    import nibabel as nib

    from LaMed.data.io_guard import check_voxels

    gz = p.name.lower().endswith(".gz")
    if gz:
        with open(p, "rb") as f:
            magic = f.read(2)
        if magic != b"\x1f\x8b":
            raise VolumeError(p, "is not gzip-compressed although it is named .gz (not a NIfTI image)")
    try:
        img = nib.load(str(p), mmap=False)  # header only: the data stay on disk behind a proxy
    except nib.filebasedimages.ImageFileError as e:
        raise VolumeError(p, f"is not a NIfTI image ({e})") from None
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise VolumeError(p, f"cannot read the NIfTI header ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(p, f"is a {type(img).__name__}, not a NIfTI-1/2 image")
    check_spatial_shape(img.shape, p, channel_axis=3)
    check_voxels(img.shape, p, max_voxels)
    _check_geometry(img, _raw_header(p, gz, nib), p)
    needed = int(img.dataobj.offset) + int(np.prod(img.shape, dtype=np.int64)) * img.header.get_data_dtype().itemsize
    if gz:
        img = nib.Nifti2Image if isinstance(img, nib.Nifti2Image) else nib.Nifti1Image
        img = img.from_bytes(_read_gz_prefix(p, needed))
    elif p.stat().st_size < needed:
        raise VolumeError(
            p,
            f"truncated: the header declares {needed:,} bytes (voxel data included) but the file "
            f"holds {p.stat().st_size:,}",
        )
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
    meta = {
        "format": "nifti",
        "dtype_on_disk": str(raw.dtype),
        "slope": slope,
        "inter": inter,
        "sform_code": int(img.header["sform_code"]),
        "qform_code": int(img.header["qform_code"]),
    }
    return build_volume(src, img.affine, p, "nifti", header=img.header, meta=meta)


def _raw_header(p: Path, gz: bool, nib):
    """The header as stored: nibabel's loader silently rewrites a zero pixdim to 1 mm."""
    import gzip

    with gzip.open(p, "rb") if gz else open(p, "rb") as f:
        raw = f.read(540)
    for klass, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        for order, code in (("little", "<"), ("big", ">")):
            if int.from_bytes(raw[:4], order) == size:
                return klass(raw[:size], endianness=code, check=False)
    raise VolumeError(p, "is not a NIfTI-1/2 image (unknown header size)")


def _check_geometry(img, hdr, p: Path) -> None:
    """Refuse a header whose voxel-to-world mapping is unknown or not finite.

    nibabel falls back to 1 mm when pixdim is 0 and neither sform nor qform is set, which would
    silently give a wrong physical size; a NaN in the sform/qform breaks every later step.
    ``hdr`` is the header as stored in the file.
    """
    sform, qform = int(hdr["sform_code"]), int(hdr["qform_code"])
    if sform == 0:
        zooms = np.asarray(hdr["pixdim"][1:4], float)
        if not np.isfinite(zooms).all() or (zooms == 0).any():
            which = "qform" if qform else "no sform or qform"
            raise VolumeError(
                p,
                f"voxel size pixdim[1:4] = {zooms.tolist()} has a zero or non-finite entry and the "
                f"header has {which} giving another; the physical voxel size is unknown",
            )
    for name, code, (aff, _) in (
        ("sform", sform, hdr.get_sform(coded=True)),
        ("qform", qform, hdr.get_qform(coded=True)),
    ):
        if code and aff is not None and not np.isfinite(aff).all():
            raise VolumeError(p, f"the {name} affine has non-finite entries (NaN / inf): {np.asarray(aff).tolist()}")
    if not np.isfinite(img.affine).all():
        raise VolumeError(p, f"the voxel-to-world affine has non-finite entries (NaN / inf): {img.affine.tolist()}")


def _gz_module():
    """ISA-L's ``igzip`` (decompresses a CT ~2.5x faster than zlib) when installed, else ``gzip``."""
    try:
        from isal import igzip

        return igzip
    except ImportError:
        import gzip

        return gzip


def _read_gz_prefix(p: Path, needed: int, chunk: int = 1 << 24) -> bytes:
    """The first ``needed`` decompressed bytes of ``p``; refused when the stream ends earlier.

    Read in chunks, so a header that claims more than the file holds costs no more memory than
    the file's real content. ISA-L (``isal``, ~2.5x faster than zlib) is used when installed.
    """
    import zlib

    gzmod = _gz_module()
    errors: tuple = (OSError, EOFError, ValueError, zlib.error)
    if hasattr(gzmod, "isal_zlib"):
        errors += (gzmod.isal_zlib.error,)
    parts, got = [], 0
    try:
        with gzmod.open(p, "rb") as f:
            while got < needed:
                block = f.read(min(chunk, needed - got))
                if not block:
                    break
                parts.append(block)
                got += len(block)
    except errors as e:
        raise VolumeError(p, f"truncated or corrupt data ({type(e).__name__}: {e})") from None
    if got < needed:
        raise VolumeError(
            p,
            f"truncated: the header declares {needed:,} bytes (voxel data included) but the gzip stream holds {got:,}",
        )
    return b"".join(parts)


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
