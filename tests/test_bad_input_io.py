"""Broken and hostile input to volume reading (``LaMed.data.io.load_volume``, used by every command).

One test per case; each builds its tiny bad input here and checks that the reader refuses it with
a message naming the file and the problem (or, where stated, handles it correctly).
"""

from __future__ import annotations

import gzip
import os
import threading
import tracemalloc

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from LaMed.data.io import VolumeError, load_volume

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
UID = "1.2.826.0.1.3680043.2.1125.77.1"


def _refused(path, pattern, **kwargs) -> str:
    with pytest.raises(VolumeError, match=pattern) as err:
        load_volume(path, **kwargs)
    assert str(err.value).startswith(str(path))
    return str(err.value)


def _write_series(folder, n=6, spacing=2.0, uid=UID, prefix="s"):
    """``n`` 5x4 int16 axial slices at z = 0, spacing, ...; returns the file paths in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(n):
        sl = sitk.GetImageFromArray((np.arange(20).reshape(5, 4) + 100 * k).astype(np.int16)[None])[:, :, 0]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.77",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{k * spacing:.6f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        path = folder / f"{prefix}{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        files.append(path)
    return files


def _edit(path, **attrs):
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


# --------------------------------------------------------------------------- DICOM geometry


def test_good_series_reads_on_its_grid(tmp_path):
    _write_series(tmp_path / "ok")
    vol = load_volume(tmp_path / "ok")
    assert vol.shape == (6, 5, 4) and vol.spacing == pytest.approx((2.0, 1.0, 1.0))


def test_positions_written_with_few_decimals_are_accepted(tmp_path):
    files = _write_series(tmp_path / "ser")
    for k, f in enumerate(files):  # rounding jitter of 0.05 mm: within tolerance, not a gap
        _edit(f, ImagePositionPatient=[0, 0, round(2.0 * k + (0.05 if k % 2 else 0.0), 2)])
    assert load_volume(tmp_path / "ser").shape == (6, 5, 4)


def test_dicom_missing_slice_is_refused_naming_the_gap(tmp_path):
    files = _write_series(tmp_path / "ser")
    files[3].unlink()  # z = 6 mm gone: ITK would read 5 slices at 2.5 mm
    msg = _refused(tmp_path / "ser", r"slice spacing is not uniform")
    assert "s002.dcm (4.0000 mm) -> s004.dcm (8.0000 mm): 4.0000 mm" in msg and "usual spacing 2.0000 mm" in msg


def test_dicom_missing_slice_is_resampled_only_when_asked(tmp_path):
    files = _write_series(tmp_path / "ser")
    files[3].unlink()
    vol = load_volume(tmp_path / "ser", slice_gaps="resample")
    # slice k holds arange(20) + 100 k at z = 2k mm: linear in z, so interpolation restores slice 3 exactly
    expected = np.stack([(np.arange(20).reshape(5, 4) + 100 * k) for k in range(6)]).astype(np.float32)
    assert vol.shape == (6, 5, 4) and vol.spacing == pytest.approx((2.0, 1.0, 1.0))
    assert vol.flips == (False, False, False)  # identity LPS direction: canonical order is the file order
    np.testing.assert_allclose(vol.array, expected, atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 3] + vol.affine[:3, 0] * 5, [0, 0, 10.0], atol=1e-6)  # last slice at z=10
    assert vol.meta["resampled_slices"] == {"files": 5, "slices": 6, "spacing_mm": 2.0}


def test_dicom_unreadable_slice_file_is_refused_by_name(tmp_path):
    files = _write_series(tmp_path / "ser")
    files[2].write_bytes(files[2].read_bytes()[:200])  # truncated: GDCM silently leaves it out
    _refused(tmp_path / "ser", r"1 DICOM file\(s\) could not be read as part of any series: s002\.dcm")


def test_dicom_duplicated_slice_position_is_refused(tmp_path):
    files = _write_series(tmp_path / "ser")
    _edit(files[4], ImagePositionPatient=[0, 0, 6.0])  # same position as s003
    msg = _refused(tmp_path / "ser", r"duplicated slice position")
    assert "s003.dcm" in msg and "s004.dcm" in msg and "6.0000 mm" in msg


def test_dicom_mixed_orientation_is_refused(tmp_path):
    files = _write_series(tmp_path / "ser")
    _edit(files[2], ImageOrientationPatient=[1, 0, 0, 0, 0.9950042, 0.0998334])  # tilted 5.7 degrees
    _refused(tmp_path / "ser", r"slices have different orientations: .*s002\.dcm")


def test_dicom_sheared_stack_is_refused(tmp_path):
    files = _write_series(tmp_path / "ser")
    for k, f in enumerate(files):  # gantry tilt: each slice shifted 0.5 mm along y
        _edit(f, ImagePositionPatient=[0, 0.5 * k, 2.0 * k])
    _refused(tmp_path / "ser", r"shifted .* mm in-plane")


def test_two_series_message_names_the_option_and_every_uid(tmp_path):
    uid_b = "1.2.826.0.1.3680043.2.1125.77.2"
    _write_series(tmp_path / "two", uid=UID, prefix="a")
    _write_series(tmp_path / "two", n=4, uid=uid_b, prefix="b")
    msg = _refused(tmp_path / "two", r"holds 2 DICOM series; choose one with --series-uid UID")
    assert f"{UID} (6 files, e.g. a000.dcm)" in msg and f"{uid_b} (4 files, e.g. b000.dcm)" in msg
    assert load_volume(tmp_path / "two", series_uid=uid_b).shape == (4, 5, 4)


def test_series_uid_on_a_non_dicom_file_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tmp_path / "a.nii")
    _refused(tmp_path / "a.nii", r"series_uid='1\.2' was given but this is not a DICOM series", series_uid="1.2")


# --------------------------------------------------------------------------- NIfTI header and values


def _nifti_bytes(shape, dtype=np.int16, slope=None, affine=None, data=True) -> bytes:
    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype), np.eye(4) if affine is None else affine)
    hdr = img.header
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    if slope is not None:
        hdr["scl_slope"], hdr["scl_inter"] = slope, 0.0
    raw = hdr.binaryblock + b"\0" * 4  # 348-byte header + 4-byte extension flag = vox_offset 352
    if data:
        raw += np.ones(int(np.prod(shape)), dtype).tobytes()
    return raw


def test_tiny_gz_claiming_2048_cubed_is_refused_without_allocating(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes((2048, 2048, 2048), data=False)))
    assert path.stat().st_size < 200
    tracemalloc.start()
    try:
        _refused(path, r"declares 2048x2048x2048 = 8,589,934,592 voxels, above the limit")
        # with the limit lifted the header is checked against the stream, which ends at once
        _refused(
            path, r"truncated: the header declares 17,179,869,536 bytes .* the gzip stream holds 352", max_voxels=2**34
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6


def test_gzip_of_zeros_above_the_voxel_limit_is_refused_before_inflating(tmp_path):
    path = tmp_path / "zeros.nii.gz"
    hdr = _nifti_bytes((1024, 1024, 1024), data=False)
    with gzip.open(path, "wb", compresslevel=1) as f:  # header + 32 MB of zeros (the start of a 2 GiB bomb)
        f.write(hdr)
        zeros = bytes(1 << 22)
        for _ in range(8):
            f.write(zeros)
    tracemalloc.start()
    try:
        _refused(path, r"declares 1024x1024x1024 = 1,073,741,824 voxels, above the limit of 536,870,912")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6
    # the limit is configurable: the environment variable, or the argument
    small = tmp_path / "small.nii.gz"
    small.write_bytes(gzip.compress(_nifti_bytes((8, 8, 8))))
    assert load_volume(small).shape == (8, 8, 8)
    _refused(small, r"above the limit of 100 ", max_voxels=100)
    os.environ["LAMED_MAX_VOXELS"] = "100"
    try:
        _refused(small, r"above the limit of 100 \(set LAMED_MAX_VOXELS")
    finally:
        del os.environ["LAMED_MAX_VOXELS"]


def test_truncated_uncompressed_nifti_is_refused_before_reading(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(_nifti_bytes((64, 64, 64))[:5000])
    _refused(path, r"truncated: the header declares 524,640 bytes .* the file holds 5,000")


def test_scl_slope_1e38_is_refused_not_a_traceback(tmp_path):
    path = tmp_path / "slope.nii"
    path.write_bytes(_nifti_bytes((4, 4, 4), slope=1e38))
    # ones * 1e38 fits float64 but not the float32 the loader produces (max 3.4e38 for 1, so use 7s)
    data = np.full(64, 7, np.int16).tobytes()
    path.write_bytes(path.read_bytes()[:352] + data)
    _refused(
        path,
        r"scale slope 1e\+38 / intercept 0 map the stored values to \[7e\+38, 7e\+38\], beyond the "
        r"float32 range",
    )


def test_nan_in_the_affine_is_refused(tmp_path):
    aff = np.eye(4)
    aff[0, 0] = np.nan
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), None)
    img.header.set_sform(aff, code=1)
    nib.save(img, tmp_path / "nan.nii")
    _refused(tmp_path / "nan.nii", r"the sform affine has non-finite entries")


def test_pixdim_zero_without_sform_or_qform_is_refused(tmp_path):
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), None)
    hdr = img.header
    hdr.set_sform(None, code=0)
    hdr.set_qform(None, code=0)
    hdr["pixdim"][1:4] = (0.0, 1.0, 1.0)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + np.ones(64, np.int16).tobytes()
    (tmp_path / "p0.nii").write_bytes(raw)
    msg = _refused(tmp_path / "p0.nii", r"voxel size pixdim\[1:4\] = \[0\.0, 1\.0, 1\.0\] has a zero")
    assert "no sform or qform" in msg


# --------------------------------------------------------------------------- numpy


def test_npy_header_claiming_more_than_the_file_is_refused(tmp_path):
    path = tmp_path / "big.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i2", "fortran_order": False, "shape": (512, 512, 512)})
        f.write(b"\0" * 100)
    _refused(path, r"truncated: the \.npy header declares shape \(512, 512, 512\) int16")
    _refused(path, r"above the limit of 1,000 ", max_voxels=1000)


def test_npz_array_bomb_is_refused_by_its_header(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, imgs=np.zeros((1024, 1024, 520), np.uint8), spacing=np.ones(3))
    assert path.stat().st_size < 2e6
    _refused(path, r"declares 1024x1024x520 = 545,259,520 voxels, above the limit")


# --------------------------------------------------------------------------- special files


def test_named_pipe_is_refused_not_blocking(tmp_path):
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    result = {}

    def target():
        try:
            load_volume(fifo)
        except VolumeError as exc:
            result["msg"] = str(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader so the test process can exit
        with open(fifo, "wb"):
            pass
        pytest.fail("load_volume blocked on a named pipe")
    assert (
        result["msg"]
        == f"{fifo}: is a named pipe (FIFO), not a regular file; refusing to read it (it could block forever)"
    )


def test_named_pipe_inside_a_dicom_folder_is_refused(tmp_path):
    _write_series(tmp_path / "ser")
    os.mkfifo(tmp_path / "ser" / "zz")
    _refused(tmp_path / "ser" / "zz", r"is a named pipe")
    _refused(tmp_path / "ser", r"ser/zz: is a named pipe")


# --------------------------------------------------------------------------- discovery


def test_batch_and_prepare_find_the_same_extensionless_dicom_series(tmp_path):
    from LaMed.commands.predict import find_inputs
    from LaMed.data.prepare import find_volumes

    files = _write_series(tmp_path / "in" / "series1")
    for f in files:
        f.rename(f.with_suffix(""))  # as exported by many PACS: no extension, DICM preamble
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tmp_path / "in" / "b.nii.gz")
    expected = [tmp_path / "in" / "b.nii.gz", tmp_path / "in" / "series1"]
    assert find_inputs(tmp_path / "in") == expected
    assert find_volumes(tmp_path / "in") == expected
    assert load_volume(tmp_path / "in" / "series1").shape == (6, 5, 4)
