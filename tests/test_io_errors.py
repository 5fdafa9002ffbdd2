"""Bad inputs to the volume I/O: each gets a VolumeError that starts with the path and names the problem."""

from __future__ import annotations

import gzip
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from LaMed.data.io import Volume, VolumeError, load_mask, load_volume, save_volume


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _raises(path, pattern, **kwargs) -> VolumeError:
    """load_volume(path) must raise a VolumeError matching ``pattern`` whose message starts with the path."""
    with pytest.raises(VolumeError, match=pattern) as err:
        load_volume(path, **kwargs)
    assert str(err.value).startswith(f"{path}: "), str(err.value)
    return err.value


@pytest.fixture()
def small():
    return np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.nii.gz", r"file not found")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    _raises(tmp_path / "empty.nii.gz", r"file is empty \(0 bytes\)")


def test_truncated_gzip(tmp_path, small):
    noise = np.random.default_rng(0).integers(-1000, 1000, (40, 40, 40)).astype(np.int16)  # barely compressible
    good = _nifti(tmp_path / "good.nii.gz", noise)
    raw = good.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    _raises(tmp_path / "cut.nii.gz", r"truncated or corrupt data \(EOFError")


def test_text_file_named_nii_gz(tmp_path):
    (tmp_path / "notes.nii.gz").write_text("patient notes, not an image\n" * 20, encoding="utf-8")
    _raises(tmp_path / "notes.nii.gz", r"is not gzip-compressed although it is named \.gz")


def test_gzipped_text_named_nii_gz(tmp_path):
    with gzip.open(tmp_path / "notes.nii.gz", "wb") as f:
        f.write(b"patient notes, not an image\n" * 20)
    _raises(tmp_path / "notes.nii.gz", r"is not a NIfTI image")


def test_text_file_named_nii(tmp_path):
    (tmp_path / "notes.nii").write_text("patient notes, not an image\n" * 20, encoding="utf-8")
    _raises(tmp_path / "notes.nii", r"is not a NIfTI image")


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_text_file_named_like_an_itk_image(tmp_path, ext):
    (tmp_path / f"notes{ext}").write_text("patient notes, not an image\n" * 20, encoding="utf-8")
    _raises(tmp_path / f"notes{ext}", r"cannot be read as an image \(")


def test_unsupported_extension(tmp_path):
    (tmp_path / "slice.png").write_bytes(b"\x89PNG....")
    _raises(tmp_path / "slice.png", r"unsupported file type; expected \.nii/\.nii\.gz")


def test_2d_image(tmp_path):
    _raises(_nifti(tmp_path / "2d.nii.gz", np.zeros((8, 9), np.int16)), r"is a 2D image of shape \(8, 9\)")


def test_single_slice_image_is_2d(tmp_path):
    _raises(
        _nifti(tmp_path / "one.nii.gz", np.zeros((8, 9, 1), np.int16)),
        r"is a 2D image \(shape \(8, 9, 1\) has a single slice\)",
    )


def test_4d_with_several_channels_names_axis_and_size(tmp_path):
    _raises(
        _nifti(tmp_path / "4d.nii.gz", np.zeros((8, 9, 10, 3), np.int16)),
        r"4D image of shape \(8, 9, 10, 3\) with 3 channels/time points along axis 3 \(size 3\)",
    )


def test_4d_with_singleton_channel_is_fine(tmp_path, small):
    vol = load_volume(_nifti(tmp_path / "4d1.nii.gz", small[..., None]))
    assert vol.shape == (6, 5, 4)


def test_itk_4d_and_vector_images(tmp_path):
    vol3d = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(sitk.JoinSeries([vol3d, vol3d]), str(tmp_path / "t.mha"))  # a 4D image, 2 time points
    _raises(tmp_path / "t.mha", r"with 2 channels/time points along axis 3 \(size 2\)")
    sitk.WriteImage(sitk.JoinSeries([vol3d]), str(tmp_path / "t1.mha"))  # singleton 4th axis: fine
    assert load_volume(tmp_path / "t1.mha").shape == (4, 5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(tmp_path / "rgb.mha"))
    _raises(tmp_path / "rgb.mha", r"has 3 components per voxel")


def test_npy_multichannel_names_axis_0(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((2, 4, 5, 6), np.float16))
    _raises(tmp_path / "c.npy", r"along axis 0 \(size 2\)")


@pytest.mark.parametrize("bad,counts", [(np.nan, "2 NaN and 0 inf"), (np.inf, "0 NaN and 2 inf")])
def test_non_finite_voxels(tmp_path, bad, counts):
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 2, 3] = data[0, 0, 0] = bad
    _raises(_nifti(tmp_path / "nan.nii.gz", data), rf"contains non-finite voxels: {counts} among 120")
    np.save(tmp_path / "nan.npy", data)
    _raises(tmp_path / "nan.npy", r"contains non-finite voxels")


def test_empty_folder_has_no_dicom_series(tmp_path):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "readme.txt").write_text("no images here", encoding="utf-8")
    _raises(tmp_path / "dicom", r"no DICOM series found in this folder")


def test_unknown_series_uid(tmp_path, small):
    # A one-series folder written through SimpleITK's DICOM writer (geometry is irrelevant here)
    folder = tmp_path / "dicom"
    folder.mkdir()
    img = sitk.GetImageFromArray(small)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.3.4")
        sl.SetMetaData("0020|0032", f"0\\0\\{k}")
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        writer.SetFileName(str(folder / f"{k}.dcm"))
        writer.Execute(sl)
    assert load_volume(folder).shape == (4, 5, 6)
    _raises(folder, r"has no DICOM series '9\.9\.9'; available: 1\.2\.3\.4", series_uid="9.9.9")


def test_npz_missing_key_and_bad_spacing(tmp_path, small):
    np.savez(tmp_path / "img_only.npz", imgs=small, spacing=[1.0, 1.0, 2.0])
    _raises(tmp_path / "img_only.npz", r"has no array 'gts'; arrays present: \['imgs', 'spacing'\]", key="gts")
    np.savez(tmp_path / "bad_sp.npz", imgs=small, spacing=[1.0, 0.0, 2.0])
    _raises(tmp_path / "bad_sp.npz", r"'spacing' .* must be 3 positive finite numbers")
    (tmp_path / "junk.npz").write_text("not a zip archive", encoding="utf-8")
    _raises(tmp_path / "junk.npz", r"is not a readable \.npz archive")


def test_mask_on_another_grid(tmp_path, small):
    img = load_volume(_nifti(tmp_path / "img.nii.gz", small))
    shifted = np.eye(4)
    shifted[:3, 3] = (0.0, 1.5, 0.0)
    for name, data, aff, detail in [
        ("smaller.nii.gz", small[:3].astype(np.uint8), None, r"shape \(6, 5, 3\) vs \(6, 5, 4\)"),
        ("shifted.nii.gz", small.astype(np.uint8), shifted, r"affines differ by up to 1\.5 mm"),
    ]:
        mask_path = _nifti(tmp_path / name, data, aff)
        expected = rf"mask grid differs from its image {re.escape(str(img.path))}: {detail}"
        with pytest.raises(VolumeError, match=expected) as err:
            load_mask(mask_path, like=img)
        assert str(err.value).startswith(f"{mask_path}: ")


def test_mask_with_fractional_values(tmp_path, small):
    img = load_volume(_nifti(tmp_path / "img.nii.gz", small))
    _nifti(tmp_path / "prob.nii.gz", np.full(small.shape, 0.3, np.float32))
    with pytest.raises(VolumeError, match=r"mask has non-integer values"):
        load_mask(tmp_path / "prob.nii.gz", like=img)
    _nifti(tmp_path / "float_labels.nii.gz", (small % 3).astype(np.float32))
    assert load_mask(tmp_path / "float_labels.nii.gz", like=img).array.dtype == np.uint8


def test_save_refuses_wrong_shape_and_dicom(tmp_path, small):
    vol = Volume.from_array(small, path="src.npy")
    expected = r"array of shape \(4, 5\) does not match the canonical shape \(4, 5, 6\) of src\.npy"
    with pytest.raises(VolumeError, match=expected):
        save_volume(small[..., 0], tmp_path / "m.nii.gz", like=vol)
    with pytest.raises(VolumeError, match=r"writing DICOM is not supported"):
        save_volume(small, tmp_path / "m.dcm", like=vol)
    with pytest.raises(VolumeError, match=r"^.*m\.png: unsupported file type"):
        save_volume(small, tmp_path / "m.png", like=vol)


def test_volume_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_volume(tmp_path / "missing.nrrd")
