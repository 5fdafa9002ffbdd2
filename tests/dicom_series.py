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
