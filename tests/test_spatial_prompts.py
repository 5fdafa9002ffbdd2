"""Box and point prompts in whole-volume segmentation: user coordinates -> canonical voxels (checked
against nibabel / SimpleITK on a marked voxel), canonical voxels -> network frames (by hand), one batched
call equal to one call per prompt, windows without the prompt keep the zoom-out logits, bad prompts
refused."""

import numpy as np
import pytest
import torch
from tiny_configs import phantom_volume, tiny_segvol


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_segvol()


# ---- user coordinates ---------------------------------------------------------------------------------
def test_nifti_voxel_and_world_coordinates_find_the_marked_voxel(tmp_path):
    import nibabel as nib

    from LaMed.data.io import load_volume
    from LaMed.inference.spatial_prompts import from_file_voxels, from_world

    # an LPS-stored, axis-permuted file with an origin: nothing about it is canonical already
    affine = np.array([[0.0, -0.8, 0.0, 120.0], [-1.5, 0.0, 0.0, 90.0], [0.0, 0.0, 2.5, -40.0], [0, 0, 0, 1]])
    data = np.zeros((20, 24, 12), np.int16)
    ijk = (13, 5, 7)
    data[ijk] = 1000
    path = tmp_path / "marked.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    vol = load_volume(path)
    c = from_file_voxels(vol, ijk)[0]
    assert np.allclose(c, np.round(c), atol=1e-6)
    assert vol.array[tuple(int(round(v)) for v in c)] == 1000
    ras = nib.affines.apply_affine(affine, ijk)
    assert np.allclose(from_world(vol, ras, "ras")[0], c, atol=1e-6)
    lps = ras * np.array([-1, -1, 1])
    assert np.allclose(from_world(vol, lps, "lps")[0], c, atol=1e-6)


def test_itk_voxel_and_lps_coordinates_find_the_marked_voxel(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from LaMed.data.io import load_volume
    from LaMed.inference.spatial_prompts import from_file_voxels, from_world

    arr = np.zeros((10, 16, 14), np.int16)  # z, y, x
    ijk = (3, 11, 6)  # x, y, z as ITK indexes it
    arr[ijk[2], ijk[1], ijk[0]] = 500
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 3.0))
    img.SetOrigin((-50.0, 20.0, 100.0))
    img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    path = tmp_path / "marked.mha"
    sitk.WriteImage(img, str(path))
    vol = load_volume(path)
    c = from_file_voxels(vol, ijk)[0]
    assert vol.array[tuple(int(round(v)) for v in c)] == 500
    lps = img.TransformIndexToPhysicalPoint(ijk)
    assert np.allclose(from_world(vol, lps, "lps")[0], c, atol=1e-6)


def test_box_corners_in_any_order_become_min_max():
    from LaMed.data.io import Volume
    from LaMed.inference.spatial_prompts import box_to_canonical

    vol = Volume.from_array(np.zeros((10, 20, 30), np.float32), spacing=(2.0, 1.0, 1.0))
    # canonical (d, h, w) = file voxels of an npy array given x first: (w, h, d)
    assert box_to_canonical(vol, [9, 15, 7, 2, 3, 1], "voxel") == (1.0, 3.0, 2.0, 7.0, 15.0, 9.0)


# ---- frames ----------------------------------------------------------------------------------------------
def test_zoom_out_frame_by_hand():
    from LaMed.inference.spatial_prompts import SegPrompt, prompt_in_frame, zoom_out_frame

    frame = zoom_out_frame((2, 4, 6, 18, 36, 70), (8, 16, 32))  # crop 16 x 32 x 64 -> half size
    assert frame.scale == (0.5, 0.5, 0.5)
    whole = SegPrompt(box=(2, 4, 6, 17, 35, 69), points=((3, 4, 6),), point_labels=(1,))
    row = prompt_in_frame(whole, frame, None, "cpu", torch.float32)
    # the whole crop is the whole frame: voxels 0 .. size - 1
    assert row.boxes.tolist() == [[0.0, 0.0, 0.0, 7.0, 15.0, 31.0]]
    # the centre of crop voxel 1 (canonical 3) sits at 1.5 * 0.5 = 0.75 in frame units: index 0.25
    assert row.points.tolist() == [[[0.25, -0.25, -0.25]]]
    assert row.text_embedding is None and row.point_labels.tolist() == [[1]]


def test_window_frame_clips_the_box_and_drops_points_outside():
    from LaMed.inference.spatial_prompts import SegPrompt, prompt_in_frame, window_frame

    frame = window_frame((10, 0, 0), (4, 8, 8), (8, 16, 16))  # covers canonical d 14..21, h 8..23, w 8..23
    q = SegPrompt(box=(12, 10, 20, 30, 12, 40), points=((15, 9, 9), (30, 9, 9)), point_labels=(1, 0))
    row = prompt_in_frame(q, frame, None, "cpu", torch.float32)
    assert row.boxes.tolist() == [[0.0, 2.0, 12.0, 7.0, 4.0, 15.0]]
    assert row.points.tolist() == [[[1.0, 1.0, 1.0]]] and row.point_labels.tolist() == [[1]]
    # nothing reaches a window beside the box: no row (the zoom-in keeps the zoom-out logits there)
    far = window_frame((10, 0, 0), (4, 40, 40), (8, 16, 16))
    assert prompt_in_frame(SegPrompt(box=(12, 10, 20, 30, 12, 40)), far, None, "cpu", torch.float32) is None


# ---- one pass ----------------------------------------------------------------------------------------------
def test_mixed_prompts_in_one_call_equal_one_call_each(tiny_model, monkeypatch):
    from LaMed.inference.segment import preprocess, zoom_out_zoom_in
    from LaMed.inference.spatial_prompts import SegPrompt

    m = tiny_model
    vol = phantom_volume()
    pre = preprocess(vol, m.config.img_size, m.config.preprocess_preset)
    c = pre.crop
    mid = [(a + b) // 2 for a, b in zip(c[:3], c[3:])]
    prompts = [
        SegPrompt(text="liver"),
        SegPrompt(box=(c[0] + 2, c[1] + 5, c[2] + 5, mid[0], mid[1], mid[2]), name="box"),
        SegPrompt(points=(tuple(mid), (c[0] + 3, c[1] + 10, c[2] + 10)), point_labels=(1, 0), name="points"),
        SegPrompt(text="spleen", box=(mid[0], mid[1], mid[2], c[3] - 3, c[4] - 6, c[5] - 6)),
        SegPrompt(points=((mid[0] + 2, mid[1] - 4, mid[2] + 3),), name="one point"),
    ]
    with torch.no_grad():
        zo, _ = zoom_out_zoom_in(m, pre, prompts, zoom_in=False)
    # random weights: a threshold each prompt's zoom-out passes somewhere, so every one zooms in
    low = min(float(torch.quantile(z.flatten()[::7], 0.9)) for z in zo)
    monkeypatch.setattr(m.config, "threshold", float(torch.sigmoid(torch.tensor(low))))
    encoded = {"n": 0}
    real = m.encode_image

    def counting(x):
        encoded["n"] += x.shape[0]
        return real(x)

    monkeypatch.setattr(m, "encode_image", counting)
    with torch.no_grad():
        one = [zoom_out_zoom_in(m, pre, [p]) for p in prompts]
        n_sequential, encoded["n"] = encoded["n"], 0
        batched, skipped = zoom_out_zoom_in(m, pre, prompts)
    assert not skipped and not any(fb for _, fb in one)
    assert not torch.equal(batched, zo)
    diff = (torch.sigmoid(torch.cat([lg for lg, _ in one])) - torch.sigmoid(batched)).abs().max()
    assert float(diff) <= 1e-5
    assert encoded["n"] < n_sequential
    # the prompts differ: a box, points and a text do not give one another's logits
    assert all(not torch.allclose(batched[0], batched[k]) for k in range(1, len(prompts)))


def test_window_without_the_prompt_keeps_the_zoom_out_logits(tiny_model):
    from LaMed.inference.segment import zoom_in_regions

    m = tiny_model
    native = torch.rand(1, 1, 40, 96, 90)
    base = torch.randn(40, 96, 90)
    roi = (slice(0, 40), slice(10, 90), slice(0, 90))
    with torch.no_grad():
        (region,) = zoom_in_regions(m, native, [roi], None, window_prompt=lambda k, origin: None, base=[base])
    # every window takes the same values back, so any blend of them is those values
    assert torch.allclose(region, base[roi], atol=1e-6)


def test_predict_volume_labels_and_presence_of_spatial_prompts(tiny_model, monkeypatch):
    from LaMed.inference.segment import predict_volume
    from LaMed.inference.spatial_prompts import SegPrompt

    m = tiny_model
    vol = phantom_volume()
    box = SegPrompt(box=(10, 30, 20, 30, 60, 60), name="lesion box")
    first = predict_volume(m, vol, ["liver", box], zoom_in=False)
    # random weights: a threshold both prompts pass somewhere, so each has a non-empty mask uncalibrated
    top = min(float(first.probabilities[k].max()) for k in range(2))
    monkeypatch.setattr(m.config, "threshold", 0.9 * top)
    monkeypatch.setattr(m.config, "presence_calibration", {"a": 0.0, "b": -5.0}, raising=False)
    pred = predict_volume(m, vol, ["liver", box], zoom_in=False)  # calibrated: sigmoid(-5), absent
    assert pred.prompts == ["liver", "lesion box"]
    assert pred.present["liver"] is False and not pred.masks["liver"].any()
    assert pred.presence["liver"] == pytest.approx(1 / (1 + np.exp(5.0)))
    # the box prompt ignores the calibration: its mask reaches above the threshold, so it is present
    assert pred.present["lesion box"] is True and pred.masks["lesion box"].any()
    assert pred.presence["lesion box"] > 0.5
    assert pred.queries[1].box == (10.0, 30.0, 20.0, 30.0, 60.0, 60.0)


@pytest.mark.parametrize(
    "prompt, message",
    [
        (dict(box=(1, 2, 3, 4, 5)), "6 finite numbers"),
        (dict(box=(10, 2, 3, 4, 5, 6)), "is above"),
        (dict(box=(100, 2, 3, 120, 5, 6)), "outside the volume"),
        (dict(points=((1, 2, 500),)), "outside the volume"),
        (dict(points=((1, 2, 3),), point_labels=(2,)), "point labels are 1"),
        (dict(points=((1, 2, 3),), point_labels=(1, 0)), "2 point labels for 1 points"),
        (dict(points=((1, 2, float("nan")),)), "3 finite numbers"),
        (dict(), "give a text, a box or points"),
        (dict(text=" "), "the text is empty"),
    ],
)
def test_bad_spatial_prompts_are_refused(tiny_model, prompt, message):
    from LaMed.inference.segment import predict_volume
    from LaMed.inference.spatial_prompts import SegPrompt

    with pytest.raises(ValueError, match=message):
        predict_volume(tiny_model, phantom_volume(), [SegPrompt(**prompt)], zoom_in=False)


def test_spatial_prompts_need_point_embeddings_and_distinct_labels(tiny_model):
    from LaMed.inference.segment import predict_volume
    from LaMed.inference.spatial_prompts import SegPrompt
    from LaMed.models.checkpoint_files import resolve_tokenizer
    from LaMed.models.segmentation import create_seg_model

    vol = phantom_volume()
    with pytest.raises(ValueError, match="distinct name"):
        predict_volume(tiny_model, vol, [SegPrompt(box=(1, 1, 1, 5, 5, 5)), SegPrompt(box=(2, 2, 2, 6, 6, 6))])
    no_points = create_seg_model("segvol_tiny", point_prompts=False).eval()
    no_points.tokenizer = resolve_tokenizer("minilm")
    with pytest.raises(ValueError, match="without point / box prompt embeddings"):
        predict_volume(no_points, vol, ["liver", SegPrompt(points=((5, 40, 40),))])


def test_prompt_outside_the_body_is_refused(tiny_model):
    from LaMed.data.io import Volume
    from LaMed.inference.segment import predict_volume, preprocess
    from LaMed.inference.spatial_prompts import SegPrompt

    arr = np.zeros((40, 96, 80), np.float32)
    arr[5:35, 20:80, 20:60] = np.random.default_rng(0).uniform(50, 150, (30, 60, 40))  # the body
    vol = Volume.from_array(arr, spacing=(2.0, 1.0, 1.0))
    pre = preprocess(vol, tiny_model.config.img_size, tiny_model.config.preprocess_preset)
    assert pre.crop == (5, 20, 20, 35, 80, 60)  # the air around it is cropped away
    with pytest.raises(ValueError, match="outside the body"):
        predict_volume(tiny_model, vol, [SegPrompt(points=((20, 5, 5),), name="air")], zoom_in=False)


# ---- lamed predict ----------------------------------------------------------------------------------------
from test_predict_families import SHAPE, clip_dir, inputs, phantom, seg_dir  # noqa: E402, F401  (fixtures)

CANONICAL_BOX = (3.0, 10.0, 12.0, 12.0, 40.0, 50.0)


def _file_corners(phantom):
    """The NIfTI fixture stores ras[i, j, k] = canonical[k, H-1-j, W-1-i] with affine diag(sw, sh, sd)
    and origin (-20, 15, -40): the canonical box's corners as file voxels and as RAS mm, by hand."""
    _, h, w = SHAPE
    d0, h0, w0, d1, h1, w1 = CANONICAL_BOX
    ijk = [(w - 1 - w0, h - 1 - h0, d0), (w - 1 - w1, h - 1 - h1, d1)]
    sd, sh, sw = phantom.spacing
    ras = [(sw * i - 20.0, sh * j + 15.0, sd * k - 40.0) for i, j, k in ijk]
    return [v for c in ijk for v in c], [v for c in ras for v in c]


def _cli(seg_dir, image, out, *extra):
    from LaMed.cli import main

    return main(["predict", "--model", str(seg_dir), "--image", str(image), "--out", str(out), *extra])


def test_cli_box_in_file_voxels_and_ras_lands_on_the_same_canonical_box(seg_dir, inputs, phantom, tmp_path):
    import json

    import nibabel as nib

    from LaMed.inference.api import load
    from LaMed.inference.spatial_prompts import SegPrompt

    voxel, ras = _file_corners(phantom)
    written = {}
    for space, corners in (("voxel", voxel), ("ras", ras)):
        out = tmp_path / space
        args = ["--prompt", "liver", "--box", *map(str, corners), "--coords", space, "--no-zoom-in"]
        assert _cli(seg_dir, inputs["nifti"], out, *args) == 0
        legend = json.loads(next(out.glob("*.json")).read_text())
        (entry,) = legend["structures"]
        assert entry["prompt"] == "liver" and entry["text"] == "liver"
        assert entry["box_canonical_voxels"] == pytest.approx(list(CANONICAL_BOX), abs=1e-6)
        written[space] = np.asarray(nib.load(next(out.glob("*.nii.gz"))).dataobj)
    # the same prompt from Python in canonical voxels gives the same mask file
    seg = load(seg_dir).segment(inputs["nifti"], [SegPrompt(text="liver", box=CANONICAL_BOX)], zoom_in=False)
    seg.save(tmp_path / "api.nii.gz")
    api = np.asarray(nib.load(tmp_path / "api.nii.gz").dataobj)
    assert np.array_equal(written["voxel"], api) and np.array_equal(written["ras"], api)


def test_cli_prompts_file_gives_a_label_map_with_the_names(seg_dir, inputs, phantom, tmp_path):
    import json

    voxel, _ = _file_corners(phantom)
    spec = tmp_path / "prompts.json"
    spec.write_text(
        json.dumps(
            [
                {"text": "liver"},
                {"box": voxel, "name": "lesion box"},
                {"points": [[8, 30, 25]], "point_labels": [1], "name": "click", "coords": "canonical"},
            ]
        )
    )
    out = tmp_path / "out"
    assert _cli(seg_dir, inputs["nifti"], out, "--prompts-file", str(spec), "--no-zoom-in") == 0
    legend = json.loads((out / "case_ras_labels.json").read_text())
    assert legend["labels"] == {"1": "liver", "2": "lesion box", "3": "click"}
    assert legend["structures"][1]["box_canonical_voxels"] == pytest.approx(list(CANONICAL_BOX), abs=1e-6)
    assert legend["structures"][2]["points_canonical_voxels"] == [[8.0, 30.0, 25.0]]


def _refused(capsys, *words):
    err = capsys.readouterr().err
    assert "lamed predict: error:" in err and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--prompt", "liver", "--prompt", "spleen", "--box", "1", "1", "1", "5", "5", "5"], ["--prompts-file"]),
        (["--box", "1", "1", "1", "500", "5", "5"], ["--box / --point", "outside the volume"]),
        (["--point", "1", "1", "1", "--prompt", "liver", "--batch"], ["not with --batch"]),
        (["--prompts-file", "missing.json"], ["--prompts-file", "no such file"]),
    ],
)
def test_cli_bad_spatial_prompts_are_refused(seg_dir, inputs, tmp_path, capsys, extra, words):
    image = inputs["nifti"].parent if "--batch" in extra else inputs["nifti"]
    assert _cli(seg_dir, image, tmp_path / "out", *extra) == 1
    _refused(capsys, *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", ["not a readable JSON"]),
        ("[]", ["non-empty JSON list"]),
        ('[{"text": "liver", "colour": 3}]', ["entry 1", "unknown key"]),
        ('[{"box": [1, 2, 3]}]', ["entry 1", "6 finite numbers"]),
        ('[{"points": [[1, 2, 3]], "coords": "mm"}]', ["entry 1", "'coords' must be one of"]),
        ("", ["not a readable JSON"]),
        ('[{"box": [1, 2, 3, 4, 5, true]}]', ["entry 1", "'box' must be a list of 6 numbers"]),
        pytest.param('[{"text": "liver"}]' + " " * (1 << 20), ["more than a prompts file holds"], id="huge"),
    ],
)
def test_cli_bad_prompts_file_is_refused_naming_it(seg_dir, inputs, tmp_path, capsys, content, words):
    spec = tmp_path / "p.json"
    spec.write_text(content)
    assert _cli(seg_dir, inputs["nifti"], tmp_path / "out", "--prompts-file", str(spec)) == 1
    _refused(capsys, str(spec), *words)
    assert not (tmp_path / "out").exists()


def test_cli_spatial_prompts_are_refused_for_a_clip(clip_dir, inputs, tmp_path, capsys):
    assert _cli(clip_dir, inputs["nifti"], tmp_path / "c.json", "--box", "1", "1", "1", "5", "5", "5") == 1
    _refused(capsys, "--box / --point / --prompts-file", "segmentation model")
