"""``lamed predict``: run a model on a volume (or a folder of volumes).

    lamed predict --model PATH_OR_HUB_ID --image ct.nii.gz --prompt liver --out liver.nii.gz
    lamed predict --model runs/segvol --image ct.nii.gz --prompt liver --prompt spleen --out preds/ --overlay
    lamed predict --model runs/segvol --image scans/ --batch --prompt liver --out preds/

Masks are written in the source image's geometry (``LaMed.data.io.save_volume(..., like=...)``):
one prompt -> a binary mask; several -> a label map plus ``<name>_labels.json`` (label -> prompt).
``--overlay`` adds a PNG of representative slices. The output mode follows the model: the
segmentation models give masks; other model families register their own modes in
:data:`PREDICT_MODES` (``name -> (accepts(model_type), run(args, model, volume, out_stem))``), so
text and question modes plug in without changing this command's interface.

From Python: :func:`predict_file` and :func:`predict_folder`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from LaMed.inference.segment import SEG_MODEL_TYPES

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".npz")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hugging Face hub id")
    parser.add_argument("--image", required=True, help="volume file, DICOM series folder, or (with --batch) a folder of volumes")
    parser.add_argument("--prompt", action="append", default=[], help="structure name or sentence; repeat for several")
    parser.add_argument("--out", required=True, help="output file (one prompt) or folder")
    parser.add_argument("--batch", action="store_true", help="--image is a folder: predict every volume in it")
    parser.add_argument("--overlay", action="store_true", help="also write a PNG overlay of representative slices")
    parser.add_argument("--no-zoom-in", action="store_true", help="zoom-out only (one pass at network size)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap of the zoom-in (default 0.5)")
    parser.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the model's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--format", default=".nii.gz", choices=MASK_SUFFIXES, help="mask file type in folder outputs")


def _stem(path: Path) -> str:
    name = path.name
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip()).strip("_")[:60] or "prompt"


def write_overlay(volume_array, label_map, legend: Dict[int, str], path: Path, n_slices: int = 3) -> Path:
    """PNG of the ``n_slices`` axial slices with the most labelled voxels, labels drawn over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = (label_map > 0).reshape(label_map.shape[0], -1).sum(1)
    order = np.argsort(-counts)[:n_slices] if counts.any() else np.linspace(0, label_map.shape[0] - 1, n_slices).astype(int)
    lo, hi = np.percentile(volume_array, [1, 99])
    fig, axes = plt.subplots(1, len(order), figsize=(4 * len(order), 4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, k in zip(axes[0], sorted(order)):
        ax.imshow(volume_array[k], cmap="gray", vmin=lo, vmax=hi)
        lab = np.ma.masked_equal(label_map[k], 0)
        ax.imshow(lab, cmap=cmap, vmin=0.5, vmax=10.5, alpha=0.45, interpolation="nearest")
        ax.set_title(f"axial slice {k}")
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap((i - 1) % 10)) for i in legend]
    fig.legend(handles, list(legend.values()), loc="lower center", ncol=min(len(legend), 5))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def predict_file(model, image: str | Path, prompts: Sequence[str], out: str | Path, overlay: bool = False,
                 zoom_in: bool = True, overlap: float = 0.5, threshold: Optional[float] = None,
                 fmt: str = ".nii.gz") -> Dict[str, Path]:
    """Segment one volume and write the results; returns ``{"mask" | "labels", "legend", "overlay": path}``.

    ``out`` ending in a mask suffix is the file itself (one prompt: binary mask; several: label
    map with the legend beside it); otherwise it is a folder receiving ``<case>_<prompt><fmt>``
    or ``<case>_labels<fmt>`` + ``<case>_labels.json``.
    """
    from LaMed.data.io import load_volume, save_volume
    from LaMed.inference.segment import predict_volume

    image = Path(image)
    vol = load_volume(image)
    pred = predict_volume(model, vol, prompts, zoom_in=zoom_in, overlap=overlap, threshold=threshold)
    out = Path(out)
    as_file = out.name.lower().endswith(MASK_SUFFIXES)
    stem = _stem(image)
    written: Dict[str, Path] = {}
    if len(prompts) == 1:
        target = out if as_file else out / f"{stem}_{_safe(prompts[0])}{fmt}"
        written["mask"] = save_volume(pred.masks[prompts[0]].astype("uint8"), target, like=vol)
    else:
        target = out if as_file else out / f"{stem}_labels{fmt}"
        written["labels"] = save_volume(pred.label_map, target, like=vol)
    legend_path = target.parent / f"{_stem(target)}.json"
    legend_path.write_text(json.dumps({"source": str(image), "labels": {str(k): v for k, v in pred.legend.items()},
                                       "zoom_in_skipped": pred.fallback}, indent=2) + "\n")
    written["legend"] = legend_path
    if overlay:
        written["overlay"] = write_overlay(vol.array, pred.label_map, pred.legend, target.parent / f"{_stem(target)}.png")
    return written


def find_inputs(folder: str | Path) -> List[Path]:
    """Volume files and DICOM series folders directly inside ``folder`` (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: --batch needs a folder of volumes")
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES):
            found.append(p)
        elif p.is_dir() and any(q.suffix.lower() == ".dcm" for q in p.iterdir()):
            found.append(p)
    if not found:
        raise FileNotFoundError(f"{folder}: no volume files ({', '.join(VOLUME_SUFFIXES)}) or DICOM folders in it")
    return found


def predict_folder(model, folder: str | Path, prompts: Sequence[str], out: str | Path, progress: bool = True,
                   **kwargs) -> Dict[str, Dict[str, Path] | str]:
    """:func:`predict_file` for every volume of ``folder`` into the folder ``out``; a failing case is
    reported (``{case: "error: ..."}``) and the others go on."""
    from tqdm.auto import tqdm

    results: Dict[str, Dict[str, Path] | str] = {}
    inputs = find_inputs(folder)
    for path in tqdm(inputs, desc="predict", disable=not progress):
        try:
            results[path.name] = predict_file(model, path, prompts, out, **kwargs)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            results[path.name] = f"error: {exc}"
    return results


def _model_type(path_or_id: str) -> str:
    from transformers import AutoConfig

    from LaMed.inference.hub import resolve_model

    import LaMed.models.segmentation  # noqa: F401

    return AutoConfig.from_pretrained(resolve_model(path_or_id)).model_type


def _run_masks(args: argparse.Namespace) -> int:
    from LaMed.inference.segment import load_seg_model

    if not args.prompt:
        raise ValueError("--prompt: give at least one structure name or sentence for a segmentation model")
    model = load_seg_model(args.model, device=args.device)
    common = dict(overlay=args.overlay, zoom_in=not args.no_zoom_in, overlap=args.overlap, threshold=args.threshold, fmt=args.format)
    if args.batch:
        results = predict_folder(model, args.image, args.prompt, args.out, **common)
        failed = {k: v for k, v in results.items() if isinstance(v, str)}
        for name, msg in failed.items():
            print(f"{name}: {msg}")
        print(f"{len(results) - len(failed)} of {len(results)} volumes written to {args.out}")
        return 1 if failed else 0
    written = predict_file(model, args.image, args.prompt, args.out, **common)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


# mode name -> (accepts(model_type) -> bool, run(args) -> exit code). Later issues add text modes.
PREDICT_MODES: Dict[str, Tuple[Callable[[str], bool], Callable[[argparse.Namespace], int]]] = {
    "masks": (lambda model_type: model_type in SEG_MODEL_TYPES, _run_masks),
}


def run(args: argparse.Namespace) -> int:
    model_type = _model_type(args.model)
    for name, (accepts, runner) in PREDICT_MODES.items():
        if accepts(model_type):
            return runner(args)
    raise ValueError(f"--model {args.model}: no predict mode handles model_type {model_type!r} "
                     f"(modes: {', '.join(PREDICT_MODES)})")
