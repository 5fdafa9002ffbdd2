"""CT-RATE preparer end to end on a tiny fake raw copy (exact file names, CSV columns), via ``lamed prepare``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_fakes import (
    SIZE,
    chest_hu,
    corrupt_gz,
    errors,
    expected_image,
    items_by_id,
    manifest,
    tiny_open_clip_folder,
    write_csv,
    write_nifti,
)

LABELS = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
META_SPACING = (2.5, 0.8, 0.8)  # what the metadata CSV says (the original headers are wrong)


def _vol_path(root: Path, name: str, fixed: bool) -> Path:
    split, p, s, _ = name.split("_")
    folder = f"{split}_fixed" if fixed else split
    return root / "dataset" / folder / f"{split}_{p}" / f"{split}_{p}_{s}" / f"{name}.nii.gz"


@pytest.fixture(scope="module")
def ct_rate_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_rate_raw")
    hu = {}
    # Original volumes: raw = HU + 1024, no scaling in the header, header spacing 1 mm (wrong).
    for k, name in enumerate(("train_1_a_1", "train_1_a_2", "train_4_b_1")):
        hu[name] = chest_hu(k)
        write_nifti(_vol_path(root, name, False), hu[name] + 1024, spacing=(1.0, 1.0, 1.0))
    # Corrected volumes (*_fixed): HU and spacing in the header; rescaling them again would be wrong.
    for k, name in enumerate(("train_2_a_1", "valid_1_a_1"), start=5):
        hu[name] = chest_hu(k)
        write_nifti(_vol_path(root, name, True), hu[name], spacing=(3.0, 1.5, 1.5))
    corrupt_gz(_vol_path(root, "train_3_a_1", False))
    names = ["train_1_a_1", "train_1_a_2", "train_2_a_1", "train_3_a_1", "train_4_b_1", "train_9_a_1"]
    d = root / "dataset"
    report_cols = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
    write_csv(
        d / "radiology_text_reports" / "train_reports.csv",
        report_cols,
        [[f"{n}.nii.gz", "Cough.", "Non-contrast.", f"Findings of {n}.\nNo effusion.", "Normal study."] for n in names],
    )
    write_csv(
        d / "radiology_text_reports" / "validation_reports.csv",
        report_cols,
        [["valid_1_a_1.nii.gz", "", "", "Emphysema in both lungs.", "Emphysema."]],
    )
    vec = {n: [int((i + j) % 5 == 0) for j in range(18)] for i, n in enumerate(names + ["valid_1_a_1"])}
    write_csv(
        d / "multi_abnormality_labels" / "train_predicted_labels.csv",
        ["VolumeName", *LABELS],
        [[f"{n}.nii.gz", *vec[n]] for n in names],
    )
    write_csv(
        d / "multi_abnormality_labels" / "valid_predicted_labels.csv",
        ["VolumeName", *LABELS],
        [["valid_1_a_1.nii.gz", *vec["valid_1_a_1"]]],
    )
    meta_cols = ["VolumeName", "Manufacturer", "RescaleIntercept", "RescaleSlope", "XYSpacing", "ZSpacing"]
    write_csv(
        d / "metadata" / "train_metadata.csv",
        meta_cols,
        [[f"{n}.nii.gz", "X", "-1024", "1", "[0.8, 0.8]", "2.5"] for n in names],
    )
    write_csv(
        d / "metadata" / "validation_metadata.csv",
        meta_cols,
        [["valid_1_a_1.nii.gz", "X", "-1024", "1", "[0.8, 0.8]", "2.5"]],
    )
    return root, hu, vec


@pytest.fixture(scope="module")
def prepared(ct_rate_raw, tmp_path_factory):
    from LaMed.cli import main

    root, hu, vec = ct_rate_raw
    out = tmp_path_factory.mktemp("ct_rate_out")
    model = tiny_open_clip_folder(tmp_path_factory.mktemp("clip"), image_size=48)
    rc = main(
        [
            "prepare",
            "ct_rate",
            str(root),
            "--out",
            str(out),
            *SIZE,
            "--no-progress",
            "--slice-size",
            "48",
            "--slice-model",
            str(model),
        ]
    )
    return root, out, hu, vec, model, rc


def test_ct_rate_manifests_images_and_errors(prepared):
    root, out, hu, vec, _, rc = prepared
    assert rc == 3  # one corrupt volume and one report without a volume: reported, the rest prepared
    items = items_by_id(out)
    assert sorted(items) == ["train_1_a_1", "train_1_a_2", "train_2_a_1", "train_4_b_1", "valid_1_a_1"]
    # CT-RATE's valid set is the test split; the two reconstructions of patient 1 share a split.
    assert items["valid_1_a_1"]["_split"] == "test"
    assert items["train_1_a_1"]["_split"] == items["train_1_a_2"]["_split"]
    assert {items[n]["_split"] for n in ("train_1_a_1", "train_2_a_1", "train_4_b_1")} <= {"train", "validation"}
    # Original volume: metadata rescale (raw - 1024) and metadata spacing; corrected volume: header as is.
    for name, spacing in (("train_1_a_1", META_SPACING), ("train_2_a_1", (3.0, 1.5, 1.5))):
        exp = expected_image("hsenet", hu[name], spacing)
        img = np.load(out / items[name]["image"])
        assert img.shape == (1, 8, 32, 32) and img.dtype == np.float16
        np.testing.assert_allclose(img.astype(np.float32), exp["image"], atol=1e-3)
        assert items[name]["crop"] == list(exp["crop"])
        assert items[name]["source_spacing"] == pytest.approx(spacing)
    it = items["train_4_b_1"]
    assert it["text"] == "Findings of train_4_b_1. No effusion."  # newline collapsed, findings only
    assert it["impression"] == "Normal study."
    assert it["label_vector"] == vec["train_4_b_1"]
    assert it["labels"] == [n for n, v in zip(LABELS, vec["train_4_b_1"]) if v]
    assert manifest(out, "train")["label_names"] == list(LABELS)
    errs = {Path(e["file"]).name: e["error"] for e in errors(out)}
    assert "train_3_a_1.nii.gz" in errs and "train_3_a_1" in errs["train_3_a_1.nii.gz"]
    assert "not found" in errs["train_9_a_1.nii.gz"]
    assert (out / "errors.txt").read_text(encoding="utf-8").count("\n") == len(errs)
    info = json.loads((out / "meta" / "dataset.json").read_text(encoding="utf-8"))
    assert info["validation_ok"] and sum(info["counts"].values()) == 5


def test_ct_rate_slice_branch_and_features(prepared):
    import open_clip
    import torch

    from LaMed.data.transforms import apply_preset

    _, out, hu, _, model_dir, _ = prepared
    it = items_by_id(out)["valid_1_a_1"]
    slices = np.load(out / it["slices"])
    # 24 px at 1.5 mm resampled to 0.75 mm is 48 px: stored as the preset made them, in uint8.
    assert slices.shape == (32, 48, 48) and slices.dtype == np.uint8
    ref_slices = apply_preset("hsenet_slices", hu["valid_1_a_1"], (3.0, 1.5, 1.5))["image"][0]
    assert np.abs(slices.astype(int) - np.rint(ref_slices * 255).astype(int)).max() <= 1
    varying = [s for s in slices if s.max() > s.min()]
    assert varying and all(s.min() == 0 and s.max() == 255 for s in varying)  # min-max per slice
    feats = np.load(out / it["slice_features"])
    # Reference: the same tiny CLIP rebuilt from its files, its image tower on the normalised slices.
    cfg = json.loads((model_dir / "open_clip_config.json").read_text(encoding="utf-8"))
    model = open_clip.CLIP(**cfg["model_cfg"])
    model.load_state_dict(torch.load(model_dir / "open_clip_pytorch_model.bin"))
    x = torch.from_numpy(slices.astype(np.float32) / 255.0)[:, None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        ref = model.visual((x - 0.5) / 0.25).numpy()
    assert feats.shape == (32, 24) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, ref, atol=1e-5)


def test_ct_rate_rerun_skips_and_refreshes_metadata(prepared):
    from Data.ct_rate import PREPARER

    root, out, _, _, model_dir, _ = prepared
    opts = dict(size=[8, 32, 32], no_progress=True, slice_size=48, slice_model=str(model_dir))
    img = out / "images" / "train_4_b_1.npy"
    feat = out / "slice_features" / "train_4_b_1.npy"
    stamps = (img.stat().st_mtime_ns, feat.stat().st_mtime_ns)
    summary = PREPARER.prepare(root, out, **opts)
    assert (summary.written, summary.skipped) == (0, 5)
    # A corrected report is picked up without reprocessing any volume.
    rep = root / "dataset" / "radiology_text_reports" / "train_reports.csv"
    text = rep.read_text(encoding="utf-8").replace("Findings of train_4_b_1.", "Corrected findings.")
    rep.write_text(text, encoding="utf-8")
    summary = PREPARER.prepare(root, out, **opts)
    assert (summary.written, summary.skipped) == (0, 5)
    assert items_by_id(out)["train_4_b_1"]["text"] == "Corrected findings. No effusion."
    assert (img.stat().st_mtime_ns, feat.stat().st_mtime_ns) == stamps
    assert summary.validation.ok


def test_ct_rate_limit_and_bad_options(ct_rate_raw, tmp_path):
    from Data.ct_rate import PREPARER

    root = ct_rate_raw[0]
    summary = PREPARER.prepare(root, tmp_path / "lim", size=[8, 32, 32], no_progress=True, no_slices=True, limit=1)
    assert all(v <= 1 for v in summary.counts.values()) and summary.counts.get("test") == 1
    assert not (tmp_path / "lim" / "slices").exists()
    with pytest.raises(KeyError, match="preset"):
        PREPARER.prepare(root, tmp_path / "bad", preset="no_such_preset")
    from Data.common import PrepareError

    with pytest.raises(PrepareError, match="report CSV"):
        PREPARER.prepare(tmp_path / "lim" / "images", tmp_path / "bad2")


def test_ct_rate_labels_reach_zero_shot_evaluation(prepared, tmp_path):
    """The 18 CSV columns, through the manifest, are the ground truth of ``Bench.eval_classify`` (prompt set ct_rate)."""
    from Bench.eval_classify import evaluate_classify

    _, out, _, vec, _, _ = prepared
    ids = [it["id"] for it in manifest(out, "train")["items"]]
    rng = np.random.default_rng(0)
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"id": i, "findings": {n: {"probability": float(rng.random())} for n in LABELS}}) + "\n"
            for i in ids
        )
    )
    summary, rows = evaluate_classify(str(preds), str(out / "train.json"), prompt_set="ct_rate", n_boot=0)
    assert {(r["id"], r["finding"]): r["label"] for r in rows} == {
        (i, n): vec[i][k] for i in ids for k, n in enumerate(LABELS)
    }
    assert summary["per_class"]["Medical material"]["positives"] == sum(vec[i][0] for i in ids)
