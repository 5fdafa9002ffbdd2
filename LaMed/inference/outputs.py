"""Segmentation results as files: one volume (or a folder of them) in, masks on the source grid out.

``predict_file(model, image, prompts, out)`` reads a volume (NIfTI, DICOM series, NRRD/MHA, npy),
segments it with :func:`LaMed.inference.segment.predict_volume` and writes, in the source file's
own geometry: one prompt -> a binary mask; several -> a label map plus ``<name>.json`` (label ->
prompt); ``overlay=True`` adds a PNG of representative slices. ``predict_folder`` does it for every
volume and DICOM series of a folder, reporting a failing case and going on. Every file goes through
the atomic writer. ``lamed predict``, the demo and Bench call these; none keeps a loop of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from LaMed.data.io import load_volume, save_volume
from LaMed.data.io_guard import find_volumes
from LaMed.inference.segment import predict_volume
from LaMed.utils.atomic import atomic_path, write_json_atomic

__all__ = [
    "DICOM_SEG",
    "MASK_SUFFIXES",
    "VOLUME_SUFFIXES",
    "predict_file",
    "predict_folder",
    "find_inputs",
    "write_overlay",
    "write_segmentation",
]

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".npz")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz")
DICOM_SEG = "dicom-seg"  # --format: one DICOM Segmentation (+ SR for text models) for a DICOM series input


def _stem(path: Path) -> str:
    name = path.name
    for suf in VOLUME_SUFFIXES + (".dcm",):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip()).strip("_")[:60] or "prompt"


def write_overlay(volume_array, label_map, legend: dict[int, str], path: Path, n_slices: int = 3) -> Path:
    """PNG of the ``n_slices`` axial slices with the most labelled voxels, labels drawn over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = (label_map > 0).reshape(label_map.shape[0], -1).sum(1)
    order = (
        np.argsort(-counts)[:n_slices] if counts.any() else np.linspace(0, label_map.shape[0] - 1, n_slices).astype(int)
    )
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
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def predict_file(
    model,
    image: str | Path,
    prompts: Sequence[str],
    out: str | Path,
    overlay: bool = False,
    zoom_in: bool = True,
    overlap: float = 0.5,
    threshold: float | None = None,
    fmt: str = ".nii.gz",
    progress: bool = False,
    series_uid: str | None = None,
    preset=None,
) -> dict[str, Path]:
    """Segment one volume and write the results; returns ``{"mask" | "labels", "legend", "overlay": path}``.

    ``out`` ending in a mask suffix is the file itself (one prompt: binary mask; several: label
    map with the legend beside it); otherwise it is a folder receiving ``<case>_<prompt><fmt>``
    or ``<case>_labels<fmt>`` + ``<case>_labels.json``.
    """

    image = Path(image)
    vol = load_volume(image, series_uid=series_uid)
    datasets = None
    if fmt == DICOM_SEG:  # the source instances first: a non-DICOM input is refused before the prediction
        from LaMed.inference.dicom_out import read_series_datasets

        datasets = read_series_datasets(image, series_uid)
    pred = predict_volume(
        model, vol, prompts, zoom_in=zoom_in, overlap=overlap, threshold=threshold, progress=progress, preset=preset
    )
    return write_segmentation(
        pred,
        vol,
        out,
        fmt=fmt,
        overlay=overlay,
        source=image,
        datasets=datasets,
        model_name=getattr(model.config, "_name_or_path", "") or model.config.model_type,
    )


def write_segmentation(
    pred,
    volume,
    out: str | Path,
    fmt: str = ".nii.gz",
    overlay: bool = False,
    source: Path | None = None,
    datasets=None,
    model_name: str = "LaMed",
) -> dict[str, Path]:
    """Write a :class:`~LaMed.inference.segment.SegPrediction` of ``volume`` in its source geometry.

    ``out`` ending in a mask suffix is the file itself (one prompt: binary mask; several: label map,
    the legend beside it); otherwise a folder receiving ``<case>_<prompt><fmt>`` or
    ``<case>_labels<fmt>``, plus ``<name>.json`` (source, label -> prompt, per structure ``present``
    and ``presence_probability`` -- an absent one has an empty mask --, prompts whose zoom-in was
    skipped) and, with ``overlay``, ``<name>.png``. Returns ``{"mask" | "labels", "legend", "overlay": path}``.
    ``fmt="dicom-seg"``: one DICOM Segmentation of all prompts (``"seg"``: ``out`` itself when it ends
    in ``.dcm``, else ``<case>_seg.dcm``) referencing ``datasets``, the source series' instances
    (:mod:`LaMed.inference.dicom_out`), and the JSON beside it.
    """

    source = Path(source if source is not None else (volume.path or "volume"))
    out = Path(out)
    as_file = out.name.lower().endswith(MASK_SUFFIXES)
    stem = _stem(source)
    written: dict[str, Path] = {}
    if fmt == DICOM_SEG:
        from LaMed.inference.dicom_out import write_dicom_seg

        if not datasets:
            raise ValueError(f"--format {DICOM_SEG}: {source} is not a DICOM series (DICOM out needs a DICOM input)")
        target = out if out.name.lower().endswith(".dcm") else out / f"{stem}_seg.dcm"
        written["seg"] = write_dicom_seg(pred, volume, datasets, target, model_name=model_name)
    elif len(pred.prompts) == 1:
        target = out if as_file else out / f"{stem}_{_safe(pred.prompts[0])}{fmt}"
        written["mask"] = save_volume(pred.masks[pred.prompts[0]].astype("uint8"), target, like=volume)
    else:
        target = out if as_file else out / f"{stem}_labels{fmt}"
        written["labels"] = save_volume(pred.label_map, target, like=volume)
    legend_path = target.parent / f"{_stem(target)}.json"
    structures = [
        {
            "label": k,
            "prompt": v,
            "present": bool(pred.present.get(v, True)),
            "presence_probability": pred.presence.get(v),
        }
        for k, v in pred.legend.items()
    ]
    for entry, q in zip(structures, getattr(pred, "queries", None) or []):
        if q.spatial:  # where the user pointed, on the canonical grid of the written masks' volume
            entry["text"] = q.text
            entry["box_canonical_voxels"] = None if q.box is None else list(q.box)
            entry["points_canonical_voxels"] = [list(p) for p in q.points]
            entry["point_labels"] = list(q.point_labels)
    write_json_atomic(
        legend_path,
        {
            "source": str(source),
            "labels": {str(k): v for k, v in pred.legend.items()},
            "structures": structures,
            "zoom_in_skipped": pred.fallback,
        },
    )
    written["legend"] = legend_path
    if overlay:
        written["overlay"] = write_overlay(
            volume.array, pred.label_map, pred.legend, target.parent / f"{_stem(target)}.png"
        )
    return written


def find_inputs(folder: str | Path) -> list[Path]:
    """Volume files and DICOM series folders directly inside ``folder`` (sorted)."""

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: --batch needs a folder of volumes")
    # the discovery rule of `lamed prepare volumes` (extension-less DICOM files included), one level deep
    found = find_volumes(folder, recursive=False)
    if not found:
        raise FileNotFoundError(f"{folder}: no volume files ({', '.join(VOLUME_SUFFIXES)}) or DICOM folders in it")
    return found


def predict_folder(
    model, folder: str | Path, prompts: Sequence[str], out: str | Path, progress: bool = True, **kwargs
) -> dict[str, dict[str, Path] | str]:
    """:func:`predict_file` for every volume of ``folder`` into the folder ``out``; a failing case is
    reported (``{case: "error: ..."}``) and the others go on."""
    from tqdm.auto import tqdm

    results: dict[str, dict[str, Path] | str] = {}
    inputs = find_inputs(folder)
    for path in tqdm(inputs, desc="predict", disable=not progress):
        try:
            results[path.name] = predict_file(model, path, prompts, out, **kwargs)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            results[path.name] = f"error: {exc}"
    return results
