"""Checks made before and while reading a volume, so that hostile or broken input is refused early.

* :func:`check_regular` refuses named pipes, sockets and devices (reading a FIFO blocks forever).
* :func:`max_voxels` / :func:`check_voxels` bound the size a header may claim before anything is
  allocated (a 78-byte ``.nii.gz`` can declare 2048^3 voxels; a 2 MB gzip can inflate to 2 GiB of
  zeros). The limit is ``DEFAULT_MAX_VOXELS`` (512 x 512 x 2048), or the ``LAMED_MAX_VOXELS``
  environment variable, or the ``max_voxels`` argument of :func:`LaMed.data.io.load_volume`.
* :func:`find_volumes` is the one discovery rule for a folder of volumes (``lamed prepare volumes``
  and ``lamed predict --batch``): volume files by extension, and folders holding DICOM files
  (``.dcm`` or extension-less files with the ``DICM`` preamble).
* :func:`check_slice_positions` verifies a DICOM series' slice geometry (one orientation, no
  duplicated position, uniform spacing along the slice normal, no in-plane shift) from the
  ImagePositionPatient / ImageOrientationPatient of every file; ITK only warns on stderr and reads
  such a series onto a wrong uniform grid.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "max_voxels",
    "check_voxels",
    "check_regular",
    "find_volumes",
    "is_dicom_file",
    "check_slice_positions",
    "resample_slices",
    "VOLUME_SUFFIXES",
]

DEFAULT_MAX_VOXELS = 512 * 512 * 2048
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz")


def _error(path, problem):
    from LaMed.data.io import VolumeError

    return VolumeError(path, problem)


def max_voxels(override: int | None = None) -> int:
    """The voxel limit in force: ``override``, else ``$LAMED_MAX_VOXELS``, else ``DEFAULT_MAX_VOXELS``."""
    if override is not None:
        value, where = override, "max_voxels"
    else:
        env = os.environ.get("LAMED_MAX_VOXELS")
        if not env:
            return DEFAULT_MAX_VOXELS
        value, where = env, "LAMED_MAX_VOXELS"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a positive whole number of voxels, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{where} must be a positive whole number of voxels, got {value!r}")
    return n


def check_voxels(shape: Sequence[int], path, limit: int | None = None) -> int:
    """Refuse a declared ``shape`` above the voxel limit (before any voxel is read); returns the count."""
    n = 1
    for s in shape:
        n *= int(s)
    lim = max_voxels(limit)
    if n > lim:
        raise _error(
            path,
            f"declares {'x'.join(str(int(s)) for s in shape)} = {n:,} voxels, above the limit of "
            f"{lim:,} (set LAMED_MAX_VOXELS or max_voxels to read larger volumes)",
        )
    return n


def check_regular(path: Path) -> None:
    """Refuse anything that is neither a regular file nor a folder (named pipe, socket, device)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _error(path, f"cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise _error(path, f"is {kind}, not a regular file; refusing to read it (it could block forever)")


def is_dicom_file(p: Path) -> bool:
    """``.dcm`` files, and extension-less regular files with the ``DICM`` preamble at byte 128."""
    name = p.name.lower()
    if name.endswith(".dcm"):
        return True
    if p.suffix or not p.is_file():  # never open a FIFO / device: that can block
        return False
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def find_volumes(src, recursive: bool = True) -> list[Path]:
    """Volumes under ``src`` (sorted): NIfTI / NRRD / MHA / MHD / npy / npz files, and each folder
    holding DICOM files (:func:`is_dicom_file`), which is one series and is not searched further.

    ``recursive=False`` looks only at ``src``'s own files and its direct sub-folders (as DICOM
    series). ``src`` itself is a series when its own files are DICOM. Hidden entries are ignored;
    named pipes and other non-regular files are listed so that reading refuses them by name.
    """
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: input folder not found")
    found: list[Path] = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = sorted(f for f in files if not f.startswith("."))
        rootp = Path(root)
        dicom = any(is_dicom_file(rootp / f) for f in files[:50])
        if rootp != src and dicom:
            found.append(rootp)
            dirs[:] = []
            continue
        if rootp != src and not recursive:
            dirs[:] = []
            continue
        found += [rootp / f for f in files if f.lower().endswith(VOLUME_SUFFIXES)]
        if rootp == src and dicom:
            found.append(rootp)
    return sorted(found)


def _floats(text: str, n: int) -> np.ndarray | None:
    try:
        v = np.array([float(x) for x in str(text).strip().strip("\x00").split("\\")], float)
    except ValueError:
        return None
    return v if v.shape == (n,) and np.isfinite(v).all() else None


def check_slice_positions(
    folder,
    files: Sequence[str],
    positions: Sequence[str],
    orientations: Sequence[str],
    rel_tol: float = 0.1,
    abs_tol_mm: float = 0.1,
    allow_gaps: bool = False,
) -> dict:
    """Verify that the slices of one DICOM series lie on one uniform grid.

    Returns ``{"step": usual spacing (mm), "s": each file's position along the slice normal (mm),
    "normal": unit normal (LPS), "ipp": (n, 3) positions, "iop": the 6 direction cosines,
    "uniform": bool}``.

    ``positions`` / ``orientations`` are the raw ImagePositionPatient (0020,0032) and
    ImageOrientationPatient (0020,0037) strings of ``files`` (in the reader's order). Refused, with
    the files and positions named: a missing or unparsable tag, orientations that differ, two
    slices at the same position, spacing along the slice normal that is not uniform (a missing or
    unreadable slice leaves a gap), and slices shifted in-plane (gantry tilt / shear), each beyond
    ``max(abs_tol_mm, rel_tol * spacing)``: 10 % of the spacing (at least 0.1 mm) tolerates positions
    written with few decimals, while a missing slice (a gap of twice the spacing) or a duplicate (a
    gap of 0) is far outside it. With ``allow_gaps`` a non-uniform spacing is returned
    (``uniform`` False) instead of refused, for :func:`resample_slices`; everything else is still refused.
    """
    names = [Path(f).name for f in files]
    n = len(files)
    if n < 2:
        return {"step": 0.0, "uniform": True}
    ipp = [_floats(p, 3) for p in positions]
    iop = [_floats(o, 6) for o in orientations]
    for name, p, o in zip(names, ipp, iop):
        if p is None or o is None:
            raise _error(
                folder,
                f"slice file {name} has no valid ImagePositionPatient / ImageOrientationPatient; "
                "the slice geometry cannot be checked",
            )
    ref = iop[0]
    for name, o in zip(names, iop):
        if np.abs(o - ref).max() > 1e-3:  # about 0.06 degrees: rounding of the cosines is far below
            raise _error(
                folder,
                f"slices have different orientations: {names[0]} {ref.round(5).tolist()} vs "
                f"{name} {o.round(5).tolist()}; one series must have one orientation",
            )
    normal = np.cross(ref[:3], ref[3:])
    if not np.linalg.norm(normal) > 0.5:
        raise _error(folder, f"ImageOrientationPatient {ref.tolist()} of {names[0]} is degenerate")
    normal /= np.linalg.norm(normal)
    pos = np.stack(ipp)
    s = pos @ normal
    order = np.argsort(s, kind="stable")
    s_sorted, pos_sorted = s[order], pos[order]
    names_sorted = [names[i] for i in order]
    gaps = np.diff(s_sorted)
    step = float(np.median(gaps))
    tol = max(abs_tol_mm, rel_tol * abs(step))
    dup = np.flatnonzero(gaps <= tol)
    if dup.size:
        i = int(dup[0])
        raise _error(
            folder,
            f"{dup.size} duplicated slice position(s): {names_sorted[i]} and {names_sorted[i + 1]} "
            f"both at {s_sorted[i]:.4f} mm along the slice normal "
            f"(position {pos_sorted[i].round(4).tolist()}); refusing to guess which one belongs",
        )
    bad = np.flatnonzero(np.abs(gaps - step) > tol)
    if bad.size and not allow_gaps:
        shown = "; ".join(
            f"{names_sorted[i]} ({s_sorted[i]:.4f} mm) -> {names_sorted[i + 1]} "
            f"({s_sorted[i + 1]:.4f} mm): {gaps[i]:.4f} mm"
            for i in bad[:5]
        )
        more = f"; and {bad.size - 5} more" if bad.size > 5 else ""
        raise _error(
            folder,
            f"slice spacing is not uniform (usual spacing {step:.4f} mm; a slice is missing or "
            f"unreadable, or the series mixes spacings): {shown}{more}. Repair the series, or ask "
            "for linear resampling onto a uniform grid (slice_gaps='resample', "
            "--resample-slice-gaps)",
        )
    inplane = (pos_sorted - pos_sorted[0]) - np.outer(s_sorted - s_sorted[0], normal)
    off = np.linalg.norm(inplane, axis=1)
    if off.max() > tol:
        i = int(np.argmax(off))
        raise _error(
            folder,
            f"slice {names_sorted[i]} is shifted {off[i]:.4f} mm in-plane from the stack through "
            f"{names_sorted[0]} (gantry tilt or sheared series); refusing to read it as a box",
        )
    return {"step": step, "s": s, "normal": normal, "ipp": pos, "iop": ref, "uniform": not bad.size}


def resample_slices(array: np.ndarray, geometry: dict) -> tuple[np.ndarray, float, np.ndarray]:
    """Linearly resample a z-first ``(n, H, W)`` stack whose slices sit at ``geometry["s"]`` (mm along
    the normal, in array order) onto a uniform grid of the usual spacing ``geometry["step"]``.

    Returns ``(float32 (m, H, W), step, index of the source slice that is the new first slice)``.
    Only called on the user's explicit request: a missing slice is then interpolated, not measured.
    """
    s = np.asarray(geometry["s"], float)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    step = float(geometry["step"])
    m = int(round((s_sorted[-1] - s_sorted[0]) / step)) + 1
    z = s_sorted[0] + step * np.arange(m)
    k = np.clip(np.searchsorted(s_sorted, z, side="right") - 1, 0, len(s_sorted) - 2)
    w = np.clip((z - s_sorted[k]) / (s_sorted[k + 1] - s_sorted[k]), 0.0, 1.0).astype(np.float32)
    out = np.empty((m, *array.shape[1:]), np.float32)
    for j in range(m):
        lo, hi = array[order[k[j]]].astype(np.float32), array[order[k[j] + 1]].astype(np.float32)
        out[j] = lo * (1.0 - w[j]) + hi * w[j]
    return out, step, int(order[0])
