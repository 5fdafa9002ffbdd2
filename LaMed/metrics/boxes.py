"""3D boxes: parsing boxes written as text, standard 3D IoU, and M3D's published positioning score.

A box is ``[d0, h0, w0, d1, h1, w1]``: the minimum corner then the maximum corner, in any unit
(the LaMed manifest stores them normalised to [0, 1] of the image size; M3D writes
``[x1, y1, z1, x2, y2, z2]`` the same way, min corner first). IoU does not depend on the axis
order as long as both boxes use the same one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "parse_boxes",
    "parse_box",
    "box_iou_3d",
    "box_volume",
    "m3d_extract_box",
    "m3d_box_score",
    "m3d_positioning_score",
]

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GROUP = re.compile(r"[\[(]([^\[\]()]*)[\])]")


def parse_boxes(text: str) -> list[list[float]]:
    """All 6-number boxes written in brackets or parentheses in ``text``, in order of appearance.

    Accepts ``[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]``, ``(0.1,0.2,0.3,0.4,0.5,0.6)``, space- or
    semicolon-separated numbers, integers and exponents. Groups that do not hold exactly six
    numbers are ignored.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    out = []
    for m in _GROUP.finditer(text):
        inner = m.group(1)
        nums = re.findall(_NUM, inner)
        # Everything between the numbers must be separators, so "[liver 1, 2 ...]" is not a box.
        rest = re.sub(_NUM, " ", inner)
        if len(nums) == 6 and re.fullmatch(r"[\s,;]*", rest):
            out.append([float(v) for v in nums])
    return out


def parse_box(text: str) -> list[float] | None:
    """The first box in ``text`` (see :func:`parse_boxes`), or ``None``."""
    boxes = parse_boxes(text)
    return boxes[0] if boxes else None


def _check(box: Sequence[float], name: str) -> list[float]:
    b = [float(v) for v in box]
    if len(b) != 6:
        raise ValueError(f"{name} must have 6 values [d0, h0, w0, d1, h1, w1], got {len(b)}: {box}")
    return b


def box_volume(box: Sequence[float]) -> float:
    """Volume of a ``[min corner, max corner]`` box; 0 when any extent is not positive."""
    b = _check(box, "box")
    ext = [max(0.0, b[i + 3] - b[i]) for i in range(3)]
    return ext[0] * ext[1] * ext[2]


def box_iou_3d(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Standard 3D IoU = vol(A ∩ B) / (vol(A) + vol(B) - vol(A ∩ B)) of axis-aligned boxes.

    A box with a max coordinate below its min has volume 0 (it is not re-sorted: such an output is
    a wrong answer). Two zero-volume boxes give 1.0 if identical, else 0.0.
    """
    a, b = _check(box_a, "box_a"), _check(box_b, "box_b")
    inter = 1.0
    for i in range(3):
        inter *= max(0.0, min(a[i + 3], b[i + 3]) - max(a[i], b[i]))
    union = box_volume(a) + box_volume(b) - inter
    if union <= 0:
        return 1.0 if a == b else 0.0
    return inter / union


# M3D's Bench regex: exactly six numbers separated by ", " (comma + one space) inside brackets.
_M3D_BOX = re.compile(r"\[" + r", ".join([r"([-+]?\d*\.\d+|[-+]?\d+)"] * 6) + r"\]")


def m3d_extract_box(text: str) -> list[float] | None:
    """First box as M3D's Bench finds it: ``[a, b, c, d, e, f]`` with exactly ``", "`` separators."""
    m = _M3D_BOX.search(text)
    return [float(v) for v in m.groups()] if m else None


def m3d_box_score(pred_box: Sequence[float], gt_box: Sequence[float]) -> float:
    """M3D's published box "IoU" (``calculate_iou`` in M3D's Bench utilities).

    score = vol(A ∩ B) / (vol(smallest box enclosing A and B) + 1e-6). The denominator is the
    enclosing box, not the union, so the value is <= the standard IoU (equal only for identical
    boxes, up to the 1e-6). Use :func:`box_iou_3d` for the standard number.
    """
    a, b = _check(pred_box, "pred_box"), _check(gt_box, "gt_box")
    inter = enclosing = 1.0
    for i in range(3):
        inter *= max(0.0, min(a[i + 3], b[i + 3]) - max(a[i], b[i]))
        enclosing *= max(a[i + 3], b[i + 3]) - min(a[i], b[i])
    return inter / (enclosing + 1e-6)


def m3d_positioning_score(prediction: str, answer: str) -> float:
    """M3D's REC score of one sample: :func:`m3d_box_score` of the boxes parsed from both texts with
    M3D's regex, or -1.0 when either text has no box (M3D averages these -1 values in)."""
    p, a = m3d_extract_box(prediction), m3d_extract_box(answer)
    if p is None or a is None:
        return -1.0
    return m3d_box_score(p, a)
