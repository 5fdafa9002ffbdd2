"""Make PyPI's CUDA-built torchvision importable under a CPU-only torch.

PyPI has no CPU build of torchvision 0.28.0; its wheel links against ``libtorch_cuda.so``, so
its C++ ops never load and ``torchvision/_meta_registrations.py`` then fails while registering
fake kernels for ``torchvision::nms`` / ``qnms``. That failure also breaks ``transformers``,
``timm`` and ``open_clip``, which import torchvision when it is installed.

The fix is to declare those two operator schemas (with a small pure-torch CPU ``nms``) just
before torchvision is imported. This module only inserts a meta-path finder; torch is imported
when, and only when, something imports torchvision. It is installed as ``_lamed_tvshim.pth`` in
site-packages (``make install`` does it) so that every interpreter (pytest, torchrun and
accelerate workers) gets it, and ``LaMed/__init__.py`` imports it as a fallback. Under a CUDA
torch it does nothing.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys

_LIBRARY = []  # keeps the torch.library.Library alive for the life of the process


def _cpu_nms(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression on (N, 4) xyxy boxes; returns kept indices, best first."""
    import torch

    order = torch.argsort(scores, descending=True)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    removed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    kept = []
    for idx in order.tolist():
        if removed[idx]:
            continue
        kept.append(idx)
        w = (torch.minimum(x2, x2[idx]) - torch.maximum(x1, x1[idx])).clamp(min=0)
        h = (torch.minimum(y2, y2[idx]) - torch.maximum(y1, y1[idx])).clamp(min=0)
        overlap = w * h
        iou = overlap / (area + area[idx] - overlap).clamp(min=1e-12)
        removed |= iou > iou_threshold
    return torch.tensor(kept, dtype=torch.long)


def define_ops() -> bool:
    """Declare ``torchvision::nms``/``qnms`` when torch is CPU-only and they are missing."""
    import torch

    if torch.version.cuda is not None or _LIBRARY:
        return False
    try:
        _ = torch.ops.torchvision.nms  # already provided by a working torchvision build
        return False
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _cpu_nms, "CPU")
    _LIBRARY.append(lib)
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`define_ops` once, right before the first ``import torchvision``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        with contextlib.suppress(Exception):  # never let the shim itself break an import
            define_ops()
        return None  # let the normal finders locate torchvision


def install() -> None:
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())


install()
