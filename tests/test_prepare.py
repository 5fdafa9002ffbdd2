"""Prepared format, prepare_phantoms / prepare_volumes and ``lamed prepare`` on tiny inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from LaMed.data.phantom import make_phantom
from LaMed.data.prepare import find_volumes, prepare_phantoms, prepare_volumes, split_assignment
from LaMed.data.prepared import (
    FORMAT,
    PreparedError,
    load_image,
    load_manifest,
    load_masks,
    save_npy_atomic,
    validate_prepared,
    write_manifest,
)

SMALL = (16, 64, 64)


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    summary = prepare_phantoms(out, n=4, shape=SMALL, seed=10, progress=False)
    return out, summary


def test_prepare_phantoms_writes_a_valid_set(phantom_set):
    out, summary = phantom_set
    assert (summary.written, summary.skipped, summary.failed) == (4, 0, 0)
    assert summary.counts == {"train": 2, "validation": 1, "test": 1}
    report = validate_prepared(out, check_values=True)
    assert report.ok and report.counts == summary.counts
    text = str(summary)
    assert str(out) in text and "train 2" in text and "written 4" in text
    assert summary.files_written == sum(
        1 + len(it["masks"]) + 1
        for s in ("train", "validation", "test")
        for it in load_manifest(out / f"{s}.json")["items"]
    )


def test_phantom_items_hold_the_windowed_image_masks_and_texts(phantom_set):
    out, _ = phantom_set
    m = load_manifest(out / "train.json")
    assert m["format"] == FORMAT and m["dataset"] == "phantom" and m["window"] == [-160.0, 240.0]
    item = m["items"][0]
    seed = 10 + int(item["id"].split("_")[1])
    ph = make_phantom(seed, shape=SMALL)
    img = load_image(out / "train.json", item)
    assert isinstance(img, np.memmap) and img.dtype == np.float16 and img.shape == (1, *SMALL)
    expect = np.clip((ph.image.astype(np.float32) + 160.0) / 400.0, 0, 1)
    np.testing.assert_allclose(img[0].astype(np.float32), expect, atol=1e-3)  # float16 step near 1 is 5e-4
    masks = load_masks(out, item)
    assert "body" not in masks and set(masks) == set(ph.masks) - {"body"}
    for name, mk in masks.items():
        assert mk.dtype == np.uint8 and mk.shape == (1, *SMALL)
        assert np.array_equal(mk[0].astype(bool), ph.masks[name])
    assert item["text"] == ph.report and item["vqa"] == ph.vqa and item["labels"] == ph.labels
    assert all(r["target"] in item["masks"] for r in item["refer"])
    assert item["spacing"] == pytest.approx(list(ph.spacing))
    assert item["boxes"]["liver"] == pytest.approx(ph.boxes["liver"])


def test_rerun_skips_complete_phantoms_and_keeps_files(phantom_set, tmp_path):
    out, _ = phantom_set
    img = out / "images" / "phantom_00001.npy"
    before = img.stat().st_mtime_ns
    again = prepare_phantoms(out, n=4, shape=SMALL, seed=10, progress=False)
    assert (again.written, again.skipped) == (0, 4)
    assert img.stat().st_mtime_ns == before
    assert again.counts == {"train": 2, "validation": 1, "test": 1}


def test_split_is_seeded_and_keeps_a_training_case():
    a = split_assignment(40, 3, 0.125, 0.125)
    assert a == split_assignment(40, 3, 0.125, 0.125)
    assert a != split_assignment(40, 4, 0.125, 0.125)
    assert (a.count("train"), a.count("validation"), a.count("test")) == (30, 5, 5)
    assert split_assignment(2, 0, 0.5, 0.4).count("train") == 1
    with pytest.raises(ValueError, match="val_fraction"):
        split_assignment(4, 0, 1.5, 0.0)


def test_default_size_phantom_set_with_two_workers(tmp_path):
    s = prepare_phantoms(tmp_path, n=2, seed=5, workers=2, val_fraction=0, test_fraction=0, progress=False)
    assert s.failed == 0 and s.counts == {"train": 2}
    item = load_manifest(tmp_path / "train.json")["items"][1]
    img = load_image(tmp_path, item)
    assert img.shape == (1, 32, 256, 256)
    ref = make_phantom(6)  # the same case drawn in this process
    np.testing.assert_allclose(img[0].astype(np.float32), np.clip((ref.image + 160.0) / 400.0, 0, 1), atol=1e-3)
    validate_prepared(tmp_path)


# --------------------------------------------------------------------------- format checks


def _item(**kw):
    base = {"id": "a", "image": "images/a.npy", "masks": {"liver": "masks/a/liver.npy"}}
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "bad, field",
    [
        (
            {
                "vqa": [
                    {
                        "question": "q",
                        "answer": "x",
                        "type": "closed",
                        "choices": {"A": "x", "B": "y", "C": "z", "D": "w"},
                        "answer_choice": "E",
                    }
                ]
            },
            "items[0].vqa[0].answer_choice",
        ),
        ({"vqa": [{"question": "q", "answer": "x", "type": "multiple"}]}, "items[0].vqa[0].type"),
        ({"refer": [{"text": "the spleen", "target": "spleen"}]}, "items[0].refer[0].target"),
        ({"boxes": {"liver": [0.5, 0, 0, 0.2, 1, 1]}}, "items[0].boxes.liver"),
        ({"spacing": [1, 1]}, "items[0].spacing"),
        ({"image": ""}, "items[0].image"),
    ],
)
def test_manifest_errors_name_the_file_and_the_field(tmp_path, bad, field):
    path = tmp_path / "train.json"
    path.write_text(
        json.dumps({"format": FORMAT, "dataset": "d", "split": "train", "items": [_item(**bad)]}), encoding="utf-8"
    )
    with pytest.raises(PreparedError) as exc:
        load_manifest(path)
    assert str(path) in str(exc.value) and field in str(exc.value)
    with pytest.raises(PreparedError, match="items"):
        write_manifest(tmp_path / "w", "train", [_item(), _item()], dataset="d")  # duplicate id
    path.write_text("{broken", encoding="utf-8")
    with pytest.raises(PreparedError, match="not valid JSON"):
        load_manifest(path)


def test_validate_reports_missing_and_misshapen_files(tmp_path):
    save_npy_atomic(tmp_path / "images" / "a.npy", np.zeros((1, 2, 3, 4), np.float16))
    save_npy_atomic(tmp_path / "masks" / "a" / "liver.npy", np.zeros((1, 2, 3, 5), np.uint8))
    save_npy_atomic(tmp_path / "images" / "b.npy", np.zeros((2, 3, 4), np.float32))
    write_manifest(
        tmp_path,
        "train",
        [_item(), _item(id="b", image="images/b.npy", masks={}), _item(id="c", image="images/c.npy", masks={})],
        dataset="d",
    )
    report = validate_prepared(tmp_path, raise_on_error=False)
    assert report.counts == {"train": 3} and len(report.problems) == 3
    text = "\n".join(report.problems)
    assert "liver.npy: mask shape (1, 2, 3, 5) differs" in text
    assert "b.npy: expected an image of shape (1, D, H, W)" in text and "c.npy: file not found" in text
    with pytest.raises(PreparedError, match="3 problem"):
        validate_prepared(tmp_path)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.npy"

    def boom(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_npy_atomic(target, np.zeros(3))
    assert not target.exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- any volumes


def _write_nifti(path: Path, hu: np.ndarray, spacing):
    """Canonical (D, H, W) = (S, P, L) array -> a RAS NIfTI (x = R->L flipped, y = A->P flipped)."""
    import nibabel as nib

    data = np.ascontiguousarray(hu.transpose(2, 1, 0)[::-1, ::-1, :])
    sd, sh, sw = spacing
    affine = np.diag([-sw, -sh, sd, 1.0]) @ np.array(
        [[-1, 0, 0, data.shape[0] - 1], [0, -1, 0, data.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float
    )
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _write_dicom_series(folder: Path, hu: np.ndarray, spacing):
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    img = sitk.GetImageFromArray(hu)  # (z, y, x) = canonical (S, P, L) with identity direction
    img.SetSpacing((spacing[2], spacing[1], spacing[0]))
    uid = "1.2.826.0.1.3680043.2.1125.77"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        pos = "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, val in (
            ("0008|0060", "CT"),
            ("0020|000e", uid),
            ("0020|000d", uid + ".1"),
            ("0008|0018", f"{uid}.2.{k}"),
            ("0020|0013", str(k + 1)),
            ("0020|0032", pos),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0028|0030", f"{spacing[1]}\\{spacing[2]}"),
            ("0018|0050", str(spacing[0])),
        ):
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


@pytest.fixture(scope="module")
def volume_folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("volumes")
    cases = {}
    for i, rel in enumerate(["case0.nii.gz", "case1.nii", "nested/case2.nii.gz"]):
        ph = make_phantom(20 + i, shape=(10, 40, 48))
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_nifti(src / rel, ph.image, ph.spacing)
        cases[rel] = ph
    ph = make_phantom(30, shape=(6, 32, 32))
    _write_dicom_series(src / "series1", ph.image, ph.spacing)
    cases["series1"] = ph
    (src / "broken.nii.gz").write_bytes(b"this is not a NIfTI file" * 4)
    (src / "notes.txt").write_text("ignored", encoding="utf-8")
    return src, cases


def test_find_volumes_lists_files_and_dicom_folders(volume_folder):
    src, _ = volume_folder
    names = [p.relative_to(src).as_posix() for p in find_volumes(src)]
    assert names == ["broken.nii.gz", "case0.nii.gz", "case1.nii", "nested/case2.nii.gz", "series1"]


def test_prepare_volumes_writes_reports_errors_and_resumes(volume_folder, tmp_path):
    from LaMed.data.io import load_volume
    from LaMed.data.transforms import apply_preset

    src, cases = volume_folder
    out = tmp_path / "out"
    s = prepare_volumes(src, out, preset="m3d", progress=False)
    assert (s.written, s.skipped, s.failed) == (4, 0, 1)
    assert s.counts == {"all": 4}
    errors = json.loads((out / "errors.json").read_text(encoding="utf-8"))
    assert [e["file"] for e in errors] == [str(src / "broken.nii.gz")]
    assert str(src / "broken.nii.gz") in errors[0]["error"] and "VolumeError" in errors[0]["error"]
    assert "broken.nii.gz" in (out / "errors.txt").read_text(encoding="utf-8") and "errors.txt" in str(s)
    validate_prepared(out, check_values=True)

    m = load_manifest(out / "all.json")
    assert m["preset"] == "m3d"
    items = {it["id"]: it for it in m["items"]}
    assert set(items) == {"case0", "case1", "nested_case2", "series1"}
    for vid, rel in (("case0", "case0.nii.gz"), ("nested_case2", "nested/case2.nii.gz"), ("series1", "series1")):
        vol = load_volume(src / rel)
        assert np.array_equal(vol.array, cases[rel].image)  # the files hold the canonical phantom
        ref = apply_preset("m3d", vol.array, vol.spacing)
        got = load_image(out, items[vid])
        assert got.shape == ref["image"].shape == (1, 32, 256, 256)
        np.testing.assert_allclose(got.astype(np.float32), ref["image"], atol=1e-3)
        assert items[vid]["spacing"] == pytest.approx(list(ref["spacing"]))
        assert items[vid]["source"] == str(src / rel)

    # A re-run skips finished volumes without touching them and still reports the broken file.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    again = prepare_volumes(src, out, preset="m3d", progress=False)
    assert (again.written, again.skipped, again.failed) == (0, 4, 1)
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes
    # A partial re-run (limit) keeps every earlier item in the manifest.
    part = prepare_volumes(src, out, preset="m3d", limit=2, progress=False)
    assert part.counts == {"all": 4} and part.failed == 1
    # overwrite redoes the work.
    redo = prepare_volumes(src, out, preset="m3d", limit=2, overwrite=True, progress=False)
    assert (
        redo.written == 1 and (out / "images" / "case0.npy").stat().st_mtime_ns != mtimes[out / "images" / "case0.npy"]
    )


def test_prepare_volumes_resumes_after_a_lost_output(volume_folder, tmp_path):
    src, _ = volume_folder
    out = tmp_path / "o"
    prepare_volumes(src / "nested", out, progress=False)
    (out / "images" / "case2.npy").unlink()  # as if the run had been killed before the image landed
    s = prepare_volumes(src / "nested", out, progress=False)
    assert s.written == 1 and (out / "images" / "case2.npy").is_file()
    with pytest.raises(KeyError, match="preset"):
        prepare_volumes(src, out, preset="no_such_preset", progress=False)
    with pytest.raises(FileNotFoundError):
        prepare_volumes(src / "missing", out, progress=False)


# --------------------------------------------------------------------------- CLI


def test_cli_prepare_phantoms_and_volumes(tmp_path, volume_folder, capsys):
    from LaMed.cli import main

    out = tmp_path / "ph"
    assert main(["prepare", "phantoms", "--out", str(out), "--n", "4", "--shape", "16", "64", "64"]) == 0
    printed = capsys.readouterr().out
    assert "written 4" in printed and "train 2" in printed
    assert validate_prepared(out).counts == {"train": 2, "validation": 1, "test": 1}
    src, _ = volume_folder
    code = main(["prepare", "volumes", "--in", str(src), "--out", str(tmp_path / "v"), "--limit", "2"])
    assert code == 3  # the broken file (first in sorted order) failed
    assert "broken.nii.gz" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "v" / "images" / "case0.npy")


def test_phantoms_through_a_preset_are_resized_with_their_masks_and_boxes(tmp_path):
    from LaMed.data.phantom import mask_box

    s = prepare_phantoms(tmp_path, n=1, shape=SMALL, seed=4, preset="m3d", progress=False)
    m = load_manifest(tmp_path / "train.json")
    assert s.failed == 0 and m["preset"] == "m3d" and "window" not in m
    item = m["items"][0]
    img = load_image(tmp_path, item)
    assert img.shape == (1, 32, 256, 256) and float(img.max()) == 1.0 and float(img.min()) == 0.0
    for name, mk in load_masks(tmp_path, item).items():
        assert mk.shape == img.shape
        assert item["boxes"][name] == pytest.approx(mask_box(mk[0].astype(bool)))
    # The preset crops the air around the body, so the body now spans the whole width.
    assert item["boxes"]["liver"][2] < make_phantom(4, shape=SMALL).boxes["liver"][2]


def test_a_smaller_rerun_drops_the_extra_phantoms(tmp_path):
    prepare_phantoms(tmp_path, n=3, shape=(8, 32, 32), val_fraction=0, test_fraction=0, progress=False)
    s = prepare_phantoms(tmp_path, n=2, shape=(8, 32, 32), val_fraction=0, test_fraction=0, progress=False)
    assert (s.skipped, s.counts) == (2, {"train": 2})
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["phantom_00000.npy", "phantom_00001.npy"]
    assert not (tmp_path / "masks" / "phantom_00002").exists()
    # A different shape is a different set: everything is redrawn.
    s = prepare_phantoms(tmp_path, n=2, shape=(8, 32, 40), val_fraction=0, test_fraction=0, progress=False)
    assert (s.written, s.skipped) == (2, 0)
    assert load_image(tmp_path, load_manifest(tmp_path / "train.json")["items"][0]).shape == (1, 8, 32, 40)
