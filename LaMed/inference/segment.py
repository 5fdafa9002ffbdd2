"""Text-prompted segmentation of one volume: preprocessing, zoom-out-zoom-in, masks on the source grid.

``predict_volume(model, volume, ["liver", "spleen"])`` runs SegVol's scheme (code
BAAI-DCAI/SegVol, arXiv 2311.13385) for any model of ``LaMed.models.segmentation``:

1. **zoom-out**: the model's preprocessing preset (``config.preprocess_preset`` with its size
   replaced by ``config.img_size``: intensity normalisation, foreground crop, resize) gives one
   network-size volume; it is encoded once and decoded for every prompt; the logits are resized
   (trilinear) to the foreground crop at native resolution;
2. **zoom-in** (per prompt): the box of the zoom-out mask, enlarged to at least one window per axis
   (half the shortfall on each side, clamped), is cut from the native-resolution crop and run with
   :func:`~LaMed.inference.sliding_window.sliding_window_inference` (window = ``img_size``,
   overlap 0.5), the same prompt in every window; its logits replace the zoom-out logits there.
   When the zoom-out finds nothing the zoom-in is skipped and the zoom-out result kept
   (SegVol's "Fail to detect foreground"); ``SegPrediction.fallback`` lists those prompts;
3. the crop is pasted back into the full canonical grid, so the masks map to the source file with
   ``LaMed.data.io.save_volume(..., like=volume)``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from LaMed.inference.sliding_window import sliding_window_inference

logger = logging.getLogger("LaMed.inference")

SEG_MODEL_TYPES = ("lamed_segvol", "lamed_text3dsam", "lamed_refsam3d")


def load_seg_model(path_or_id: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """Load a segmentation model (folder or hub id) in eval mode; its tokenizer, when saved beside
    it, is attached as ``model.tokenizer``."""
    from LaMed.inference.hub import resolve_model

    folder = resolve_model(path_or_id)
    import LaMed.models.segmentation  # noqa: F401  (registers the Auto classes)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in SEG_MODEL_TYPES:
        raise ValueError(f"{folder}: model_type {config.model_type!r} is not a segmentation model "
                         f"(expected one of {SEG_MODEL_TYPES})")
    from LaMed.models.checkpoint_files import load_pretrained

    model_class = AutoModel._model_mapping[type(config)]
    model = load_pretrained(model_class, folder, dtype or torch.float32).to(device).eval()
    has_tok = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    model.tokenizer = AutoTokenizer.from_pretrained(folder) if has_tok else None
    return model


@dataclass
class Preprocessed:
    """Network inputs of one volume: ``zoom_out`` ``(1, 1, *img_size)`` and ``native``
    ``(1, 1, *crop_shape)`` in [0, 1]; ``crop`` ``(d0, h0, w0, d1, h1, w1)`` in canonical voxels."""

    zoom_out: torch.Tensor
    native: Optional[torch.Tensor]
    crop: Tuple[int, int, int, int, int, int]


def preprocess(volume, img_size: Sequence[int], preset, native: bool = True) -> Preprocessed:
    """Apply the preset (a name, a stored record or a ``Preset``) at network size and, with ``native``,
    again at the crop's own size."""
    from LaMed.data.presets import Preset, apply_preset, preset_from_spec

    base = preset if isinstance(preset, Preset) else preset_from_spec(preset)
    preset = dataclasses.replace(base, size=tuple(int(s) for s in img_size))
    zo = apply_preset(preset, volume.array, volume.spacing)
    crop = tuple(int(c) for c in zo["crop"])
    nat = None
    if native and preset.spacing is None and preset.slices is None:
        shape = tuple(b - a for a, b in zip(crop[:3], crop[3:]))
        res = apply_preset(dataclasses.replace(preset, size=shape), volume.array, volume.spacing)
        if tuple(res["crop"]) != crop:  # same rule on the same data: cannot differ, but never paste misaligned
            raise RuntimeError(f"{volume.path}: native crop {res['crop']} differs from the zoom-out crop {crop}")
        nat = torch.from_numpy(np.ascontiguousarray(res["image"]))[None]
    return Preprocessed(torch.from_numpy(np.ascontiguousarray(zo["image"]))[None], nat, crop)


def _roi(mask: torch.Tensor, window: Sequence[int]) -> Optional[Tuple[slice, ...]]:
    """Box of ``mask`` (3D bool) enlarged to at least ``window`` per axis, clamped to the volume."""
    idx = mask.nonzero()
    if idx.numel() == 0:
        return None
    out = []
    for ax, w in enumerate(window):
        n = mask.shape[ax]
        lo, hi = int(idx[:, ax].min()), int(idx[:, ax].max()) + 1
        short = max(w - (hi - lo), 0)
        lo, hi = lo - short // 2, hi + (short - short // 2)
        if lo < 0:
            hi, lo = min(hi - lo, n), 0
        if hi > n:
            lo, hi = max(lo - (hi - n), 0), n
        out.append(slice(lo, hi))
    return tuple(out)


def check_seg_prompts(model, prompts: Sequence[str]) -> List[str]:
    """The prompts, stripped; an empty one, or one longer than the model's text tower takes, is refused
    (the tower would otherwise fail deep inside, or the mask would be labelled "")."""
    from LaMed.inference.checks import check_prompts, check_text_length, text_position_limit

    prompts = check_prompts(prompts, "--prompt")
    encoder = getattr(model, "text_encoder", None)
    tokenizer = getattr(model, "tokenizer", None)
    if encoder is not None and tokenizer is not None:
        limit = text_position_limit(getattr(encoder, "model", encoder), tokenizer)
        check_text_length(tokenizer, [model.prompt_text(p) for p in prompts], limit, "--prompt",
                          what="the model's text encoder")
    return prompts


def _text_prompts(model, texts: Sequence[str], device) -> Dict[str, torch.Tensor]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("the model has no tokenizer (save one beside it, or set model.tokenizer)")
    enc = tok([model.prompt_text(t) for t in texts], padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def text_prompts(model, texts: Sequence[str]):
    """The :class:`~LaMed.models.segmentation.base.Prompts` of ``texts`` (each through the model's own
    template and tokenizer), encoded once on the model's device."""
    device = next(model.parameters()).device
    enc = _text_prompts(model, texts, device)
    return model.encode_prompts(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])


@torch.no_grad()
def segment_prepared(model, volume: torch.Tensor, texts: Sequence[str], overlap: float = 0.5,
                     sw_batch_size: int = 1, progress: bool = False) -> np.ndarray:
    """Probabilities ``(K, D, H, W)`` float32 of K text prompts on an already prepared volume
    ``(1, 1, D, H, W)`` in [0, 1] (a prepared ``.npy``): sliding windows of the model's input size (one
    window when the volume is that size), each window encoded once and decoded for every prompt."""
    from LaMed.models.segmentation.common import upsample_logits

    param = next(model.parameters())
    prompts = text_prompts(model, list(texts))
    index = torch.zeros(len(texts), dtype=torch.long, device=param.device)

    def predictor(windows, origins):
        outs = []
        for w in windows:
            low = model.decode(model.encode_image(w[None]), prompts, image_index=index)
            outs.append(upsample_logits(low, w.shape[1:])[:, 0])
        return torch.stack(outs)

    logits = sliding_window_inference(volume.to(param.device, param.dtype), tuple(model.config.img_size), predictor,
                                      overlap=overlap, sw_batch_size=sw_batch_size, progress=progress)
    return torch.sigmoid(logits[0].float()).cpu().numpy()


@torch.no_grad()
def zoom_out_zoom_in(model, pre: Preprocessed, texts: Sequence[str], zoom_in: bool = True, overlap: float = 0.5,
                     sw_batch_size: int = 1, progress: bool = False) -> Tuple[torch.Tensor, List[str]]:
    """Logits ``(K, *crop_shape)`` for K text prompts (see module docstring); second value: the
    prompts whose zoom-in was skipped because the zoom-out found nothing."""
    from LaMed.models.segmentation.base import Prompts
    from LaMed.models.segmentation.common import upsample_logits

    param = next(model.parameters())
    device, dtype = param.device, param.dtype  # inputs follow the weights (loaded in bf16 -> computed in bf16)
    img_size = tuple(model.config.img_size)
    x = pre.zoom_out.to(device, dtype)
    enc = _text_prompts(model, texts, device)
    prompts = model.encode_prompts(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    k = len(texts)
    features = model.encode_image(x)
    low = model.decode(features, prompts, image_index=torch.zeros(k, dtype=torch.long, device=device))
    crop_shape = tuple(b - a for a, b in zip(pre.crop[:3], pre.crop[3:]))
    logits = upsample_logits(upsample_logits(low, img_size), crop_shape)[:, 0].float()
    fallback: List[str] = []
    if not zoom_in or pre.native is None:
        return logits, fallback
    native = pre.native.to(device, dtype)
    thr = float(model.config.threshold)
    logit_thr = float(np.log(thr / (1.0 - thr)))
    for i, text in enumerate(texts):
        roi = _roi(logits[i] > logit_thr, img_size)
        if roi is None:
            logger.info("zoom-in skipped for %r: the zoom-out prediction is empty", text)
            fallback.append(text)
            continue
        one = Prompts(*(None if t is None else t[i:i + 1] for t in (prompts.text_embedding, prompts.text_tokens, prompts.text_mask)))
        logits[i][roi] = zoom_in_region(model, native, roi, one, overlap, sw_batch_size, progress)
    return logits, fallback


def zoom_in_region(model, native: torch.Tensor, roi: Tuple[slice, ...], prompt, overlap: float = 0.5,
            sw_batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """Logits ``roi``-shaped of one prompt (a one-row ``Prompts``) by sliding windows of the model's
    input size over ``native[..., roi]`` (``native``: the crop at native resolution, ``(1, 1, *crop)``)."""
    from LaMed.models.segmentation.base import Prompts
    from LaMed.models.segmentation.common import upsample_logits

    fields = (prompt.text_embedding, prompt.text_tokens, prompt.text_mask)

    def predictor(windows: torch.Tensor, origins) -> torch.Tensor:
        n = windows.shape[0]
        rep = Prompts(*(None if t is None else t.expand(n, *t.shape[1:]) for t in fields))
        return upsample_logits(model.decode(model.encode_image(windows), rep), windows.shape[2:])

    region = native[(slice(None), slice(None)) + tuple(roi)]
    return sliding_window_inference(region, tuple(model.config.img_size), predictor, overlap=overlap,
                                    sw_batch_size=sw_batch_size, progress=progress)[0, 0]


@dataclass
class SegPrediction:
    """Result of :func:`predict_volume` on the canonical grid of the input ``Volume``.

    ``probabilities`` ``(K, D, H, W)`` float16; ``masks`` name -> bool ``(D, H, W)``;
    ``label_map`` ``(D, H, W)`` uint8/uint16 (0 background, k = ``prompts[k - 1]``, the most probable
    prompt above the threshold); ``legend`` ``{k: prompt}``; ``fallback``: prompts whose zoom-in
    was skipped.
    """

    prompts: List[str]
    probabilities: np.ndarray
    masks: Dict[str, np.ndarray]
    label_map: np.ndarray
    legend: Dict[int, str]
    fallback: List[str] = field(default_factory=list)


def predict_volume(model, volume, prompts: Sequence[str], zoom_in: bool = True, overlap: float = 0.5,
                   sw_batch_size: int = 1, threshold: Optional[float] = None, progress: bool = False,
                   preset=None) -> SegPrediction:
    """Segment ``prompts`` (structure names or sentences) in ``volume`` (a ``LaMed.data.io.Volume``).

    ``preset``: the preprocessing (a name, a record or a ``Preset``); default: the one the model stores.
    """
    from LaMed.inference.preprocessing import model_preset

    from LaMed.inference.checks import check_overlap, check_threshold

    if not list(prompts):
        raise ValueError("predict_volume: give at least one prompt")
    prompts = check_seg_prompts(model, list(prompts))
    overlap = check_overlap(overlap, "overlap")
    thr = float(model.config.threshold if threshold is None else check_threshold(threshold, "threshold"))
    pre = preprocess(volume, model.config.img_size, model_preset(model, preset), native=zoom_in)
    logits, fallback = zoom_out_zoom_in(model, pre, prompts, zoom_in, overlap, sw_batch_size, progress)
    probs = np.zeros((len(prompts),) + tuple(volume.shape), np.float16)
    box = tuple(slice(a, b) for a, b in zip(pre.crop[:3], pre.crop[3:]))
    probs[(slice(None),) + box] = torch.sigmoid(logits).cpu().numpy().astype(np.float16)
    best = probs.argmax(0)
    label_map = np.where(probs.max(0) > thr, best + 1, 0).astype(np.uint8 if len(prompts) < 255 else np.uint16)
    masks = {p: probs[i] > thr for i, p in enumerate(prompts)}
    return SegPrediction(prompts, probs, masks, label_map, {i + 1: p for i, p in enumerate(prompts)}, fallback)
