"""BIMCV-R, RadGenome-ChestCT, FLARE 2025 Task 5 and CVPR-BiomedSegFM preparers on tiny fake raw copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_data_fakes import (
    chest_hu,
    corrupt_gz,
    errors,
    expected_image,
    items_by_id,
    manifest,
    write_csv,
    write_json,
    write_nifti,
)

OPTS = dict(size=[8, 32, 32], no_progress=True)


# --------------------------------------------------------------------------- BIMCV-R


def test_bimcv_r_reports_labels_mismatch_and_patient_split(tmp_path):
    from Data.bimcv_r import PREPARER, parse_labels

    raw = tmp_path / "raw"
    names = {
        "a": "sub-S001_ses-E001_run-1_bp-chest_ct.nii.gz",
        "b": "sub-S001_ses-E002_run-1_bp-chest_ct.nii.gz",
        "c": "sub-S002_ses-E003_acq-1_run-2_bp-chest_ct.nii.gz",
        "d": "sub-S003_ses-E004_run-1_bp-chest_ct.nii.gz",
    }
    hu = {k: chest_hu(i) for i, k in enumerate(names)}
    for k in ("a", "b", "c"):
        write_nifti(raw / "CT1" / "ct" / names[k], hu[k])
    corrupt_gz(raw / "CT2" / "ct" / names["d"])
    cols = ["PatientID", "ReportID", "Report", "Labels", "Localizations", "Report_en", "ct_path"]
    rows = [
        [
            "sub-S001",
            "ses-E001",
            "derrame pleural.",
            "['', ' pleural effusion', 'normal']",
            "[]",
            "Pleural effusion.",
            f"/raid/x/sub-S001/ses-E001/mod-rx/{names['a']}",
        ],
        ["sub-S001", "ses-E002", "nodulo.", "['nodule', 'exclude']", "[]", "A nodule.", f"/raid/{names['b']}"],
        ["sub-S009", "ses-E999", "otro.", "['pneumonia']", "[]", "Someone else.", f"/raid/{names['c']}"],
        ["sub-S003", "ses-E004", "x.", "[]", "[]", "Unreadable.", f"/raid/{names['d']}"],
    ]
    write_csv(raw / "BIMCV-R.csv", cols, rows)
    out = tmp_path / "out"
    summary = PREPARER.prepare(raw, out, no_slices=True, **OPTS)
    items = items_by_id(out)
    a, b = items["sub-S001_ses-E001_run-1_bp-chest_ct"], items["sub-S001_ses-E002_run-1_bp-chest_ct"]
    assert (
        a["text"] == "Pleural effusion."
        and a["report_es"] == "derrame pleural."
        and a["labels"] == ["pleural effusion"]
    )
    assert b["labels"] == ["nodule"] and a["_split"] == b["_split"]  # one patient, one split
    exp = expected_image("hsenet", hu["a"], (3.0, 1.5, 1.5))
    np.testing.assert_allclose(np.load(out / a["image"]).astype(np.float32), exp["image"], atol=1e-3)
    msgs = {Path(e["file"]).name: e["error"] for e in errors(out)}
    assert "does not belong to this volume" in msgs[names["c"]]  # report of another patient: left out
    assert names["d"] in msgs and summary.failed == 2 and len(items) == 2
    assert parse_labels("[' ground glass pattern', '', 'Normal']") == ["ground glass pattern"]
    kept = PREPARER.prepare(raw, tmp_path / "kept", no_slices=True, keep_mismatched=True, **OPTS)
    assert sum(kept.counts.values()) == 3


# --------------------------------------------------------------------------- RadGenome


def test_radgenome_region_reports_and_vqa(tmp_path):
    from Data.radgenome import PREPARER
    from LaMed.data.prompts import RADGENOME_TEMPLATES

    raw = tmp_path / "raw" / "dataset"
    hu = chest_hu(7)
    write_nifti(raw / "valid_preprocessed" / "valid_1" / "valid_1a" / "valid_1_a_1.nii.gz", hu)
    write_nifti(raw / "train_preprocessed" / "train_1" / "train_1a" / "train_1_a_1.nii.gz", chest_hu(8))
    f = raw / "radgenome_files"
    for pre, v in (("validation", "valid_1_a_1.nii.gz"), ("train", "train_1_a_1.nii.gz")):
        write_csv(
            f / f"{pre}_region_report.csv",
            ["Volumename", "Anatomy", "Sentence"],
            [
                [v, "lung", "A nodule in the right upper lobe."],
                [v, "", "No acute findings elsewhere."],
                [v, "lung", "Mild emphysema."],
            ],
        )
        write_csv(
            f / f"{pre}_vqa_location.csv",
            ["Volumename", "Anatomy", "Abnormality"],
            [[v, "right lung/upper lobe", "nodule"]],
        )
        write_csv(
            f / f"{pre}_vqa_abnormality.csv", ["Volumename", "Anatomy", "Abnormality"], [[v, "lung", "emphysema"]]
        )
        write_csv(
            f / f"{pre}_vqa_presence.csv",
            ["Volumename", "Anatomy", "Finding", "Presence"],
            [[v, "heart", "cardiomegaly", "No"]],
        )
        write_csv(
            f / f"{pre}_vqa_size.csv", ["Volumename", "Anatomy", "Abnormality", "Size"], [[v, "lung", "nodule", "6 mm"]]
        )
    write_csv(
        f / "train_vqa_location.csv",
        ["Volumename", "Anatomy", "Abnormality"],
        [["train_1_a_1.nii.gz", "lung", "nodule"], ["train_5_a_1.nii.gz", "lung", "mass"]],
    )
    out = tmp_path / "out"
    summary = PREPARER.prepare(raw.parent, out, no_slices=True, **OPTS)
    it = items_by_id(out)["valid_1_a_1"]
    assert it["_split"] == "test"
    assert it["findings"] == {
        "lung": "A nodule in the right upper lobe. Mild emphysema.",
        "whole scan": "No acute findings elsewhere.",
    }
    by = {q["topic"]: q for q in it["vqa"]}
    loc = by["location"]
    assert loc["answer"] == "right lung/upper lobe" and loc["type"] == "open"
    assert loc["question"] in [t.format(abnormality="nodule") for t in RADGENOME_TEMPLATES]
    assert by["abnormality"] == {
        "question": "What abnormality is seen in the lung?",
        "answer": "emphysema",
        "type": "open",
        "topic": "abnormality",
        "anatomy": "lung",
    }
    assert by["presence"]["type"] == "yes_no" and by["presence"]["answer"] == "no"
    assert by["size"]["answer"] == "6 mm"
    msgs = [e["error"] for e in errors(out)]
    assert len(msgs) == 1 and "train_5_a_1" in errors(out)[0]["file"] and summary.failed == 1
    # Same templates on a re-run (seeded per volume), and only the asked tasks.
    loc_only = PREPARER.prepare(raw.parent, tmp_path / "loc", no_slices=True, tasks=["location"], **OPTS)
    it2 = items_by_id(tmp_path / "loc")["valid_1_a_1"]
    assert [q["topic"] for q in it2["vqa"]] == ["location"] and it2["vqa"][0]["question"] == loc["question"]
    assert loc_only.validation.ok


# --------------------------------------------------------------------------- FLARE 2025 Task 5


def test_flare25_windows_reports_and_vqa_chains(tmp_path):
    from Data.flare25 import PREPARER

    raw = tmp_path / "raw"
    hu = {"amos_0001": chest_hu(1), "train_7_a_1": chest_hu(2), "val_0001": chest_hu(3)}
    write_nifti(raw / "train" / "CT-AMOS-1290" / "amos_0001.nii.gz", hu["amos_0001"])
    write_nifti(raw / "train" / "CT-RATE-2000" / "train_7_a_1.nii.gz", hu["train_7_a_1"])
    write_nifti(raw / "validation" / "images" / "val_0001.nii.gz", hu["val_0001"])
    corrupt_gz(raw / "train" / "CT-AMOS-1290" / "amos_0002.nii.gz")
    write_json(
        raw / "train" / "CT-AMOS-Tr.json",
        [
            {
                "case_id": "amos_0001.nii.gz",
                "findings": {"liver": "Normal size.", "spleen": "Splenomegaly."},
                "global_vqa": [
                    {"question": "Which organs are abnormal?", "answer": ["spleen", "kidney"]},
                    {
                        "question": "Phase?",
                        "answer": "B",
                        "choices": {"A": "arterial", "B": "portal venous", "C": "delayed", "D": "non-contrast"},
                    },
                ],
                "local_vqa": [
                    {"id": 0, "question": "Is the spleen enlarged?", "answer": "yes", "follow_up": -1},
                    {"id": 1, "question": "How large?", "answer": "15 cm", "follow_up": 0},
                ],
            },
            {"case_id": "amos_0002.nii.gz", "findings": {"liver": "x"}},
        ],
    )
    write_json(raw / "train" / "CT-RATE-Tr.json", [{"case_id": "train_7_a_1.nii.gz", "findings": {"lungs": "Clear."}}])
    write_json(raw / "validation" / "val.json", [{"case_id": "val_0001.nii.gz", "findings": {"liver": "Cyst."}}])
    out = tmp_path / "out"
    summary = PREPARER.prepare(raw, out, **OPTS)
    items = items_by_id(out)
    amos, chest = items["amos_0001"], items["train_7_a_1"]
    assert items["val_0001"]["_split"] == "validation" and amos["_split"] == "train"
    assert (
        amos["text"] == "liver: Normal size.\nspleen: Splenomegaly." and amos["findings"]["spleen"] == "Splenomegaly."
    )
    assert (amos["preset"], chest["preset"]) == ("flare", "flare_chest")  # abdominal vs chest window
    for name, preset in (("amos_0001", "flare"), ("train_7_a_1", "flare_chest")):
        exp = expected_image(preset, hu[name], (3.0, 1.5, 1.5))
        np.testing.assert_allclose(np.load(out / items[name]["image"]).astype(np.float32), exp["image"], atol=1e-3)
    g0, g1, l0, l1 = amos["vqa"]
    assert (g0["type"], g0["answer"], g0["topic"]) == ("open", "spleen, kidney", "global")
    assert (g1["type"], g1["answer_choice"], g1["answer"]) == ("closed", "B", "portal venous")
    assert (l0["type"], l0["chain"], l1["chain"], l1["follow_up"]) == ("yes_no", 0, 0, 0)
    errs = errors(out)
    assert len(errs) == 1 and errs[0]["file"].endswith("amos_0002.nii.gz") and summary.failed == 1
    assert summary.validation.ok


# --------------------------------------------------------------------------- CVPR-BiomedSegFM


def test_biomedsegfm_npz_prompts_instances_and_validation(tmp_path):
    from Data.biomedsegfm import PREPARER

    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, size=(10, 24, 20)).astype(np.uint8)
    gts = np.zeros(imgs.shape, np.uint8)
    gts[2:7, 4:12, 3:9] = 1
    gts[3:8, 14:20, 10:16] = 3
    d = raw / "3D_train_npz_all" / "CT" / "CT_Organs"
    d.mkdir(parents=True)
    np.savez_compressed(d / "CT_Organs_case1.npz", imgs=imgs, gts=gts, spacing=np.array([0.8, 0.8, 2.5]))
    (d / "CT_Organs_case2.npz").write_bytes(b"PK\x03\x04 broken")
    di = raw / "3D_train_npz_all" / "MRI" / "Lesions"
    di.mkdir(parents=True)
    inst = np.zeros(imgs.shape, np.uint8)
    inst[1:3, 2:5, 2:5], inst[6:8, 10:14, 10:14] = 1, 2
    np.savez_compressed(di / "Lesions_case1.npz", imgs=imgs, gts=inst, spacing=np.array([1.0, 1.0, 1.0]))
    write_json(
        raw / "CVPR25_TextSegFMData_with_class.json",
        {
            "CT_Organs": {
                "1": ["Liver in abdominal CT", "the liver"],
                "2": ["Spleen"],
                "3": ["Left kidney"],
                "instance_label": 0,
            },
            "Lesions": {"1": ["Brain lesions in MRI"], "instance_label": 1},
        },
    )
    v = raw / "3D_val_npz"
    v.mkdir()
    np.savez_compressed(
        v / "val_case.npz",
        imgs=imgs,
        spacing=np.array([0.8, 0.8, 2.5]),
        text_prompts=np.array({"1": "Liver", "3": "Left kidney", "instance_label": 0}, dtype=object),
    )
    g = raw / "3D_val_gt" / "3D_val_gt_text"
    g.mkdir(parents=True)
    np.savez_compressed(g / "val_case.npz", gts=gts)
    out = tmp_path / "out"
    summary = PREPARER.prepare(raw, out, **OPTS)
    items = items_by_id(out)
    it = items["ct_organs_ct_organs_case1"]
    assert sorted(it["masks"]) == ["class_1", "class_3"] and it["modality"] == "CT"  # class 2 absent in gts
    assert {(r["text"], r["target"]) for r in it["refer"]} == {
        ("Liver in abdominal CT", "class_1"),
        ("the liver", "class_1"),
        ("Left kidney", "class_3"),
    }
    # spacing stored x, y, z -> (D, H, W) = (2.5, 0.8, 0.8); whole volume resized, no crop.
    assert it["source_spacing"] == [2.5, 0.8, 0.8] and it["crop"] == [0, 0, 0, 10, 24, 20]
    exp = expected_image("biomedsegfm", imgs, (2.5, 0.8, 0.8), masks={"class_1": gts == 1, "class_3": gts == 3})
    np.testing.assert_allclose(np.load(out / it["image"]).astype(np.float32), exp["image"], atol=1e-3)
    np.testing.assert_array_equal(np.load(out / it["masks"]["class_3"]), exp["masks"]["class_3"])
    les = items["lesions_lesions_case1"]
    assert list(les["masks"]) == ["class_1"] and les["refer"][0]["text"] == "Brain lesions in MRI"
    val = items["val_val_case"]
    assert val["_split"] == "validation" and sorted(val["masks"]) == ["class_1", "class_3"]
    errs = errors(out)
    assert len(errs) == 1 and errs[0]["file"].endswith("CT_Organs_case2.npz") and summary.failed == 1
    assert manifest(out, "train")["preset"] == "biomedsegfm" and summary.validation.ok
