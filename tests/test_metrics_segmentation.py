"""Segmentation metrics against MONAI (DiceMetric, compute_surface_dice, compute_hausdorff_distance,
compute_average_surface_distance) on small synthetic and real masks, plus hand-worked cases."""

import warnings

import numpy as np
import pytest

from LaMed.metrics import segmentation as S


def ellipsoid(shape, centre, radii):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (x - centre[2]) / radii[2]
    ) ** 2 <= 1


def monai_all(p, g, spacing, tol):
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        DiceMetric,
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    P = torch.from_numpy(p.astype(np.float32))[None, None]
    G = torch.from_numpy(g.astype(np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = DiceMetric(include_background=True, ignore_empty=False)
        return {
            "dice": float(dm(P, G)[0, 0]),
            "nsd": float(compute_surface_dice(P, G, [tol], include_background=True, spacing=spacing)[0, 0]),
            "hd95": float(
                compute_hausdorff_distance(P, G, include_background=True, percentile=95, spacing=spacing)[0, 0]
            ),
            "assd": float(
                compute_average_surface_distance(P, G, include_background=True, symmetric=True, spacing=spacing)[0, 0]
            ),
        }


def random_pairs(n=5, seed=0):
    rng = np.random.default_rng(seed)
    shape = (18, 22, 20)
    for t in range(n):
        g = ellipsoid(shape, rng.uniform(5, 13, 3), rng.uniform(3, 8, 3))
        p = ellipsoid(shape, rng.uniform(5, 13, 3), rng.uniform(3, 8, 3)) ^ (rng.random(shape) < 0.02)
        if t == 0:
            p[:, 0, :] = True  # touches the array border: border voxels are surface
        yield p, g


@pytest.mark.parametrize("path", ["edt", "kdtree"])
def test_agrees_with_monai_anisotropic(path, monkeypatch):
    if path == "kdtree":
        monkeypatch.setattr(S, "EDT_MAX_VOXELS", 0)  # force the k-d tree branch used for big masks
    spacing = (2.5, 0.8, 1.3)
    for p, g in random_pairs():
        ref = monai_all(p, g, spacing, tol=2.0)
        assert S.dice(p, g) == pytest.approx(ref["dice"], abs=1e-6)
        assert S.nsd(p, g, spacing, tolerance_mm=2.0) == pytest.approx(ref["nsd"], abs=1e-6)
        assert S.hd95(p, g, spacing) == pytest.approx(ref["hd95"], rel=1e-5)
        assert S.assd(p, g, spacing) == pytest.approx(ref["assd"], rel=1e-5)


def test_real_liver_mask_against_monai(totalseg_dir):
    nib = pytest.importorskip("nibabel")
    seg = np.asarray(nib.load(totalseg_dir / "ct_abdomen_seg.nii.gz").dataobj)
    liver = seg == 5  # labels.json "total": 5 = liver
    assert liver.sum() > 1000
    pred = np.roll(liver, 2, axis=0)  # a 6 mm shift along x
    pred[:, :, 10:12] = False  # and two missing slices
    ref = monai_all(pred, liver, (3.0, 3.0, 3.0), tol=3.0)
    assert S.dice(pred, liver) == pytest.approx(ref["dice"], abs=1e-6)
    assert S.nsd(pred, liver, (3.0, 3.0, 3.0), 3.0) == pytest.approx(ref["nsd"], abs=1e-6)
    assert S.hd95(pred, liver, 3.0) == pytest.approx(ref["hd95"], rel=1e-5)


def test_hand_worked_values():
    g = np.zeros((5, 5), bool)
    g[1:4, 1:4] = True  # 3x3 square: 8 surface pixels, the centre is inner
    p = np.zeros_like(g)
    p[1:4, 1:3] = True  # 3x2 rectangle: all 6 pixels are surface
    assert S.dice(p, g) == pytest.approx(2 * 6 / (6 + 9))
    assert S.iou(p, g) == pytest.approx(6 / 9)
    # tolerance 0: pred pixel (2, 2) is gt's inner centre (1 px from gt's surface); gt's right column
    # (3 px) is 1 px from pred's surface -> (5 + 5) / (6 + 8)
    assert S.nsd(p, g, tolerance_mm=0.0) == pytest.approx(10 / 14)
    assert S.nsd(p, g, tolerance_mm=1.0) == 1.0
    # columns 2 mm apart: the centre is still 1 mm (one row) from gt's surface, the right column is 2 mm away
    assert S.nsd(p, g, spacing=(1.0, 2.0), tolerance_mm=1.0) == pytest.approx(11 / 14)
    assert S.hausdorff_distance(p, g, spacing=(1.0, 2.0)) == 2.0
    # a single slice in 3-D: both neighbours along the first axis are outside, so every voxel is surface
    assert S.surface_distances(g[None], g[None])[0].size == 9


def test_empty_mask_conventions():
    z = np.zeros((4, 4, 4), bool)
    m = z.copy()
    m[1:3, 1:3, 1:3] = True
    assert S.dice(z, z) == 1.0 and S.nsd(z, z) == 1.0 and S.hd95(z, z) == 0.0 and S.assd(z, z) == 0.0
    assert S.dice(z, z, empty_score=float("nan")) != S.dice(z, z, empty_score=float("nan"))
    for a, b in ((m, z), (z, m)):
        assert S.dice(a, b) == 0.0 and S.nsd(a, b) == 0.0
        assert S.hd95(a, b) == float("inf") and S.assd(a, b) == float("inf")


def test_inputs_tensors_channels_and_errors():
    torch = pytest.importorskip("torch")
    m = np.zeros((6, 6, 6), np.uint8)
    m[2:4, 2:4, 2:4] = 1
    assert S.dice(torch.from_numpy(m)[None, None], m) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        S.dice(m, m[:5])
    with pytest.raises(ValueError, match="spacing"):
        S.nsd(m, m, spacing=(1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        S.nsd(m, m, tolerance_mm=-1)


def test_m3d_soft_dice_hand_example():
    logits = np.zeros((1, 2, 2))  # sigmoid(0) = 0.5 everywhere
    gt = np.array([[[1, 1], [0, -1]]])  # -1 counts as 0
    # 2 * (0.5 + 0.5) / (4 * 0.5 + 2 + 1) = 2 / 5
    assert S.m3d_soft_dice(logits, gt) == pytest.approx(0.4)
    assert S.m3d_soft_dice(np.full((2, 2), 0.5), [[1, 1], [0, 0]], from_logits=False) == pytest.approx(0.4)
    # an empty ground truth always scores 0, even for a perfect empty prediction
    assert S.m3d_soft_dice(np.full((2, 2), -50.0), np.zeros((2, 2))) == 0.0
    # never equals the hard Dice of a perfect binary prediction because of smooth=1
    assert S.m3d_soft_dice(np.ones(4), np.ones(4), from_logits=False) == pytest.approx(8 / 9)


def test_instance_f1_hand_example():
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[0:2, 0:2, 0:2] = 1  # lesion 1: found exactly
    pred[0:2, 0:2, 0:2] = 1
    gt[5:7, 5:7, 5:7] = 1  # lesion 2: predicted with IoU 4/12 < 0.5 -> missed, and an FP
    pred[5:7, 5:7, 6:8] = 1
    pred[5:6, 5:6, 5:6] = 0  # (keep the prediction one component)
    gt[8:10, 0:3, 8:10] = 1  # lesion 3: found with IoU 8/12 >= 0.5
    pred[8:10, 0:2, 8:10] = 1
    pred[0, 9, 9] = 1  # isolated false positive
    out = S.instance_f1(pred, gt)
    assert (out["tp"], out["fp"], out["fn"], out["num_pred"], out["num_gt"]) == (2, 2, 1, 4, 3)
    assert out["f1"] == pytest.approx(2 * 2 / (4 + 3))
    assert out["precision"] == pytest.approx(0.5) and out["recall"] == pytest.approx(2 / 3)
    # two touching gt lesions given as labels stay two instances; as a binary mask they merge
    lab = np.zeros((4, 4, 4), np.int32)
    lab[0:2, 0:2, 0:2] = 1
    lab[2:4, 0:2, 0:2] = 2
    assert S.instance_f1(lab > 0, lab, gt_labeled=True)["num_gt"] == 2
    assert S.instance_f1(lab > 0, lab > 0)["f1"] == 1.0
    z = np.zeros((3, 3, 3))
    assert S.instance_f1(z, z)["f1"] == 1.0
    assert S.instance_f1(z, lab[:3, :3, :3] > 0)["f1"] == 0.0
    # face connectivity splits diagonal neighbours that 26-connectivity joins
    d = np.zeros((3, 3, 3), bool)
    d[0, 0, 0] = d[1, 1, 1] = True
    assert S.instance_f1(d, d, connectivity=1)["num_gt"] == 2 and S.instance_f1(d, d)["num_gt"] == 1
