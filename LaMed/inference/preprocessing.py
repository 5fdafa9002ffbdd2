"""Which preprocessing a model gets: the one stored with it, unless the caller asks for another.

Every LaMed model config can store its preprocessing (``config.preprocessing``: a record of
:func:`LaMed.data.presets.preset_spec`, set by the training recipe from the prepared data it was
trained on and by ``lamed import`` from the published pipeline; segmentation and reasoning models
also name a preset in ``config.preprocess_preset``). :func:`model_preset` turns that into the
:class:`~LaMed.data.presets.Preset` inference applies, at the model's input size. A different
preset asked for explicitly is used, with a warning naming both (results may be off); a model that
stores nothing (saved by an older LaMed) gets ``m3d`` with a warning saying so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from LaMed.data.presets import Preset, apply_preset, get_preset, preset_from_spec, preset_spec

logger = logging.getLogger("LaMed.inference")

__all__ = ["DEFAULT_PRESET", "stored_preprocessing", "model_preset", "input_size", "model_input"]

DEFAULT_PRESET = "m3d"


def stored_preprocessing(config) -> dict | None:
    """The preprocessing record a model config stores (``None`` when it stores none)."""
    record = getattr(config, "preprocessing", None)
    if record:
        return dict(record) if not isinstance(record, str) else preset_spec(record)
    name = getattr(config, "preprocess_preset", None)
    return preset_spec(name) if name else None


def input_size(model) -> tuple:
    """The ``(D, H, W)`` volume size the model's vision side takes."""
    config = getattr(model, "config", None)
    size = getattr(config, "img_size", None)  # segmentation models
    if size is None:
        tower = getattr(model, "vision_model", None)  # CLIP
        if tower is None and hasattr(model, "towers"):  # multimodal LLMs
            tower = model.towers[0]
        size = getattr(getattr(tower, "config", None), "img_size", None)
    if size is None:
        raise ValueError(f"{type(model).__name__}: cannot tell the model's input size (no img_size in its config)")
    return tuple(int(s) for s in size)


def _without_size(preset: Preset) -> dict:
    # the size always follows the model, so two presets that differ only there are the same pipeline
    spec = preset_spec(preset)
    spec.pop("size")
    spec.pop("preset")
    return spec


def model_preset(
    model, requested: str | dict | Preset | None = None, size: Sequence[int] | None = None, option: str = "--preset"
) -> Preset:
    """The preset to apply for ``model`` (see the module docstring), sized to its input."""
    stored = stored_preprocessing(getattr(model, "config", None))
    if requested is not None:
        chosen = requested if isinstance(requested, Preset) else preset_from_spec(requested)
        if stored is None:
            logger.warning("%s %s: the model stores no preprocessing to compare with", option, chosen.name)
        else:
            stored_preset = preset_from_spec(stored)
            if _without_size(chosen) != _without_size(stored_preset):
                logger.warning(
                    "%s %s differs from the preprocessing this model was trained / released with (%s); "
                    "its outputs may be off",
                    option,
                    chosen.name,
                    stored_preset.name,
                )
    elif stored is not None:
        chosen = preset_from_spec(stored)
    else:
        logger.warning(
            "the model stores no preprocessing (saved by an older LaMed?); using the %r preset. "
            "Pass %s to choose another",
            DEFAULT_PRESET,
            option,
        )
        chosen = get_preset(DEFAULT_PRESET)
    if chosen.slices is not None:
        return chosen
    return dataclasses.replace(chosen, size=tuple(int(s) for s in (size or input_size(model))))


def model_input(volume, size: Sequence[int], preset="m3d"):
    """``(1, 1, *size)`` float32 tensor in [0, 1] for a text / CLIP model from a loaded ``Volume``.

    A prepared ``.npy`` (already in [0, 1]) is only resized; anything else goes through ``preset``
    (a name, a stored record or a ``Preset``: window / normalisation, foreground crop) at ``size``.
    """
    import dataclasses

    import numpy as np
    import torch

    arr = np.asarray(volume.array, np.float32)
    size = tuple(int(s) for s in size)
    if volume.meta.get("format") == "npy" and arr.size and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0:
        x = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
        return x if tuple(x.shape[2:]) == size else torch.nn.functional.interpolate(x, size=size, mode="trilinear")
    base = preset if isinstance(preset, Preset) else preset_from_spec(preset)
    out = apply_preset(dataclasses.replace(base, size=size), arr, volume.spacing)
    return torch.from_numpy(np.ascontiguousarray(out["image"], dtype=np.float32))[None]
