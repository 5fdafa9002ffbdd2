"""Box and point prompts for whole-volume segmentation, and their coordinates in each network frame.

A :class:`SegPrompt` is one query of :func:`~LaMed.inference.segment.predict_volume`: a text, a box,
points, or any combination (SegVol's prompt kinds). Its box and points are given in one of
:data:`COORDINATE_SPACES`: ``"canonical"`` voxel indices of the ``Volume`` (``(d, h, w)``, the order
of ``Volume.array``), or what a viewer shows: ``"voxel"`` (the file's own ``(i, j, k)`` index, x
first, as ITK-SNAP and nibabel count), ``"ras"`` (NIfTI / 3D Slicer millimetres) or ``"lps"``
(DICOM / ITK millimetres). :func:`check_prompt` converts them to canonical indices with the
volume's own geometry (:func:`from_file_voxels`, :func:`from_world`).

The network never sees the canonical grid. The zoom-out pass sees the foreground crop resized to
``img_size``; each zoom-in window sees ``img_size`` voxels of the crop at native resolution. A
:class:`Frame` maps canonical indices into one of them, and :func:`prompt_in_frame` builds the prompt
row a frame is decoded with:

- the box is mapped corner by corner (voxel edges, so a box of whole voxels stays whole) and clipped
  to the frame; a box that misses the frame is dropped;
- points outside the frame are dropped (SegVol likewise keeps only the points of a window);
- a frame left with nothing (no text, no box, no point) gets no row: the zoom-in then keeps the
  zoom-out logits in that window, and the zoom-out refuses the prompt (its box or points lie outside
  the body crop, where nothing is segmented).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from LaMed.models.segmentation.base import Prompts

COORDINATE_SPACES = ("canonical", "voxel", "ras", "lps")


@dataclass(frozen=True)
class SegPrompt:
    """One segmentation query.

    Attributes:
        text: structure name or sentence (``None``: a purely spatial prompt).
        box: two opposite corners, both inside the box: ``(d0, h0, w0, d1, h1, w1)`` in canonical
            voxels, ``(i0, j0, k0, i1, j1, k1)`` / ``(x0, y0, z0, x1, y1, z1)`` in the other spaces.
        points: one triple per point, in ``space``.
        point_labels: 1 (foreground) or 0 (background) per point; default all 1.
        name: the label in outputs (legend, file names); default the text, else ``"box"`` /
            ``"points"``.
        space: the coordinates' space (:data:`COORDINATE_SPACES`).
        origin: where the prompt came from (an option, a file entry), named in its errors.
    """

    text: str | None = None
    box: tuple[float, ...] | None = None
    points: tuple[tuple[float, float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    name: str | None = None
    space: str = "canonical"
    origin: str | None = None

    @property
    def spatial(self) -> bool:
        return self.box is not None or bool(self.points)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.text:
            return self.text
        return "box" if self.box is not None else "points"


def as_prompt(prompt) -> SegPrompt:
    """A ``SegPrompt`` from a ``SegPrompt`` or a text."""
    if isinstance(prompt, SegPrompt):
        return prompt
    if isinstance(prompt, str):
        return SegPrompt(text=prompt)
    raise TypeError(f"a prompt is a text or a SegPrompt, got {type(prompt).__name__}")


def check_prompt(prompt: SegPrompt, volume, what: str) -> SegPrompt:
    """``prompt`` in canonical voxels of ``volume`` (a ``LaMed.data.io.Volume``), its box / points
    checked to lie inside it; labels default to 1. ``what`` names the prompt in the error (an option,
    a file entry or ``"prompt 2"``)."""

    shape = tuple(volume.shape)
    what = prompt.origin or what
    if prompt.text is not None and not str(prompt.text).strip():
        raise ValueError(f"{what}: the text is empty")
    if prompt.text is None and not prompt.spatial:
        raise ValueError(f"{what}: give a text, a box or points")
    if prompt.space not in COORDINATE_SPACES:
        raise ValueError(f"{what}: coordinate space must be one of {COORDINATE_SPACES}, got {prompt.space!r}")
    box = None
    if prompt.box is not None:
        box = tuple(float(v) for v in prompt.box)
        if len(box) != 6 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"{what}: a box is 6 finite numbers (two opposite corners), got {prompt.box}")
        if prompt.space != "canonical":
            box = box_to_canonical(volume, box, prompt.space)
        for ax in range(3):
            lo, hi, n = box[ax], box[ax + 3], shape[ax]
            if lo > hi:
                raise ValueError(f"{what}: box corner {box[:3]} is above {box[3:]} on axis {ax}")
            if lo < -0.5 or hi > n - 0.5:  # a box reaching beyond the scan is a coordinate mistake
                raise ValueError(
                    f"{what}: box {prompt.box} ({prompt.space}) lies outside the volume (canonical shape {shape})"
                )
    points = tuple(tuple(float(c) for c in p) for p in prompt.points)
    for p in points:
        if len(p) != 3 or not all(math.isfinite(c) for c in p):
            raise ValueError(f"{what}: a point is 3 finite numbers, got {p}")
    if points and prompt.space != "canonical":
        given = points
        points = tuple(tuple(float(c) for c in row) for row in to_canonical(volume, np.array(points), prompt.space))
    else:
        given = points
    for p, g in zip(points, given):
        if any(c < -0.5 or c > n - 0.5 for c, n in zip(p, shape)):
            raise ValueError(f"{what}: point {g} ({prompt.space}) lies outside the volume (canonical shape {shape})")
    labels = tuple(int(v) for v in prompt.point_labels) if prompt.point_labels else (1,) * len(points)
    if len(labels) != len(points):
        raise ValueError(f"{what}: {len(labels)} point labels for {len(points)} points")
    if any(v not in (0, 1) for v in labels):
        raise ValueError(f"{what}: point labels are 1 (foreground) or 0 (background), got {labels}")
    text = None if prompt.text is None else str(prompt.text).strip()
    return SegPrompt(text, box, points, labels, prompt.name, "canonical", prompt.origin)


# ---- user coordinates -> canonical voxels ----------------------------------------------------------
def _file_index(volume, ijk: np.ndarray) -> np.ndarray:
    """The file's ``(i, j, k)`` (x first, as viewers show it) -> its array index (NIfTI stores x first;
    ITK, DICOM and numpy arrays z first)."""
    return ijk if volume.source_format == "nifti" else ijk[..., ::-1]


def from_file_voxels(volume, ijk) -> np.ndarray:
    """Canonical ``(d, h, w)`` indices of file voxel indices ``(i, j, k)`` (``(N, 3)``)."""
    idx = _file_index(volume, np.asarray(ijk, np.float64).reshape(-1, 3))
    world = idx @ volume.source_affine[:3, :3].T + volume.source_affine[:3, 3]
    return from_world(volume, world, "ras")


def from_world(volume, xyz, space: str = "ras") -> np.ndarray:
    """Canonical ``(d, h, w)`` indices of world points ``(N, 3)`` in mm (``"ras"``: NIfTI / 3D Slicer;
    ``"lps"``: DICOM / ITK, x and y negated)."""
    if space not in ("ras", "lps"):
        raise ValueError(f"coordinate space must be 'ras' or 'lps', got {space!r}")
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3).copy()
    if space == "lps":
        xyz[:, :2] *= -1
    inv = np.linalg.inv(volume.affine)
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def to_canonical(volume, coords, space: str) -> np.ndarray:
    """``coords`` ``(N, 3)`` in ``space`` (one of :data:`COORDINATE_SPACES`) -> canonical indices."""
    if space == "canonical":
        return np.asarray(coords, np.float64).reshape(-1, 3)
    if space == "voxel":
        return from_file_voxels(volume, coords)
    if space in ("ras", "lps"):
        return from_world(volume, coords, space)
    raise ValueError(f"coordinate space must be one of {COORDINATE_SPACES}, got {space!r}")


def box_to_canonical(volume, corners, space: str) -> tuple[float, ...]:
    """A box given by two opposite corners (6 numbers) in ``space`` -> canonical ``(d0, h0, w0, d1, h1,
    w1)`` (the corners may come in any order: an axis flip between the file and the canonical grid
    swaps them)."""
    c = to_canonical(volume, np.asarray(corners, np.float64).reshape(2, 3), space)
    lo, hi = c.min(0), c.max(0)
    return tuple(float(v) for v in (*lo, *hi))


# ---- canonical voxels -> network frames ------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """A network input of ``size`` voxels whose voxel ``f`` covers canonical voxels from
    ``offset + f / scale`` to ``offset + (f + 1) / scale`` (per axis)."""

    offset: tuple[float, float, float]
    scale: tuple[float, float, float]
    size: tuple[int, int, int]


def zoom_out_frame(crop: Sequence[int], img_size: Sequence[int]) -> Frame:
    """The resized foreground crop ``(d0, h0, w0, d1, h1, w1)``."""
    shape = [b - a for a, b in zip(crop[:3], crop[3:])]
    return Frame(tuple(float(a) for a in crop[:3]), tuple(s / n for s, n in zip(img_size, shape)), tuple(img_size))


def window_frame(crop_start: Sequence[int], origin: Sequence[int], window: Sequence[int]) -> Frame:
    """A zoom-in window starting at ``origin`` (crop voxels; negative inside the padding)."""
    return Frame(tuple(float(a + o) for a, o in zip(crop_start, origin)), (1.0, 1.0, 1.0), tuple(window))


def prompt_in_frame(prompt: SegPrompt, frame: Frame, text: Prompts | None, device, dtype) -> Prompts | None:
    """The one-row ``Prompts`` of ``prompt`` in ``frame`` (``text``: its encoded text row, or ``None``);
    ``None`` when nothing of it reaches the frame (see the module docstring)."""

    off, scale, size = np.array(frame.offset), np.array(frame.scale), np.array(frame.size)
    box = points = labels = None
    if prompt.box is not None:
        b = np.array(prompt.box).reshape(2, 3)
        lo = (b[0] - off) * scale  # lower edge of the first voxel
        hi = (b[1] + 1.0 - off) * scale - 1.0  # index of the last voxel (its upper edge minus one)
        if np.all(hi >= 0) and np.all(lo <= size - 1):
            box = torch.tensor(np.concatenate([np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)]))[None]
    if prompt.points:
        p = (np.array(prompt.points) - off + 0.5) * scale - 0.5  # voxel centres
        keep = np.all((p >= -0.5) & (p < size - 0.5), axis=1)
        if keep.any():
            points = torch.tensor(p[keep])[None]
            given = np.array(prompt.point_labels or (1,) * len(prompt.points))  # default: all foreground
            labels = torch.tensor(given[keep], dtype=torch.long)[None]
    if text is None and box is None and points is None:
        return None
    row = text if text is not None else Prompts()
    return Prompts(
        text_embedding=row.text_embedding,
        text_tokens=row.text_tokens,
        text_mask=row.text_mask,
        points=None if points is None else points.to(device, dtype),
        point_labels=None if labels is None else labels.to(device),
        boxes=None if box is None else box.to(device, dtype),
    )


# ---- prompts from a file ---------------------------------------------------------------------------------
PROMPT_FILE_KEYS = ("text", "box", "points", "point_labels", "name", "coords")
MAX_PROMPTS_FILE_BYTES = 1 << 20  # a hand-written list of prompts; a larger file is a wrong path


def read_prompts_file(path, space: str = "voxel") -> list[SegPrompt]:
    """Prompts from a JSON file: a list of objects with any of ``text``, ``box`` (6 numbers: two opposite
    corners), ``points`` (list of 3 numbers), ``point_labels`` (1 / 0 per point), ``name`` and
    ``coords`` (the entry's space, default ``space``). Structure and types are checked here (the error
    names the file and the entry); coordinates against the volume by :func:`check_prompt`."""

    import json
    from pathlib import Path

    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_PROMPTS_FILE_BYTES:
        raise ValueError(
            f"{path}: {path.stat().st_size} bytes, more than a prompts file holds ({MAX_PROMPTS_FILE_BYTES}); "
            "is it the right file?"
        )
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: prompts file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON prompts file ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of prompt objects")
    out = []
    for i, e in enumerate(entries):
        where = f"{path}: entry {i + 1}"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: expected an object with keys among {PROMPT_FILE_KEYS}")
        unknown = sorted(set(e) - set(PROMPT_FILE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {PROMPT_FILE_KEYS}")
        for key in ("text", "name", "coords"):
            if key in e and not isinstance(e[key], str):
                raise ValueError(f"{where}: {key!r} must be a string")
        box = e.get("box")
        if box is not None and (not isinstance(box, list) or not all(_is_number(v) for v in box)):
            raise ValueError(f"{where}: 'box' must be a list of 6 numbers")
        points = e.get("points", [])
        if not isinstance(points, list) or not all(
            isinstance(p, list) and all(_is_number(v) for v in p) for p in points
        ):
            raise ValueError(f"{where}: 'points' must be a list of [a, b, c] number triples")
        labels = e.get("point_labels", [])
        if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise ValueError(f"{where}: 'point_labels' must be a list of integers (1 or 0)")
        coords = e.get("coords", space)
        if coords not in COORDINATE_SPACES:
            raise ValueError(f"{where}: 'coords' must be one of {COORDINATE_SPACES}, got {coords!r}")
        out.append(
            SegPrompt(
                text=e.get("text"),
                box=None if box is None else tuple(box),
                points=tuple(tuple(p) for p in points),
                point_labels=tuple(labels),
                name=e.get("name"),
                space=coords,
                origin=where,
            )
        )
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
