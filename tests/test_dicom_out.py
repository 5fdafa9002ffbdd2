"""DICOM out: a DICOM Segmentation and a Structured Report for a DICOM series input.

The test writes its own CT series (pydicom, one file a slice, axial, LPS-ordered like a scanner's)
from a real volume of ``../shared/data`` and segments it with TotalSegmentator's own labels (so the
masks are real organs). The SEG is read back with pydicom and checked against SimpleITK's reading of
the source series and of LaMed's NIfTI output (independent geometry); ``dciodvfy`` (Debian's
dicom3tools) validates it when installed.
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dicom_series import write_ct_series

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    if not (SHARED / "ct_abdomen.nii.gz").is_file():
        pytest.skip("shared data not available")
    from LaMed.data.io import load_volume

    src = load_volume(SHARED / "ct_abdomen.nii.gz")
    labels = load_volume(SHARED / "ct_abdomen_seg.nii.gz").array
    names = {v: int(k) for k, v in json.loads((SHARED / "labels.json").read_text())["total"].items()}
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_ct_series(folder, src)
    vol = load_volume(folder)
    assert vol.shape == src.shape and np.array_equal(vol.array, src.array.astype(vol.array.dtype))
    return folder, vol, labels, names


def _prediction(labels, names, prompts, absent=()):
    from LaMed.inference.segment import SegPrediction

    masks = {p: (labels == names[p]) if p not in absent else np.zeros(labels.shape, bool) for p in prompts}
    label_map = np.zeros(labels.shape, np.uint8)
    for i, p in enumerate(prompts):
        label_map[masks[p]] = i + 1
    probs = np.stack([m.astype(np.float16) for m in masks.values()])
    return SegPrediction(
        list(prompts),
        probs,
        masks,
        label_map,
        {i + 1: p for i, p in enumerate(prompts)},
        [],
        {p: float(p not in absent) for p in prompts},
        {p: p not in absent for p in prompts},
    )


def test_dicom_seg_frames_land_on_source_slices(case, tmp_path):
    from LaMed.inference.dicom_out import read_series_datasets, write_dicom_seg
    from LaMed.inference.outputs import write_segmentation

    folder, vol, labels, names = case
    prompts = ["liver", "spleen", "kidney_left", "gallbladder"]
    pred = _prediction(labels, names, prompts, absent=("gallbladder",))
    assert all(pred.masks[p].any() for p in prompts[:3])
    datasets = read_series_datasets(folder)
    out = write_dicom_seg(pred, vol, datasets, tmp_path / "seg.dcm", model_name="tiny")
    nifti = write_segmentation(pred, vol, tmp_path / "nii")["labels"]

    seg = pydicom.dcmread(out)
    src = {ds.SOPInstanceUID: ds for ds in datasets}
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID and seg.PatientID == "LAMED-T1"
    segs = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [segs[i + 1].SegmentLabel for i in range(4)] == prompts
    liver = segs[1].SegmentedPropertyTypeCodeSequence[0]
    assert (liver.CodeValue, liver.CodingSchemeDesignator) == ("10200004", "SCT")
    assert segs[3].SegmentedPropertyTypeCodeSequence[0].CodeValue == "18639004"  # left kidney
    assert segs[1].SegmentAlgorithmType == "AUTOMATIC" and segs[1].SegmentAlgorithmName == "tiny"

    # the NIfTI output and the source series, both read by SimpleITK: the reference geometry
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    lab = sitk.ReadImage(str(nifti))
    assert np.allclose(lab.GetOrigin(), ref.GetOrigin()) and np.allclose(lab.GetSpacing(), ref.GetSpacing())
    lab_arr = sitk.GetArrayFromImage(lab)  # (z, y, x) on the series' grid
    frames = seg.pixel_array.reshape((-1,) + lab_arr.shape[1:])
    seen = set()
    for f, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(ipp, [float(v) for v in src[uid].ImagePositionPatient])
        k = ref.TransformPhysicalPointToIndex(ipp)[2]
        assert np.array_equal(frames[f] > 0, lab_arr[k] == number), (number, k)
        seen.add((number, k))
    # every slice holding a structure has its frame; the absent gallbladder has none
    for number in (1, 2, 3):
        slices = set(np.nonzero((lab_arr == number).any(axis=(1, 2)))[0].tolist())
        assert {k for n, k in seen if n == number} == slices
    assert not any(n == 4 for n, _ in seen)


def test_dicom_sr_references_the_study(case, tmp_path):
    from LaMed.inference.dicom_out import read_series_datasets, write_dicom_sr

    folder, _, _, _ = case
    datasets = read_series_datasets(folder)
    out = write_dicom_sr([("Is there a liver lesion?", "No focal liver lesion.")], datasets, tmp_path / "sr.dcm")
    sr = pydicom.dcmread(out)
    assert sr.StudyInstanceUID == datasets[0].StudyInstanceUID and sr.Modality == "SR"
    texts = [item.TextValue for item in sr.ContentSequence]
    assert texts == ["Is there a liver lesion?", "No focal liver lesion."]
    refs = {
        r.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    }
    assert refs == {ds.SOPInstanceUID for ds in datasets}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dciodvfy_accepts_seg_and_sr(case, tmp_path):
    from LaMed.inference.dicom_out import read_series_datasets, write_dicom_seg, write_dicom_sr

    folder, vol, labels, names = case
    datasets = read_series_datasets(folder)
    pred = _prediction(labels, names, ["liver", "kidney_right"])
    for path in (
        write_dicom_seg(pred, vol, datasets, tmp_path / "seg.dcm"),
        write_dicom_sr([("Describe the findings.", "Normal liver.")], datasets, tmp_path / "sr.dcm"),
    ):
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, "\n".join(errors)


def test_refuses_a_non_dicom_input(tmp_path):
    from LaMed.inference.dicom_out import read_series_datasets

    with pytest.raises(ValueError, match="not a DICOM series folder"):
        read_series_datasets(tmp_path / "ct.nii.gz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="no DICOM image series"):
        read_series_datasets(tmp_path)


def test_lamed_predict_format_dicom_seg(case, tmp_path, capsys):
    import torch

    from LaMed.cli import main
    from LaMed.models.checkpoint_files import resolve_tokenizer
    from LaMed.models.segmentation import create_seg_model

    folder, vol, _, _ = case
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    model = create_seg_model("segvol_tiny")
    model.config.threshold = 0.2  # random weights: low enough that something is segmented
    model.save_pretrained(model_dir)
    resolve_tokenizer("minilm").save_pretrained(model_dir)
    out = tmp_path / "pred"
    rc = main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--image",
            str(folder),
            "--out",
            str(out),
            "--prompt",
            "liver",
            "--prompt",
            "spleen",
            "--no-zoom-in",
            "--format",
            "dicom-seg",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    seg = pydicom.dcmread(out / "series_seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"]
    record = json.loads((out / "series_seg.json").read_text())
    assert [s["prompt"] for s in record["structures"]] == ["liver", "spleen"]
    assert all(isinstance(s["present"], bool) for s in record["structures"])
    # a NIfTI input cannot be given back as DICOM: refused before the model runs
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--image",
                str(SHARED / "ct_abdomen.nii.gz"),
                "--out",
                str(tmp_path / "x"),
                "--prompt",
                "liver",
                "--format",
                "dicom-seg",
            ]
        )
        != 0
    )
    assert "not a DICOM series folder" in capsys.readouterr().err
