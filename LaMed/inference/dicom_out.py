"""DICOM out: masks as one DICOM Segmentation, answers as a DICOM Structured Report.

For a DICOM series input, ``lamed predict --format dicom-seg`` writes the masks of all prompts as
one Segmentation object (BINARY, one segment per prompt; highdicom, https://github.com/ImagingDataCommons/highdicom)
that references the source series: same Study, Frame of Reference and patient, one frame per source
slice that holds the segment, each frame pointing at its source image (Derivation Image / Source
Image references, Plane Position = the slice's Image Position). Segments carry their label, the
SNOMED CT code of the structure where one is listed in :data:`SNOMED_CT` (category "Anatomical
Structure"; otherwise a LaMed-local code, scheme ``99LAMED``), the algorithm (AUTOMATIC,
family "Artificial Intelligence", the model's name and LaMed's version). A prompt reported absent
(``present: false``) keeps its segment, with no frames.

Text models write their answers (report / question-answer pairs) as a Comprehensive SR text
document whose evidence is the source series (so it references the study and each image).

Geometry: every pixel of every source slice is mapped through its own Image Position / Orientation
and Pixel Spacing into the canonical grid of the loaded ``Volume`` (``Volume.affine``); a slice
whose pixels do not land on voxel centres of that grid (a different series, an oblique resampling)
is refused, so a frame can never be misplaced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from LaMed.utils.atomic import atomic_path

__all__ = [
    "SNOMED_CT",
    "read_series_datasets",
    "frames_for_source",
    "write_dicom_seg",
    "write_dicom_sr",
    "structure_code",
]

# SNOMED CT body-structure codes (concept id, display name) for the organs of LaMed's phantoms and
# of TotalSegmentator's classes (names normalised: lower case, "_" and "-" as spaces, either word order).
SNOMED_CT: dict[str, tuple[str, str]] = {
    "liver": ("10200004", "Liver"),
    "spleen": ("78961009", "Spleen"),
    "kidney": ("64033007", "Kidney"),
    "kidney left": ("18639004", "Left kidney"),
    "kidney right": ("9846003", "Right kidney"),
    "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"),
    "gallbladder": ("28231008", "Gallbladder"),
    "aorta": ("15825003", "Aorta"),
    "inferior vena cava": ("64131007", "Inferior vena cava"),
    "esophagus": ("32849002", "Esophagus"),
    "duodenum": ("38848004", "Duodenum"),
    "colon": ("71854001", "Colon"),
    "small bowel": ("30315005", "Small intestine"),
    "small intestine": ("30315005", "Small intestine"),
    "urinary bladder": ("89837001", "Urinary bladder"),
    "bladder": ("89837001", "Urinary bladder"),
    "prostate": ("41216001", "Prostate"),
    "heart": ("80891009", "Heart"),
    "lung": ("39607008", "Lung"),
    "lung left": ("44029006", "Left lung"),
    "lung right": ("3341006", "Right lung"),
    "trachea": ("44567001", "Trachea"),
    "brain": ("12738006", "Brain"),
    "portal vein": ("32764006", "Portal vein"),
}


def _normalise(name: str) -> str:
    words = re.sub(r"[_\-]+", " ", name.strip().lower()).split()
    side = [w for w in words if w in ("left", "right")]
    rest = [w for w in words if w not in ("left", "right")]
    return " ".join(rest + side)  # "left kidney" and "kidney_left" -> "kidney left"


def structure_code(prompt: str):
    """``(category, type)`` coded concepts of a prompt: SNOMED CT where listed, else a local code."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    hit = SNOMED_CT.get(_normalise(prompt))
    if hit is not None:
        return codes.SCT.AnatomicalStructure, CodedConcept(hit[0], "SCT", hit[1])
    local = re.sub(r"[^A-Za-z0-9]+", "_", prompt.strip())[:16].upper() or "PROMPT"
    # 99-prefixed scheme designators are private by the standard's rule (PS3.16 8.2)
    return codes.SCT.AnatomicalStructure, CodedConcept(local, "99LAMED", prompt.strip()[:64])


def read_series_datasets(folder: str | Path, series_uid: str | None = None) -> list:
    """The instances (with pixels) of one DICOM series in ``folder``; several series need ``series_uid``."""
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--format dicom-seg: {folder} is not a DICOM series folder (DICOM out needs a DICOM input)")
    found: dict[str, list] = {}
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # not DICOM (a stray file): the reader of the volume decided what the series is
            continue
        if "SeriesInstanceUID" in ds and "ImagePositionPatient" in ds:
            found.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not found:
        raise ValueError(f"--format dicom-seg: {folder} holds no DICOM image series")
    if series_uid is None and len(found) > 1:
        raise ValueError(f"{folder}: several DICOM series ({', '.join(sorted(found))}); choose one with --series-uid")
    uid = series_uid or next(iter(found))
    if uid not in found:
        raise ValueError(f"--series-uid {uid}: not in {folder} (series: {', '.join(sorted(found))})")
    return found[uid]


def frames_for_source(mask: np.ndarray, volume, datasets: Sequence) -> np.ndarray:
    """``(n_instances, rows, cols)`` bool: ``mask`` (canonical ``(D, H, W)`` of ``volume``) sampled at
    every pixel of every source instance, through the instance's own geometry."""
    inv = np.linalg.inv(np.asarray(volume.affine, np.float64))
    out = []
    for ds in datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        ipp = np.asarray(ds.ImagePositionPatient, np.float64)
        iop = np.asarray(ds.ImageOrientationPatient, np.float64)
        dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing (between rows), column spacing
        j, k = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = ipp[:, None, None] + iop[:3, None, None] * (dc * k) + iop[3:, None, None] * (dr * j)
        ras = np.stack([-lps[0], -lps[1], lps[2], np.ones_like(lps[0])])
        idx = np.tensordot(inv, ras, axes=1)[:3]
        near = np.rint(idx)
        if np.abs(idx - near).max() > 1e-2:
            raise ValueError(
                f"{getattr(ds, 'filename', 'instance')}: its pixels do not fall on the voxel grid of the "
                "segmented volume (another series, or an oblique resampling)"
            )
        near = near.astype(np.int64)
        if (near.min(axis=(1, 2)) < 0).any() or (near.max(axis=(1, 2)) >= np.asarray(mask.shape)).any():
            raise ValueError(f"{getattr(ds, 'filename', 'instance')}: lies outside the segmented volume")
        out.append(mask[near[0], near[1], near[2]])
    return np.stack(out).astype(bool)


def _highdicom():
    try:
        import highdicom
    except ImportError:
        raise ValueError("--format dicom-seg needs the highdicom package (pip install -r requirements.txt)") from None
    return highdicom


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lamed")
    except Exception:  # running from a checkout that is not installed
        return "dev"


def write_dicom_seg(pred, volume, datasets: Sequence, path: str | Path, model_name: str = "LaMed") -> Path:
    """One DICOM Segmentation (BINARY) of a ``SegPrediction`` of ``volume`` (read from ``datasets``)."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    if not datasets:
        raise ValueError("write_dicom_seg: no source instances")
    algo = hd.AlgorithmIdentificationSequence(
        name=str(model_name)[:64], family=codes.cid7162.ArtificialIntelligence, version=_version()
    )
    descriptions, planes = [], []
    for number, prompt in enumerate(pred.prompts, start=1):
        category, kind = structure_code(prompt)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=prompt[:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
            )
        )
        planes.append(frames_for_source(pred.masks[prompt], volume, datasets))
    pixels = np.stack(planes, axis=-1).astype(np.uint8)  # (frames, rows, cols, segments)
    first = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=list(datasets),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="LaMed",
        manufacturer_model_name=str(model_name)[:64],
        software_versions=_version(),
        device_serial_number="0",
        series_description=f"LaMed segmentation ({len(pred.prompts)} structures)"[:64],
        omit_empty_frames=bool(pixels.any()),
    )
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return path


def write_dicom_sr(
    answers: Sequence[tuple[str, str]], datasets: Sequence, path: str | Path, model_name: str = "LaMed"
) -> Path:
    """A Comprehensive SR text document: one (question, answer) pair after another under an
    "Imaging report" container; the source series is its evidence (references the study)."""
    hd = _highdicom()
    from highdicom.sr import CodedConcept, ContainerContentItem, RelationshipTypeValues, TextContentItem
    from pydicom.sequence import Sequence as DicomSequence

    items = []
    for question, answer in answers:
        items.append(
            TextContentItem(
                name=CodedConcept("121060", "DCM", "History"),
                value=str(question)[:1024] or "-",
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
        items.append(
            TextContentItem(
                name=CodedConcept("121071", "DCM", "Finding"),
                value=str(answer) or "-",
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
    root = ContainerContentItem(name=CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = DicomSequence(items)
    first = datasets[0]
    sr = hd.sr.ComprehensiveSR(
        evidence=list(datasets),
        content=root,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="LaMed",
        series_description=f"{model_name} answers"[:64],
    )
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        sr.save_as(tmp)
    return path
