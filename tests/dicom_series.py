"""Test helper: write a canonical volume as a scanner does, one axial DICOM file a slice (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom_series(
    hu: np.ndarray, spacing, folder: Path, origin=(5.0, -7.0, 11.0), uid: str = "1.2.826.0.1.3680043.2.1125.77"
) -> Path:
    """``hu``: canonical ``(D, H, W)`` intensities; ``spacing``: ``(D, H, W)`` mm. The series is LPS-ordered
    with an identity direction (array ``(D, H, W)`` = ``(z, y, x)``), its geometry in the tags."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    sd, sh, sw = spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(hu.astype(np.int16)))
    img.SetSpacing((sw, sh, sd))
    img.SetOrigin(tuple(origin))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": f"{uid}.0",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{sd:.4f}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def write_ct_series(folder: Path, volume) -> list:
    """Axial CT Image Storage instances of a canonical (S, P, L) ``Volume`` with every attribute a
    DICOM Segmentation / SR needs of its source (patient, study, frame of reference): rows run +P,
    columns +L; files named against the slice order. Returns the paths."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    arr = volume.array.astype(np.int16)
    paths = []
    for d in range(arr.shape[0]):
        ras = volume.affine @ np.array([d, 0, 0, 1.0])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "LAMED-T1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.PositionReferenceIndicator = "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = "CT", 3, d + 1, 1
        ds.Manufacturer, ds.KVP = "LaMed test", 120
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(-ras[0]), float(-ras[1]), float(ras[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(volume.spacing[1]), float(volume.spacing[2])]
        ds.SliceThickness = float(volume.spacing[0])
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = arr[d].tobytes()
        # files named against the slice order, so that nothing may rely on file names
        path = folder / f"img{arr.shape[0] - d:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
