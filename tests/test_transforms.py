"""Transforms and published preprocessing presets (LaMed/data/transforms.py, presets.py).

Reference values come from hand computation, MONAI's own transforms, torch F.interpolate and
scipy.ndimage (for the scikit-image anti-aliased resize FLARE uses), on small inputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from LaMed.data import transforms as T
from LaMed.data.transforms import Preset, apply_preset, get_preset, list_presets

PUBLISHED = ["m3d", "med3dvlm", "flare", "hsenet", "hsenet_slices", "segvol", "ct_rate"]


def phantom(shape=(24, 40, 48), seed=0):
    """CT-like int16 volume: air (-1000 +- noise) around an elliptic body (~40 HU) holding a
    bright cube 'organ' (~150 HU) and a bone-like rod (700 HU). Returns image, body, cube masks."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z, y, x = np.ogrid[:d, :h, :w]
    body = (((y - h / 2 + 0.5) / (0.38 * h)) ** 2 + ((x - w / 2 + 0.5) / (0.36 * w)) ** 2 < 1) & (z >= 2) & (z < d - 3)
    body = np.broadcast_to(body, shape)
    cube = np.zeros(shape, bool)
    cube[d // 3 : d // 3 + 6, h // 3 : h // 3 + 8, w // 2 : w // 2 + 10] = True
    img = np.where(body, 40, -1000).astype(np.int16)
    img[cube] = 150
    img[body & (np.abs(y - h // 2 - 5) < 2) & (np.abs(x - w // 2) < 2)] = 700
    img = img + rng.integers(-15, 16, size=shape, dtype=np.int16)
    img[~body] = -1000  # flat air so that cropping has an exact answer
    return img, body, cube


@pytest.fixture(scope="module")
def ph():
    return phantom()


@pytest.fixture(scope="module")
def monai_t():
    monai_transforms = pytest.importorskip("monai.transforms")
    return monai_transforms


# ------------------------------------------------------------------------------------------
# Registry / interface
# ------------------------------------------------------------------------------------------


def test_registry_names_and_preset_fields():
    names = list_presets()
    for n in PUBLISHED + ["m3d_seg", "m3d_refseg", "flare_chest"]:
        assert n in names
    assert get_preset("m3d").size == (32, 256, 256)
    assert get_preset("med3dvlm").size == (128, 256, 256)
    assert get_preset("flare").size == (128, 256, 256) and get_preset("flare").window == (-160.0, 240.0)
    assert get_preset("flare_chest").window == (-1350.0, 150.0)
    h = get_preset("hsenet")
    assert (h.size, h.spacing, h.window, h.crop_foreground) == (
        (32, 256, 256),
        (1.5, 0.75, 0.75),
        (-1000.0, 200.0),
        True,
    )
    assert get_preset("ct_rate") is h
    assert get_preset("hsenet_slices").slices == 32 and get_preset("hsenet_slices").window == (-1000.0, 1000.0)
    assert get_preset("m3d_refseg").percentiles == (0.5, 99.5)
    assert get_preset("segvol").image_mode == "nearest-exact"
    assert all(get_preset(n).description for n in names)


def test_unknown_preset_lists_known_names():
    with pytest.raises(KeyError) as e:
        get_preset("m3D")
    assert "m3d" in str(e.value) and "hsenet" in str(e.value)
    with pytest.raises(KeyError):
        apply_preset("nope", np.zeros((4, 4, 4)), (1, 1, 1))


def test_preset_config_validation():
    with pytest.raises(ValueError, match="window"):
        Preset("x", (4, 4, 4), window=(10, 0))
    with pytest.raises(ValueError, match="normalize"):
        Preset("x", (4, 4, 4), normalize="zscore")
    with pytest.raises(ValueError, match="size"):
        Preset("x", (4, 0, 4))


def test_input_validation(ph):
    img, body, cube = ph
    with pytest.raises(ValueError, match=r"3-D \(D, H, W\)"):
        apply_preset("m3d", img[None], (1, 1, 1))
    with pytest.raises(ValueError, match="mask 'liver' has shape"):
        apply_preset("m3d", img, (1, 1, 1), masks={"liver": cube[:-1]})
    bad = img.astype(np.float32)
    bad[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        apply_preset("m3d", bad, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        apply_preset("m3d", img, (1, 0, 1))
    with pytest.raises(ValueError, match="mask 'm'.*0..255"):
        apply_preset("m3d", img, (1, 1, 1), masks={"m": cube.astype(np.int32) * 300})


def test_inputs_are_not_modified(ph):
    img, body, cube = ph
    f = img.astype(np.float32)
    keep = f.copy()
    for name in ("m3d", "segvol", "hsenet"):
        apply_preset(name, f, (2.5, 0.8, 0.8), masks={"cube": cube})
    T.segvol_normalize(f)
    T.min_max(f)
    np.testing.assert_array_equal(f, keep)


# ------------------------------------------------------------------------------------------
# Every preset: shape, dtype, range, masks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_shape_dtype_range(ph, name):
    img, body, cube = ph
    sp = (2.5, 0.8, 0.8)
    p = get_preset(name)
    out = apply_preset(name, img, sp, masks={"cube": cube, "body": body})
    x = out["image"]
    if p.slices:
        mid = T.resampled_shape(img.shape, sp, p.spacing)
        assert x.shape == (1, 32, mid[1], mid[2])
    else:
        assert x.shape == (1, *p.size)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() - x.min() > 0.5
    for m in out["masks"].values():
        assert m.dtype == np.uint8 and m.shape == x.shape
        assert set(np.unique(m)) <= {0, 1}
    assert out["masks"]["cube"].any()
    assert len(out["crop"]) == 6 and all(s > 0 for s in out["spacing"])


# ------------------------------------------------------------------------------------------
# Hand-computed reference values
# ------------------------------------------------------------------------------------------


def test_window_and_trilinear_on_a_ramp_by_hand():
    # value = 100 * d along D; window [0, 300] -> [0, 1/3, 2/3, 1]; trilinear 4 -> 2 samples
    # input positions (i + 0.5) * 2 - 0.5 = 0.5 and 2.5, i.e. the means of neighbouring pairs.
    img = np.broadcast_to((100 * np.arange(4))[:, None, None], (4, 6, 8)).astype(np.int16)
    p = Preset("ramp", (2, 3, 4), window=(0, 300), normalize="none", crop_foreground=False)
    out = apply_preset(p, img, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(out["image"][0, :, 0, 0], [1 / 6, 5 / 6], atol=1e-6)
    assert np.ptp(out["image"][0], axis=(1, 2)).max() < 1e-6  # constant in-plane
    assert out["spacing"] == (4.0, 2.0, 2.0)  # field of view kept: 4 * 2 mm over 2 slices
    # D 4 -> 8 upsampling: positions (i + 0.5)/2 - 0.5 clamp at 0, e.g. out[1] = 0.75*v0 + 0.25*v1.
    up = apply_preset(dataclasses.replace(p, size=(8, 6, 8)), img, (2.0, 1.0, 1.0))["image"][0, :, 0, 0]
    v = np.arange(4) / 3
    expect = [
        v[0],
        0.75 * v[0] + 0.25 * v[1],
        0.25 * v[0] + 0.75 * v[1],
        0.75 * v[1] + 0.25 * v[2],
        0.25 * v[1] + 0.75 * v[2],
        0.75 * v[2] + 0.25 * v[3],
        0.25 * v[2] + 0.75 * v[3],
        v[3],
    ]
    np.testing.assert_allclose(up, expect, atol=1e-6)


def test_window_clips_then_min_max_restretches():
    x = np.array([-2000, -160, 40, 240, 3000], np.int16).reshape(5, 1, 1)
    np.testing.assert_allclose(T.window(x, -160, 240).flatten(), [0, 0, 0.5, 1, 1], atol=1e-7)
    # min-max after a window whose range the data does not fill: [0, 90] -> [0, 1]
    y = np.array([0, 45, 90], np.int16).reshape(3, 1, 1)
    p = Preset("w", (3, 1, 1), window=(-160, 240), crop_foreground=False)
    np.testing.assert_allclose(apply_preset(p, y, (1, 1, 1))["image"].flatten(), [0, 0.5, 1], atol=1e-6)
    np.testing.assert_allclose(T.min_max(np.full((2, 2, 2), 7.0)).numpy(), 0.0)


def test_intensity_map_foreground_threshold():
    assert T.window_map(-160, 240).foreground_threshold() == -160.0
    m = T.window_map(-160, 240).then_min_max(-1000, 500)  # min clipped to -160
    assert m.foreground_threshold() == -160.0 and m.value(-160) == 0.0
    assert m.value(240) == pytest.approx(1.0, abs=1e-7) and m.value(40) == pytest.approx(0.5, abs=1e-7)
    assert T.window_map(0, 10).then_min_max(20, 30).foreground_threshold() is None  # constant output
    assert T.IntensityMap(lo=5, hi=10, zero=0, scale=1).foreground_threshold() == -np.inf


# ------------------------------------------------------------------------------------------
# Against MONAI / torch / scipy on the same input
# ------------------------------------------------------------------------------------------


def test_m3d_equals_the_monai_chain(ph, monai_t):
    img, body, cube = ph
    mt = monai_t
    chain = mt.Compose(
        [
            mt.ScaleIntensityRanged("image", a_min=-160, a_max=240, b_min=0, b_max=1, clip=True),
            mt.ScaleIntensityd("image", minv=0.0, maxv=1.0),
            mt.CropForegroundd(["image", "mask"], source_key="image"),
            mt.Resized("image", spatial_size=(32, 256, 256), mode="trilinear"),
            mt.Resized("mask", spatial_size=(32, 256, 256), mode="nearest"),
        ]
    )
    ref = chain({"image": img[None].astype(np.float32), "mask": cube[None].astype(np.float32)})
    out = apply_preset("m3d", img, (2.5, 0.8, 0.8), masks={"cube": cube})
    np.testing.assert_allclose(out["image"], np.asarray(ref["image"]), atol=2e-6)
    np.testing.assert_array_equal(out["masks"]["cube"], np.asarray(ref["mask"]).astype(np.uint8))


def test_refseg_percentiles_equal_monai(ph, monai_t):
    img, body, cube = ph
    mt = monai_t
    chain = mt.Compose(
        [
            mt.ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0, b_max=1, clip=True),
            mt.CropForeground(),
            mt.Resize((32, 256, 256), mode="trilinear"),
        ]
    )
    ref = np.asarray(chain(img[None].astype(np.float32)))
    out = apply_preset("m3d_refseg", img, (1, 1, 1))["image"]
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_hsenet_equals_step_by_step_reference(ph, monai_t):
    img, body, cube = ph
    mt = monai_t
    sp = (2.5, 0.8, 0.8)
    x = torch.from_numpy(np.clip(img.astype(np.float32), -1000, 200))[None, None]
    mid = [int(np.floor(n * s / t)) for n, s, t in zip(img.shape, sp, (1.5, 0.75, 0.75))]
    assert mid == [40, 42, 51]
    r = F.interpolate(x, size=mid, mode="trilinear", align_corners=False)[0]
    r = (r - r.min()) / (r.max() - r.min())
    r = mt.CropForeground()(r)
    ref = np.asarray(mt.Resize((32, 256, 256), mode="trilinear")(r))
    out = apply_preset("hsenet", img, sp, masks={"cube": cube})
    np.testing.assert_allclose(out["image"], ref, atol=2e-6)
    # the air margin is dropped: the crop (input voxels) hugs the body within one voxel
    zz, yy, xx = np.nonzero(body)
    body_box = np.array([zz.min(), yy.min(), xx.min(), zz.max() + 1, yy.max() + 1, xx.max() + 1])
    assert np.abs(np.array(out["crop"]) - body_box).max() <= 1


def test_segvol_normalize_matches_numpy(ph):
    img, body, cube = ph
    a = img.astype(np.float64)
    thr = a.mean()
    fg = a[a > thr]
    lo, hi = np.percentile(fg, [0.05, 99.95])
    expect = (np.clip(a, lo, hi) - fg.mean()) / fg.std()
    np.testing.assert_allclose(T.segvol_normalize(img).numpy(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16])
def test_integer_fast_statistics_equal_numpy(dtype):
    # int16 volumes take an exact counting path for percentiles and SegVol statistics
    rng = np.random.default_rng(3)
    a = rng.integers(0 if dtype != np.int16 else -1024, 250, size=(9, 11, 13)).astype(dtype)
    qs = [0.0, 0.05, 0.5, 37.2, 99.5, 99.95, 100.0]
    np.testing.assert_allclose(T._percentiles(a, qs), np.percentile(a, qs), rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        T.segvol_foreground_stats(a), T.segvol_foreground_stats(a.astype(np.float64)), rtol=1e-12
    )
    fg = a[a > a.mean()].astype(np.float64)
    np.testing.assert_allclose(
        T.segvol_foreground_stats(a), [*np.percentile(fg, [0.05, 99.95]), fg.mean(), fg.std()], rtol=1e-12
    )


def test_segvol_preset_equals_reference(ph, monai_t):
    img, body, cube = ph
    z = T.segvol_normalize(img)
    z = (z - z.min()) / (z.max() - z.min())
    z = np.asarray(monai_t.CropForeground()(z[None]))
    ref = F.interpolate(torch.from_numpy(z)[None], size=(32, 256, 256), mode="nearest-exact")[0].numpy()
    out = apply_preset("segvol", img, (1, 1, 1))["image"]
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_flare_antialias_equals_skimage_algorithm(ph):
    # skimage.transform.resize(order=1, anti_aliasing=True) = Gaussian(sigma=(f-1)/2, mirror,
    # truncate 4) then linear zoom at pixel centres (scipy.ndimage.zoom, grid_mode=True).
    ndi = pytest.importorskip("scipy.ndimage")
    img, body, cube = ph
    size = (10, 16, 20)
    p = dataclasses.replace(get_preset("flare"), name="flare_small", size=size)
    x = np.clip(img.astype(np.float64), -160, 240)
    x = (x - x.min()) / (x.max() - x.min())
    sigma = [max(0.0, (n / s - 1) / 2) for n, s in zip(img.shape, size)]
    g = ndi.gaussian_filter(x, sigma, mode="mirror", truncate=4.0)
    ref = ndi.zoom(g, [s / n for s, n in zip(size, img.shape)], order=1, mode="mirror", grid_mode=True)
    assert ref.shape == size
    out = apply_preset(p, img, (1, 1, 1))
    np.testing.assert_allclose(out["image"][0], ref, atol=2e-5)
    assert out["crop"] == (0, 0, 0, *img.shape)  # FLARE does not crop


def test_hsenet_slices_reference(ph):
    img, body, cube = ph
    sp = (2.5, 0.8, 0.8)
    x = torch.from_numpy(np.clip(img.astype(np.float32), -1000, 1000) / 1000)[None, None]
    r = F.interpolate(x, size=(40, 42, 51), mode="trilinear", align_corners=False)[0, 0]
    r = r[np.rint(np.linspace(0, 39, 32)).astype(int)]
    lo = r.amin(dim=(1, 2), keepdim=True)
    hi = r.amax(dim=(1, 2), keepdim=True)
    ref = torch.where(hi > lo, (r - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(r))
    out = apply_preset("hsenet_slices", img, sp)
    np.testing.assert_allclose(out["image"][0], ref.numpy(), atol=2e-6)
    # fewer resampled slices than 32 (10 slices at 1.5 mm stay 10): linear interpolation to 32
    few = apply_preset("hsenet_slices", img[:10], (1.5, 0.8, 0.8))["image"]
    assert few.shape == (1, 32, 42, 51)


# ------------------------------------------------------------------------------------------
# Geometry: axes, crop, mask alignment
# ------------------------------------------------------------------------------------------


def test_anisotropic_resize_puts_size_on_the_right_axes(monai_t):
    d = np.arange(10, dtype=np.float32)[:, None, None]
    h = np.arange(40, dtype=np.float32)[None, :, None]
    w = np.arange(60, dtype=np.float32)[None, None, :]
    x = d * 1000 + h * 10 + w * 0.01
    out = T.resize(x, (32, 64, 64))
    assert tuple(out.shape) == (32, 64, 64)
    ref = np.asarray(monai_t.Resize((32, 64, 64), mode="trilinear")(x[None]))[0]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-2)
    # D carries the 1000-step ramp: along D the output still spans ~0..9000, in-plane it does not
    assert out[-1, 0, 0] - out[0, 0, 0] > 8000 and out[0, -1, 0] - out[0, 0, 0] < 400
    # channel-first input works the same and masks keep their dtype under nearest
    c = T.resize(np.stack([x, -x]), (32, 64, 64))
    np.testing.assert_allclose(c[1].numpy(), -out.numpy(), atol=1e-3)
    m = T.resize((x > 5000).astype(np.uint8), (32, 64, 64), mode="nearest")
    assert m.dtype == torch.uint8 and tuple(m.shape) == (32, 64, 64)
    ref_m = F.interpolate(torch.from_numpy((x > 5000).astype(np.float32))[None, None], (32, 64, 64), mode="nearest")
    np.testing.assert_array_equal(m.numpy(), ref_m[0, 0].numpy().astype(np.uint8))


def test_crop_to_foreground_removes_air_margin(ph, monai_t):
    img, body, cube = ph
    zz, yy, xx = np.nonzero(body)
    body_box = (zz.min(), yy.min(), xx.min(), zz.max() + 1, yy.max() + 1, xx.max() + 1)
    out = apply_preset("m3d", img, (2.5, 0.8, 0.8))
    assert out["crop"] == body_box
    assert T.foreground_box(T.window(img, -160, 240)) == body_box
    _, start, end = monai_t.CropForeground(return_coords=True)(T.window(img, -160, 240)[None])
    assert tuple(start) + tuple(end) == body_box
    # spacing of the output grid covers the cropped field of view
    n = np.array(body_box[3:]) - np.array(body_box[:3])
    np.testing.assert_allclose(out["spacing"], np.array([2.5, 0.8, 0.8]) * n / np.array([32, 256, 256]))
    # no foreground at all: the whole volume is kept
    assert T.foreground_box(np.zeros((3, 4, 5))) is None
    empty = apply_preset("m3d", np.full((6, 8, 8), -1000, np.int16), (1, 1, 1))
    assert empty["crop"] == (0, 0, 0, 6, 8, 8) and not empty["image"].any()


@pytest.mark.parametrize("name", ["m3d", "med3dvlm", "hsenet", "segvol", "flare"])
def test_mask_stays_aligned_with_image(ph, name):
    img, body, cube = ph
    sp = (2.5, 0.8, 0.8)
    out = apply_preset(name, img, sp, masks={"cube": cube})
    m = out["masks"]["cube"][0].astype(bool)
    # the centroid of the cube, in mm from the crop corner, is kept within one output voxel
    c_in = np.array(np.nonzero(cube)).mean(axis=1)
    lo = np.array(out["crop"][:3])
    c_in_mm = (c_in - lo + 0.5) * np.array(sp)
    c_out_mm = (np.array(np.nonzero(m)).mean(axis=1) + 0.5) * np.array(out["spacing"])
    if name == "hsenet":  # crop offset is in resampled voxels; allow one input voxel more
        assert np.all(np.abs(c_out_mm - c_in_mm) <= np.array(out["spacing"]) + np.array(sp))
    else:
        assert np.all(np.abs(c_out_mm - c_in_mm) <= np.array(out["spacing"]))
    # the image is brighter (~150 HU organ) where the mask is than the ~40 HU body around it
    x = out["image"][0]
    assert x[m].mean() > np.median(x[(~m) & (x > 0)]) + 0.05
    # physical volume is preserved to within a few percent
    vol_in = cube.sum() * np.prod(sp)
    vol_out = m.sum() * np.prod(out["spacing"])
    assert abs(vol_out / vol_in - 1) < 0.15


def test_select_slices_and_slice_min_max():
    x = np.arange(10 * 2 * 2, dtype=np.float32).reshape(10, 2, 2)
    s = T.select_slices(x, 4)  # round(linspace(0, 9, 4)) = [0, 3, 6, 9]
    np.testing.assert_array_equal(s.numpy(), x[[0, 3, 6, 9]])
    n = T.slice_min_max(s).numpy()
    np.testing.assert_allclose(n[:, 0, 0], 0.0)
    np.testing.assert_allclose(n[:, 1, 1], 1.0)
    np.testing.assert_allclose(n[0].flatten(), [0, 1 / 3, 2 / 3, 1], atol=1e-6)
    assert not T.slice_min_max(np.ones((2, 3, 3))).numpy().any()


def test_resample_to_spacing_size_rule():
    x = np.zeros((30, 101, 122), np.float32)
    r, eff = T.resample_to_spacing(x, (3.0, 3.0, 3.0), (1.5, 0.75, 0.75))
    assert tuple(r.shape) == (60, 404, 488)
    assert eff == (1.5, 0.75, 0.75)
    assert T.resampled_shape((7, 10, 10), (1.0, 0.7, 0.7), (1.5, 0.75, 0.75)) == (4, 9, 9)


# ------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------


def test_train_augmentation_moves_image_and_mask_together(monai_t):
    aug = T.train_augmentation("image", ["mask"])
    names = [type(t).__name__ for t in aug.transforms]
    assert names == [
        "RandRotate90d",
        "RandFlipd",
        "RandFlipd",
        "RandFlipd",
        "RandScaleIntensityd",
        "RandShiftIntensityd",
    ]
    assert aug.transforms[0].prob == 0.5 and aug.transforms[0].spatial_axes == (1, 2)
    assert [t.flipper.spatial_axis for t in aug.transforms[1:4]] == [0, 1, 2]
    assert all(t.prob == 0.1 for t in aug.transforms[1:4])
    rng = np.random.default_rng(1)
    mask = (rng.random((1, 6, 8, 8)) > 0.7).astype(np.float32)
    image = (0.25 + 0.5 * mask).astype(np.float32)
    moved = scaled = 0
    for seed in range(12):
        aug.set_random_state(seed)
        out = aug({"image": image.copy(), "mask": mask.copy()})
        im, mk = np.asarray(out["image"]), np.asarray(out["mask"])
        assert im.shape == (1, 6, 8, 8)
        # intensity ops are a positive affine map, so the bright voxels are exactly the mask
        hi = im > (im.max() + im.min()) / 2
        np.testing.assert_array_equal(hi, mk > 0.5)
        assert set(np.unique(mk)) <= {0.0, 1.0}
        moved += not np.array_equal(mk, mask)
        scaled += not np.isclose(im.max(), 0.75)
    assert moved > 0 and scaled > 0


# ------------------------------------------------------------------------------------------
# Real CT (TotalSegmentator sample)
# ------------------------------------------------------------------------------------------


def test_real_ct_liver_through_m3d(totalseg_dir):
    sitk = pytest.importorskip("SimpleITK")
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_dir / "ct_abdomen.nii.gz")))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_dir / "ct_abdomen_seg.nii.gz")))
    assert ct.shape == (30, 101, 122)
    liver = seg == 5
    out = apply_preset("m3d", ct, (3.0, 3.0, 3.0), masks={"liver": liver})
    m = out["masks"]["liver"][0].astype(bool)
    x = out["image"][0]
    # liver mean HU in this scan is ~45 (non-contrast); window [-160, 240] maps HU h to
    # (h + 160) / 400 when the data spans the window (it does: -1100..1207 HU)
    hu_in = ct[liver].astype(np.float64).mean()
    assert 30 < hu_in < 60
    assert abs(x[m].mean() - (hu_in + 160) / 400) < 0.03
    vol_in = liver.sum() * 27.0
    vol_out = m.sum() * np.prod(out["spacing"])
    assert abs(vol_out / vol_in - 1) < 0.05
