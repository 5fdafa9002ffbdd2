"""M3D-Cap, M3D-VQA, M3D-Seg and M3D-RefSeg preparers on tiny fake raw copies in their exact layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_data_fakes import chest_hu, errors, expected_image, items_by_id, write_csv, write_json, write_nifti

OPTS = dict(size=[8, 32, 32], no_progress=True)


# --------------------------------------------------------------------------- M3D-Cap


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def test_m3d_cap_slices_text_splits_and_errors(tmp_path):
    from Data.m3d_cap import PREPARER, extract_findings

    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    stacks = {}
    for case, n in (("000001", 6), ("000002", 5)):
        series = raw / "M3D_Cap" / "ct_quizze" / case / "Axial_C__portal_venous_phase"
        sl = [rng.integers(0, 256, size=(20, 20)) for _ in range(n)]
        for i, s in enumerate(sl):
            _png(series / f"{i + 1}.png", s)  # names 1..n: integer order, not string order (10 < 2)
        _png(series / f"{n + 1}.png", rng.integers(0, 256, size=(12, 20)))  # odd shape: dropped
        stacks[case] = np.stack(sl).astype(np.float32) / 255.0
        (raw / "M3D_Cap" / "ct_quizze" / case / "text.txt").write_text(
            f"title: x\nstudy_findings: Liver lesion in case {case}.\nNo ascites.", encoding="utf-8"
        )
    bad = raw / "M3D_Cap" / "ct_case" / "000003" / "Axial"
    _png(bad / "1.png", rng.integers(0, 256, size=(20, 20)))
    (bad / "2.png").write_bytes(b"not a png")
    (bad.parent / "text.txt").write_text("study_findings: Broken series.", encoding="utf-8")
    write_json(
        raw / "M3D_Cap.json",
        {
            "train": [
                {"image": "ct_quizze/000001/Axial_C__portal_venous_phase.npy", "text": "ct_quizze/000001/text.txt"},
                {"image": "ct_case/000003/Axial.npy", "text": "ct_case/000003/text.txt"},
            ],
            "validation": [],
            "test": [
                {"image": "ct_quizze/000002/Axial_C__portal_venous_phase.npy", "text": "ct_quizze/000002/text.txt"}
            ],
            "test1k": [
                {"image": "ct_quizze/000002/Axial_C__portal_venous_phase.npy", "text": "ct_quizze/000002/text.txt"}
            ],
        },
    )
    out = tmp_path / "out"
    summary = PREPARER.prepare(raw, out, **OPTS)
    items = items_by_id(out)
    a = items["ct_quizze_000001_axial_c_portal_venous_phase"]
    assert a["_split"] == "train" and a["text"] == "Liver lesion in case 000001. No ascites."
    exp = expected_image("m3d_cap", stacks["000001"], (1.0, 1.0, 1.0))
    np.testing.assert_allclose(np.load(out / a["image"]).astype(np.float32), exp["image"], atol=1e-3)
    assert {it["_split"] for it in items.values()} == {"train", "test", "test1k"}
    errs = errors(out)
    assert len(errs) == 1 and "2.png" in errs[0]["error"] and summary.failed == 1
    assert (
        extract_findings("study_findings: ok\ndiscussion: Long discussion text.")
        == "ok discussion: Long discussion text."
    )
    assert extract_findings("discussion: Discussed here.\nstudy_findings: n/a") == "Discussed here."
    assert extract_findings("Plain report.\nLine two.") == "Plain report. Line two."


# --------------------------------------------------------------------------- M3D-VQA


def test_m3d_vqa_closed_open_yes_no(tmp_path):
    from Data.m3d_vqa import PREPARER

    raw = tmp_path / "raw"
    arrs = {}
    for k, rel in enumerate(("ct_quizze/000001/Axial.npy", "ct_quizze/000002/Axial.npy")):
        a = np.random.default_rng(k).random((1, 8, 32, 32)).astype(np.float32)
        a[0, 0, 0, 0], a[0, -1, -1, -1] = 0.0, 1.0
        p = raw / "M3D_Cap_npy" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, a)
        arrs[rel] = a
    cols = [
        "Image Path",
        "Text",
        "Question Type",
        "Question",
        "Choice A",
        "Choice B",
        "Choice C",
        "Choice D",
        "Answer",
        "Answer Choice",
    ]
    write_csv(
        raw / "M3D_VQA" / "M3D_VQA_train.csv",
        cols,
        [
            [
                "ct_quizze/000001/Axial.npy",
                "Report one.",
                "1",
                "Which plane?",
                "Axial",
                "Sagittal",
                "Coronal",
                "Oblique",
                "Axial",
                "A",
            ],
            [
                "ct_quizze/000001/Axial.npy",
                "Report one.",
                "3",
                "Which organ?",
                "Liver",
                "Spleen",
                "Kidney",
                "Lung",
                "Spleen",
                "B",
            ],
            ["ct_quizze/000001/Axial.npy", "Report one.", "4", "Bad row?", "a", "b", "c", "d", "a", "E"],
            ["ct_quizze/000009/Axial.npy", "Missing.", "1", "Which plane?", "Axial", "b", "c", "d", "Axial", "A"],
        ],
    )
    write_csv(
        raw / "M3D_VQA" / "M3D_VQA_test.csv",
        cols + ["crt"],
        [
            [
                "ct_quizze/000002/Axial.npy",
                "Report two.",
                "2",
                "Which phase?",
                "Arterial",
                "Portal",
                "Delayed",
                "None",
                "Portal",
                "B",
                "1",
            ],
            [
                "ct_quizze/000002/Axial.npy",
                "Report two.",
                "5",
                "Where?",
                "Left",
                "Right",
                "Up",
                "Down",
                "Left",
                "A",
                "0",
            ],
        ],
    )
    write_csv(
        raw / "M3D_VQA" / "M3D_VQA_yn_train.csv",
        ["Image Path", "Text", "Question Type", "Question", "Answer"],
        [["ct_quizze/000001/Axial.npy", "Report one.", "4", "Is there a lesion?", "Yes"]],
    )
    out = tmp_path / "out"
    summary = PREPARER.prepare(raw, out, **OPTS)
    items = items_by_id(out)
    tr = items["ct_quizze_000001_axial"]
    kinds = [(q["type"], q["answer"]) for q in tr["vqa"]]
    assert kinds == [
        ("closed", "Axial"),
        ("open", "Axial"),
        ("closed", "Spleen"),
        ("open", "Spleen"),
        ("yes_no", "Yes"),
    ]
    assert tr["vqa"][2]["answer_choice"] == "B" and tr["vqa"][2]["topic"] == "Organ"
    assert tr["text"] == "Report one." and tr["_split"] == "train"
    # Released arrays pass through unchanged (min-max of an already [0, 1] array, same size).
    np.testing.assert_allclose(
        np.load(out / tr["image"])[0].astype(np.float32), arrs["ct_quizze/000001/Axial.npy"][0], atol=1e-3
    )
    te = items["ct_quizze_000002_axial"]
    assert te["_split"] == "test" and [q.get("crt") for q in te["vqa"]] == [1, 1, 0, 0]
    msgs = " | ".join(e["error"] for e in errors(out))
    assert "Answer Choice 'E'" in msgs and "image not found" in msgs and summary.failed == 2
    checked = PREPARER.prepare(raw, tmp_path / "checked", checked_only=True, **OPTS)
    assert checked.counts["test"] == 1
    assert len(items_by_id(tmp_path / "checked")["ct_quizze_000002_axial"]["vqa"]) == 2


# --------------------------------------------------------------------------- M3D-Seg


def _seg_case(root: Path, code: str, case: str, seed: int, channels: int, present: list) -> tuple:
    import scipy.sparse

    rng = np.random.default_rng(seed)
    X, Y, Z = 20, 18, 10
    img = rng.normal(0, 1, size=(1, X, Y, Z)).astype(np.float32)
    onehot = np.zeros((channels, X, Y, Z), bool)
    for c in present:
        onehot[c, 3 + c : 12 + c, 4:14, 2:8] = True
    d = root / code / case
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "image.npy", img)
    scipy.sparse.save_npz(d / f"mask_{(channels, X, Y, Z)}.npz", scipy.sparse.csr_matrix(onehot.reshape(channels, -1)))
    return img, onehot, d / f"mask_{(channels, X, Y, Z)}.npz"


def test_m3d_seg_sparse_masks_classes_and_splits(tmp_path):
    from Data.m3d_seg import PREPARER

    raw = tmp_path / "raw"
    labels = {"0": "background", "1": "liver", "2": "right kidney", "3": "spleen"}
    img, onehot, m1 = _seg_case(raw, "0000", "case_a", 0, 3, [0, 1])  # spleen absent in case_a
    _, _, m2 = _seg_case(raw, "0000", "case_b", 1, 3, [0, 1, 2])
    _, _, m3 = _seg_case(raw, "0000", "case_c", 2, 3, [2])
    m3.rename(m3.with_name("mask_(3, 20, 18, 11).npz"))  # the file-name shape disagrees with the matrix
    write_json(
        raw / "0000" / "0000.json",
        {
            "name": "toy",
            "labels": labels,
            "numTraining": 2,
            "train": [
                {"image": "0000/case_a/image.npy", "label": f"0000/case_a/{m1.name}"},
                {"image": "0000/case_c/image.npy", "label": "0000/case_c/mask_(3, 20, 18, 11).npz"},
            ],
            "test": [{"image": "0000/case_b/image.npy", "label": f"0000/case_b/{m2.name}"}],
        },
    )
    out = tmp_path / "out"
    summary = PREPARER.prepare(raw, out, **OPTS)
    items = items_by_id(out)
    a = items["0000_case_a"]
    assert a["_split"] == "train" and items["0000_case_b"]["_split"] == "test"
    assert a["labels"] == ["liver", "right kidney"] and sorted(a["masks"]) == ["liver", "right_kidney"]
    assert a["refer"] == [{"text": "liver", "target": "liver"}, {"text": "right kidney", "target": "right_kidney"}]
    # Reference: M3D's swapaxes(-1, -3) of image and channel c = label c + 1, then the preset.
    image = np.swapaxes(img[0], -1, -3)
    masks = {"liver": np.swapaxes(onehot[0], -1, -3), "right_kidney": np.swapaxes(onehot[1], -1, -3)}
    exp = expected_image("m3d_seg_npy", image, (1.0, 1.0, 1.0), masks=masks)
    np.testing.assert_allclose(np.load(out / a["image"]).astype(np.float32), exp["image"], atol=1e-3)
    for k in masks:
        np.testing.assert_array_equal(np.load(out / a["masks"][k]), exp["masks"][k])
    assert all(0 <= v <= 1 for b in a["boxes"].values() for v in b)
    errs = errors(out)
    assert len(errs) == 1 and "case_c" in errs[0]["file"] and "does not match the shape" in errs[0]["error"]
    assert summary.validation.ok
    again = PREPARER.prepare(raw, out, **OPTS)
    assert (again.written, again.skipped, again.failed) == (0, 2, 1)


# --------------------------------------------------------------------------- M3D-RefSeg


def test_m3d_refseg_regions_questions_and_grid_check(tmp_path):
    from Data.m3d_refseg import PREPARER

    raw = tmp_path / "raw" / "M3D_RefSeg"
    hu = chest_hu(3)
    mask = np.zeros(hu.shape, np.uint8)
    mask[2:6, 6:12, 6:10] = 1
    mask[3:5, 14:18, 12:18] = 2
    write_nifti(raw / "s0000" / "ct.nii.gz", hu)
    write_nifti(raw / "s0000" / "mask.nii.gz", mask, dtype=np.uint8)
    write_json(raw / "s0000" / "text.json", {"1": "A hypodense lesion in the liver.", "2": "Renal cyst."})
    write_nifti(raw / "s0001" / "ct.nii.gz", chest_hu(4))
    write_nifti(raw / "s0001" / "mask.nii.gz", mask[:, :20], dtype=np.uint8)  # another grid: reported
    write_json(raw / "s0001" / "text.json", {"1": "Lesion."})
    cols = ["Image", "Mask", "Mask_ID", "Question_Type", "Question", "Answer"]
    write_csv(
        raw.parent / "M3D_RefSeg_train.csv",
        cols,
        [
            [
                "M3D_RefSeg/s0000/ct.nii.gz",
                "M3D_RefSeg/s0000/mask.nii.gz",
                "1",
                "0",
                "Where is the liver lesion?",
                "It is <SEG>.",
            ],
            [
                "M3D_RefSeg/s0000/ct.nii.gz",
                "M3D_RefSeg/s0000/mask.nii.gz",
                "2",
                "1",
                "What could cause flank pain?",
                "A renal cyst, [SEG].",
            ],
        ],
    )
    write_csv(
        raw.parent / "M3D_RefSeg_test.csv",
        cols,
        [["M3D_RefSeg/s0001/ct.nii.gz", "M3D_RefSeg/s0001/mask.nii.gz", "1", "0", "Segment the lesion.", "[SEG]"]],
    )
    out = tmp_path / "out"
    summary = PREPARER.prepare(raw.parent, out, **OPTS)
    it = items_by_id(out)["s0000"]
    assert it["_split"] == "train" and sorted(it["masks"]) == ["region_1", "region_2"]
    exp = expected_image("m3d_refseg", hu, (3.0, 1.5, 1.5), masks={"region_1": mask == 1, "region_2": mask == 2})
    np.testing.assert_allclose(np.load(out / it["image"]).astype(np.float32), exp["image"], atol=1e-3)
    np.testing.assert_array_equal(np.load(out / it["masks"]["region_2"]), exp["masks"]["region_2"])
    refer = {(r["text"], r["target"], r.get("type"), r.get("answer")) for r in it["refer"]}
    assert ("Renal cyst.", "region_2", "description", None) in refer
    assert ("Where is the liver lesion?", "region_1", "description", "It is [SEG].") in refer
    assert ("What could cause flank pain?", "region_2", "reasoning", "A renal cyst, [SEG].") in refer
    errs = errors(out)
    assert len(errs) == 1 and "s0001" in errs[0]["file"] and "grid differs" in errs[0]["error"]
    assert summary.validation.ok
