"""What a saved model expects and returns, as the lines of its model card (``README.md``).

Written next to the weights by ``lamed import`` and at the end of training, so a researcher who
finds a model folder knows, without reading code, which preprocessing a scan must go through,
at which size, and what comes out.
"""

from __future__ import annotations

from LaMed.utils.atomic import atomic_write_text

__all__ = ["io_section", "write_model_card"]

_RETURNS = {
    "lamed_clip": "an embedding of the volume and of each text; their cosine similarity ranks reports or "
    "findings (`lamed predict --prompt TEXT`, `model.similarity(volume, texts)`)",
    "lamed": "text: a report, or the answer to a question about the volume (`lamed predict --question`, "
    "`model.generate(volume, question)`)",
    "lamed_seg": "the answer to a question, and one binary mask per [SEG] token of the answer, on the source grid",
    "lamed_segvol": "one probability map / binary mask per text, box or point prompt, on the source grid",
    "lamed_text3dsam": "one probability map / binary mask per text prompt, on the source grid",
    "lamed_refsam3d": "one binary mask per referring expression, on the source grid",
}


def _input_size(model) -> list[int]:
    config = model.config
    size = getattr(config, "img_size", None)
    if size is None:
        for tower in (getattr(model, "vision_model", None), *(getattr(model, "towers", None) or [])):
            size = getattr(getattr(tower, "config", None), "img_size", None)
            if size is not None:
                break
    return [int(s) for s in size] if size is not None else []


def io_section(model) -> list[str]:
    """Markdown lines: the input the model expects (preprocessing, size) and what it returns."""
    config = model.config
    record = getattr(config, "preprocessing", None)
    if not record and getattr(config, "preprocess_preset", None):
        record = {"preset": config.preprocess_preset}
    size = _input_size(model)
    lines = ["## Input", ""]
    lines.append(
        f"- a 3D volume (CT or MR), resampled to `{'x'.join(map(str, size))}` voxels (D x H x W) after preprocessing"
        if size
        else "- a 3D volume (CT or MR)"
    )
    if record:
        fields = ", ".join(f"{k}={v}" for k, v in record.items() if k != "preset" and v is not None)
        lines.append(
            f"- preprocessing: preset `{record['preset']}`"
            + (f" ({fields})" if fields else "")
            + "; `lamed predict` and `LaMed.load(...)` apply it by default"
        )
    else:
        lines.append("- preprocessing: not recorded (inference falls back to the `m3d` preset with a warning)")
    lines += [
        "- intensities after preprocessing in [0, 1]; masks are written back in the source file's geometry",
        "",
        "## Output",
        "",
        f"- {_RETURNS.get(config.model_type, 'see the model class docstring')}",
    ]
    return lines


def write_model_card(model, folder, title: str, extra: list[str] = ()) -> None:
    """Write ``folder/README.md``: a title, the input / output section and ``extra`` lines."""
    from pathlib import Path

    lines = [f"# {title}", "", *io_section(model)]
    if extra:
        lines += ["", *extra]
    atomic_write_text(Path(folder) / "README.md", "\n".join(lines) + "\n")
