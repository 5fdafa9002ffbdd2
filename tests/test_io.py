"""Volume I/O with geometry: canonical (S, P, L) order, RAS affine, round trips per format.

References used: nibabel (source grid and affine), SimpleITK (``DICOMOrient(img, "LPS")`` gives
the canonical array of any image; ``TransformIndexToPhysicalPoint`` gives world positions), and
hand-written index maps.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from LaMed.data.io import Volume, canonical_affine, load_mask, load_volume, save_volume

LPS_RAS = np.diag([-1.0, -1.0, 1.0])


def ras_of_itk_index(img, ijk) -> np.ndarray:
    """RAS world position (mm) of an ITK index (x-first), from SimpleITK itself."""
    return LPS_RAS @ np.asarray(img.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk)))


def world(affine, idx) -> np.ndarray:
    return (np.asarray(affine) @ np.r_[np.asarray(idx, float), 1.0])[:3]


# --------------------------------------------------------------------------- real TotalSegmentator volumes


@pytest.fixture(scope="module")
def labels(totalseg_dir):
    return json.loads((totalseg_dir / "labels.json").read_text(encoding="utf-8"))


def _id(labels, table, name) -> int:
    (ids,) = [int(k) for k, v in labels[table].items() if v == name] or [None]
    return ids


def test_ct_ras_canonical_order_and_geometry(totalseg_dir):
    p = totalseg_dir / "ct_abdomen.nii.gz"
    vol = load_volume(p)
    src = np.asanyarray(nib.load(p).dataobj)
    assert src.shape == (122, 101, 30) and vol.shape == (30, 101, 122)
    assert vol.array.dtype == np.int16 and vol.spacing == (3.0, 3.0, 3.0)
    assert vol.orientation == "RAS" and vol.source_format == "nifti"
    # hand map for a RAS file: x runs toward R (W runs toward L) and y toward A (H toward P)
    X, Y, _ = src.shape
    d, h, w = np.meshgrid(np.arange(30), np.arange(101), np.arange(122), indexing="ij")
    np.testing.assert_array_equal(vol.array, src[X - 1 - w, Y - 1 - h, d])
    # SimpleITK, reoriented to identity (LPS) direction, gives exactly the canonical array and grid
    ref = sitk.DICOMOrient(sitk.ReadImage(str(p)), "LPS")
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(vol.affine, canonical_affine(ref.GetSpacing()[::-1], ref.GetOrigin()), atol=1e-4)
    assert vol.array.flags.c_contiguous


def test_mr_lps_canonical_order_and_geometry(totalseg_dir):
    p = totalseg_dir / "mr_abdomen.nii.gz"
    vol = load_volume(p)
    src = np.asanyarray(nib.load(p).dataobj)
    assert src.shape == (117, 91, 20) and vol.shape == (20, 91, 117)
    assert vol.orientation == "LPS" and vol.flips == (False, False, False) and vol.axes == (2, 1, 0)
    np.testing.assert_array_equal(vol.array, src.transpose(2, 1, 0))
    ref = sitk.DICOMOrient(sitk.ReadImage(str(p)), "LPS")
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))


@pytest.mark.parametrize("name", ["ct_abdomen", "mr_abdomen"])
def test_canonical_affine_hits_the_same_world_points_as_nibabel(totalseg_dir, name):
    p = totalseg_dir / f"{name}.nii.gz"
    vol = load_volume(p)
    nib_affine = nib.load(p).affine
    rng = np.random.default_rng(0)
    picks = [(0, 0, 0), tuple(s - 1 for s in vol.shape)]
    picks += [tuple(rng.integers(0, s) for s in vol.shape) for _ in range(4)]
    for dhw in picks:
        marker = np.zeros(vol.shape, np.uint8)
        marker[dhw] = 1
        (ijk,) = np.argwhere(vol.to_source(marker))  # where the voxel lands on the file grid
        np.testing.assert_allclose(world(vol.affine, dhw), world(nib_affine, ijk), atol=1e-6)


def test_ct_and_segmentation_line_up(totalseg_dir, labels):
    ct = load_volume(totalseg_dir / "ct_abdomen.nii.gz")
    seg = load_mask(totalseg_dir / "ct_abdomen_seg.nii.gz", like=ct)
    assert seg.array.dtype == np.uint8 and seg.shape == ct.shape
    liver, spleen = _id(labels, "total", "liver"), _id(labels, "total", "spleen")
    assert (liver, spleen) == (5, 1)
    hu = ct.array.astype(np.float64)
    assert 0 < hu[seg.array == liver].mean() < 100
    assert 0 < hu[seg.array == spleen].mean() < 100
    lung_ids = [int(k) for k, v in labels["total"].items() if v.startswith("lung_")]
    lung = np.isin(seg.array, lung_ids)
    assert lung.sum() > 100 and hu[lung].mean() < -500
    # anatomy in canonical order: the liver lies on the patient's right = low W (image left)
    w_liver = np.argwhere(seg.array == liver)[:, 2].mean()
    w_spleen = np.argwhere(seg.array == spleen)[:, 2].mean()
    assert w_liver < w_spleen
    # lungs sit superior to the liver: higher D
    assert np.argwhere(lung)[:, 0].mean() > np.argwhere(seg.array == liver)[:, 0].mean()


def test_mr_segmentation_lines_up_and_liver_left_of_image(totalseg_dir, labels):
    mr = load_volume(totalseg_dir / "mr_abdomen.nii.gz")
    seg = load_mask(totalseg_dir / "mr_abdomen_seg.nii.gz", like=mr)
    liver, spleen = _id(labels, "total_mr", "liver"), _id(labels, "total_mr", "spleen")
    assert np.argwhere(seg.array == liver)[:, 2].mean() < np.argwhere(seg.array == spleen)[:, 2].mean()
    # organs are brighter than the air outside the body in this MR
    assert mr.array[seg.array == liver].mean() > 3 * mr.array[:, :5, :5].mean()


@pytest.mark.parametrize("name", ["ct_abdomen", "mr_abdomen"])
def test_mask_saved_like_its_image_reloads_on_the_source_grid(totalseg_dir, tmp_path, name):
    img_path, seg_path = totalseg_dir / f"{name}.nii.gz", totalseg_dir / f"{name}_seg.nii.gz"
    vol = load_volume(img_path)
    seg = load_mask(seg_path, like=vol)
    out = save_volume(seg.array, tmp_path / "pred.nii.gz", like=vol)
    back, orig = nib.load(out), nib.load(seg_path)
    assert back.shape == orig.shape
    np.testing.assert_array_equal(back.affine, nib.load(img_path).affine)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(orig.dataobj))
    assert back.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(orig.affine)
    # ... and reads back through the loader onto the same canonical grid
    again = load_mask(out, like=vol)
    np.testing.assert_array_equal(again.array, seg.array)


def test_ct_mask_saved_as_nrrd_has_the_physical_geometry_of_the_nifti(totalseg_dir, tmp_path):
    p = totalseg_dir / "ct_abdomen.nii.gz"
    ct = load_volume(p)
    mask = (ct.array > 200).astype(np.uint8)
    out = save_volume(mask, tmp_path / "bone.nrrd", like=ct)
    ref, got = sitk.ReadImage(str(p)), sitk.ReadImage(str(out))
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(ref) > 200)
    again = load_volume(out)
    np.testing.assert_array_equal(again.array, mask)
    np.testing.assert_allclose(again.affine, ct.affine, atol=1e-4)


def test_mask_stored_with_other_axis_order_is_accepted_on_the_same_physical_grid(totalseg_dir, tmp_path):
    """An LAS copy of the RAS segmentation (x flipped, affine adjusted) covers the same voxels."""
    ct = load_volume(totalseg_dir / "ct_abdomen.nii.gz")
    seg_img = nib.load(totalseg_dir / "ct_abdomen_seg.nii.gz")
    data = np.asanyarray(seg_img.dataobj)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    las = nib.Nifti1Image(np.ascontiguousarray(data[::-1]), seg_img.affine @ flip)
    nib.save(las, tmp_path / "seg_las.nii.gz")
    seg = load_mask(tmp_path / "seg_las.nii.gz", like=ct)
    assert seg.orientation == "LAS"
    np.testing.assert_array_equal(seg.array, load_volume(totalseg_dir / "ct_abdomen_seg.nii.gz").array)


# --------------------------------------------------------------------------- DICOM series (written here)

# coronal acquisition: rows run toward patient Left, columns toward Inferior, slices stacked toward Posterior
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)


def write_dicom_series(folder, array_kji, spacing, origin, direction, series_uid, instance=0):
    """Write a z-first int16 array as a DICOM series (one file a slice), geometry in the tags."""
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array_kji.astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    d = direction
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|103e": "synthetic test series",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{spacing[2]:.6f}",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        # files named in reverse so that the reader must sort by position, not by name
        writer.SetFileName(str(folder / f"{instance}_{img.GetDepth() - k:03d}.dcm"))
        writer.Execute(sl)
    return img


UID_A = "1.2.826.0.1.3680043.2.1125.1.1"
UID_B = "1.2.826.0.1.3680043.2.1125.1.2"


@pytest.fixture()
def known_kji():
    """6 slices of an asymmetric int16 array with negative values."""
    return (np.arange(6 * 5 * 4).reshape(6, 5, 4) * 7 - 300).astype(np.int16)


def test_dicom_series_reads_with_spacing_slice_order_and_orientation(tmp_path, known_kji):
    ref = write_dicom_series(tmp_path / "ser", known_kji, (0.7, 0.9, 2.5), (-10.0, 20.0, 30.0), CORONAL, UID_A)
    vol = load_volume(tmp_path / "ser")
    assert vol.source_format == "dicom" and vol.meta["modality"] == "CT"
    assert vol.meta["num_files"] == 6 and vol.meta["series_uid"] == UID_A
    assert vol.array.dtype == np.int16
    # source array (k, j, i): i -> L, j -> I, k -> P; canonical D = j reversed, H = k, W = i
    assert vol.orientation == "LIP"  # i -> L, j -> I, k -> P
    np.testing.assert_array_equal(vol.array, known_kji.transpose(1, 0, 2)[::-1])
    assert vol.spacing == pytest.approx((0.9, 2.5, 0.7))
    for d, h, w in [(0, 0, 0), (4, 5, 3), (2, 3, 1)]:
        ijk = (w, known_kji.shape[1] - 1 - d, h)
        np.testing.assert_allclose(world(vol.affine, (d, h, w)), ras_of_itk_index(ref, ijk), atol=1e-4)
    # a single file of the series reads the whole series
    one = load_volume(next((tmp_path / "ser").glob("*.dcm")))
    np.testing.assert_array_equal(one.array, vol.array)


def test_dicom_folder_with_two_series_lists_them_and_series_uid_selects(tmp_path, known_kji):
    from LaMed.data.io import VolumeError

    folder = tmp_path / "mixed"
    write_dicom_series(folder, known_kji, (0.7, 0.9, 2.5), (-10.0, 20.0, 30.0), CORONAL, UID_A, instance=1)
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    write_dicom_series(folder, known_kji[:3] + 5, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), identity, UID_B, instance=2)
    with pytest.raises(
        VolumeError, match=r"holds 2 DICOM series; choose one with --series-uid UID \(series_uid=UID"
    ) as err:
        load_volume(folder)
    msg = str(err.value)
    assert msg.startswith(str(folder))
    assert f"{UID_A} (6 files, e.g. " in msg and f"{UID_B} (3 files, e.g. " in msg
    b = load_volume(folder, series_uid=UID_B)
    assert b.shape == (3, 5, 4) and b.spacing == pytest.approx((3.0, 1.0, 1.0))
    np.testing.assert_array_equal(b.array, known_kji[:3] + 5)  # identity direction: canonical == ITK array
    a = load_volume(folder, series_uid=UID_A)
    assert a.meta["num_files"] == 6


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_dicom_mask_written_with_the_physical_geometry(tmp_path, known_kji, ext):
    ref = write_dicom_series(tmp_path / "ser", known_kji, (0.7, 0.9, 2.5), (-10.0, 20.0, 30.0), CORONAL, UID_A)
    vol = load_volume(tmp_path / "ser")
    mask = (vol.array > 0).astype(np.uint8)
    out = save_volume(mask, tmp_path / f"mask{ext}", like=vol)
    got = sitk.ReadImage(str(out))
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), known_kji > 0)
    again = load_volume(out)
    np.testing.assert_array_equal(again.array, mask)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-4)


# --------------------------------------------------------------------------- NRRD / MHA


def _oblique_direction(deg: float) -> tuple[float, ...]:
    """Axial slices tilted by ``deg`` about the LPS x axis (a gantry tilt)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return tuple(np.array([[1, 0, 0], [0, c, -s], [0, s, c]]).ravel())


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_itk_file_round_trip_keeps_oblique_geometry(tmp_path, ext):
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(7, 6, 5)).astype(np.float32)
    ref = sitk.GetImageFromArray(arr)
    ref.SetSpacing((0.8, 0.6, 2.0))
    ref.SetOrigin((5.0, -7.0, 11.0))
    ref.SetDirection(_oblique_direction(12.0))
    sitk.WriteImage(ref, str(tmp_path / f"img{ext}"))
    vol = load_volume(tmp_path / f"img{ext}")
    # a 12 degree tilt is closest to LPS: the array keeps its order, the affine keeps the tilt
    assert vol.orientation == "LPS" and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.spacing == pytest.approx((2.0, 0.6, 0.8))
    for kji in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        np.testing.assert_allclose(world(vol.affine, kji), ras_of_itk_index(ref, kji[::-1]), atol=1e-5)
    out = save_volume((vol.array > 0).astype(np.uint8), tmp_path / f"mask{ext}", like=vol)
    got = sitk.ReadImage(str(out))
    assert got.GetOrigin() == ref.GetOrigin() and got.GetSpacing() == ref.GetSpacing()
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), arr > 0)


def test_itk_flipped_file_is_reoriented_and_written_back_on_its_grid(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    ref = sitk.GetImageFromArray(arr)
    ref.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, -1))  # x toward R, y toward A, z toward I
    ref.SetSpacing((1.5, 1.5, 4.0))
    sitk.WriteImage(ref, str(tmp_path / "img.mha"))
    vol = load_volume(tmp_path / "img.mha")
    assert vol.orientation == "RAI"
    np.testing.assert_array_equal(vol.array, arr[::-1, ::-1, ::-1])
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(sitk.DICOMOrient(ref, "LPS")))
    save_volume(vol.array, tmp_path / "back.mha", like=vol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "back.mha"))), arr)


# --------------------------------------------------------------------------- numpy formats


def test_npy_is_taken_as_canonical_with_given_spacing(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5)
    np.save(tmp_path / "v.npy", arr)
    vol = load_volume(tmp_path / "v.npy")
    assert vol.array.dtype == np.float32 and vol.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_array_equal(vol.affine, canonical_affine((1, 1, 1)))
    vol2 = load_volume(tmp_path / "v.npy", spacing=(2.5, 0.8, 0.7))
    assert vol2.spacing == (2.5, 0.8, 0.7)
    # canonical affine: d -> +S, h -> +P (-A), w -> +L (-R)
    np.testing.assert_allclose(world(vol2.affine, (2, 3, 4)), [-4 * 0.7, -3 * 0.8, 2 * 2.5])


def test_npy_prepared_format_channel_first_float16(tmp_path):
    arr = np.random.default_rng(0).random((1, 4, 5, 6)).astype(np.float16)
    np.save(tmp_path / "p.npy", arr)
    vol = load_volume(tmp_path / "p.npy")
    assert vol.shape == (4, 5, 6) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, arr[0].astype(np.float32))
    out = save_volume(vol.array[None] > 0.5, tmp_path / "m.npy", like=vol)
    np.testing.assert_array_equal(np.load(out), (arr[0] > 0.5).astype(np.uint8))


def _fake_biomedsegfm(path, spacing_xyz=(0.8, 0.8, 2.5)):
    imgs = (np.arange(5 * 6 * 7) % 251).reshape(5, 6, 7).astype(np.uint8)
    gts = np.zeros((5, 6, 7), np.uint8)
    gts[1:4, 2:5, 3:6] = 2
    np.savez_compressed(path, imgs=imgs, gts=gts, spacing=np.asarray(spacing_xyz))
    return imgs, gts


def test_biomedsegfm_npz_image_and_labels(tmp_path):
    imgs, gts = _fake_biomedsegfm(tmp_path / "CT_case.npz")
    vol = load_volume(tmp_path / "CT_case.npz")
    assert vol.array.dtype == np.uint8
    np.testing.assert_array_equal(vol.array, imgs)
    # stored (x, y, z) = (0.8, 0.8, 2.5) -> (D, H, W) = (2.5, 0.8, 0.8)
    assert vol.spacing == (2.5, 0.8, 0.8) and vol.meta["spacing_order"] == "xyz"
    lab = load_mask(tmp_path / "CT_case.npz", like=vol)  # key "gts" by default
    np.testing.assert_array_equal(lab.array, gts)
    assert load_volume(tmp_path / "CT_case.npz", key="gts").array.max() == 2
    out = save_volume(lab.array, tmp_path / "out" / "CT_case.npz", like=vol)
    with np.load(out) as z:
        np.testing.assert_array_equal(z["segs"], gts)
        np.testing.assert_array_equal(z["spacing"], [0.8, 0.8, 2.5])


def test_biomedsegfm_spacing_order_auto_and_explicit(tmp_path):
    _fake_biomedsegfm(tmp_path / "zyx.npz", spacing_xyz=(2.5, 0.8, 0.8))  # values already z, y, x
    assert load_volume(tmp_path / "zyx.npz").spacing == (2.5, 0.8, 0.8)
    _fake_biomedsegfm(tmp_path / "iso.npz", spacing_xyz=(0.5, 0.7, 0.9))
    assert load_volume(tmp_path / "iso.npz").spacing == (0.9, 0.7, 0.5)
    assert load_volume(tmp_path / "iso.npz", spacing_order="zyx").spacing == (0.5, 0.7, 0.9)


# --------------------------------------------------------------------------- in-memory volumes and NIfTI details


def test_from_array_volume_saves_as_nifti_with_its_geometry(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    vol = Volume.from_array(arr, spacing=(3.0, 0.5, 0.75), origin=(10.0, -20.0, 5.0))
    out = save_volume(arr, tmp_path / "v.nii.gz", like=vol)
    img = nib.load(out)
    # NIfTI files are written x-first: (W, H, D) with the affine columns to match
    assert img.shape == (5, 4, 3) and nib.aff2axcodes(img.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), arr.transpose(2, 1, 0))
    np.testing.assert_allclose(world(img.affine, (4, 3, 2)), world(vol.affine, (2, 3, 4)), atol=1e-5)
    np.testing.assert_allclose(world(vol.affine, (0, 0, 0)), [-10.0, 20.0, 5.0])  # LPS origin -> RAS
    again = load_volume(out)
    np.testing.assert_array_equal(again.array, arr)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-5)


def test_nifti_slope_intercept_and_singleton_fourth_axis(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6, 1)
    img = nib.Nifti1Image(raw, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_slope_inter(1, -1024)
    nib.save(img, tmp_path / "int.nii.gz")
    vol = load_volume(tmp_path / "int.nii.gz")
    assert vol.shape == (6, 5, 4) and vol.array.dtype.kind == "i"  # exact integer scaling stays integer
    np.testing.assert_array_equal(vol.to_source(vol.array), raw[..., 0].astype(np.int32) - 1024)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "float.nii.gz")
    vol = load_volume(tmp_path / "float.nii.gz")
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.to_source(vol.array), raw[..., 0] * 0.5 + 10.0)
    # nibabel agrees on the scaled values
    np.testing.assert_allclose(vol.to_source(vol.array), nib.load(tmp_path / "float.nii.gz").get_fdata()[..., 0])


def test_to_source_and_to_canonical_are_inverse(totalseg_dir):
    vol = load_volume(totalseg_dir / "ct_abdomen.nii.gz")
    src = vol.to_source(vol.array)
    np.testing.assert_array_equal(src, np.asanyarray(nib.load(totalseg_dir / "ct_abdomen.nii.gz").dataobj))
    np.testing.assert_array_equal(vol.to_canonical(src), vol.array)


@pytest.mark.parametrize(
    "raw,slope,inter,expected,dtype",
    [
        (np.array([0, 4095], np.uint16), 1, -1024, [-1024, 3071], np.int16),  # CT stored unsigned + intercept
        (np.array([0, 65535], np.uint16), 1, -1024, [-1024, 64511], np.int32),  # needs a wider type
        (np.array([0, 3], np.uint8), -2, 10, [10, 4], np.int16),  # negative slope: intermediates are signed
        (np.array([1, 2], np.int16), 0.5, 0, [0.5, 1.0], np.float32),  # inexact scaling -> float32
    ],
)
def test_integer_rescaling_is_exact_and_compact(raw, slope, inter, expected, dtype):
    from LaMed.data.io import finalize_array

    out = finalize_array(raw, "x.nii", slope, inter)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)


def test_gz_fast_path_equals_nibabel_reader(totalseg_dir, monkeypatch):
    """The ISA-L in-memory reader and nibabel's own gzip reader give the same volume."""
    import LaMed.data.io_nifti as io_nifti

    fast = load_volume(totalseg_dir / "mr_abdomen.nii.gz")
    import gzip

    monkeypatch.setattr(io_nifti, "_gz_module", lambda: gzip)
    slow = load_volume(totalseg_dir / "mr_abdomen.nii.gz")
    assert fast.array.dtype == slow.array.dtype
    np.testing.assert_array_equal(fast.array, slow.array)
    np.testing.assert_array_equal(fast.affine, slow.affine)
