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
   All prompts of a call go in one pass (:func:`zoom_in_regions`): each distinct window position is
   encoded once and every prompt visiting it is decoded in one batch, so K prompts cost about one
   encoding pass, not K (``Bench/perf/multi_prompt.py``).
   When the zoom-out finds nothing the zoom-in is skipped and the zoom-out result kept
   (SegVol's "Fail to detect foreground"); ``SegPrediction.fallback`` lists those prompts;
3. the crop is pasted back into the full canonical grid, so the masks map to the source file with
   ``LaMed.data.io.save_volume(..., like=volume)``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from LaMed.data.presets import Preset, apply_preset, preset_from_spec
from LaMed.inference.checks import check_overlap, check_prompts, check_text_length, check_threshold, text_position_limit
from LaMed.inference.hub import resolve_model
from LaMed.inference.preprocessing import model_preset
from LaMed.inference.presence import decide, presence_scores
from LaMed.inference.sliding_window import dense_windows, sliding_window_inference
from LaMed.inference.spatial_prompts import (
    Frame,
    SegPrompt,
    as_prompt,
    check_prompt,
    prompt_in_frame,
    window_frame,
    zoom_out_frame,
)
from LaMed.models.checkpoint_files import load_pretrained
from LaMed.models.segmentation.base import Prompts
from LaMed.models.segmentation.common import upsample_logits

logger = logging.getLogger("LaMed.inference")

SEG_MODEL_TYPES = ("lamed_segvol", "lamed_text3dsam", "lamed_refsam3d")


def load_seg_model(path_or_id: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a segmentation model (folder or hub id) in eval mode; its tokenizer, when saved beside
    it, is attached as ``model.tokenizer``."""

    folder = resolve_model(path_or_id)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    import LaMed.models.segmentation  # noqa: F401  (registers the Auto classes)

    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in SEG_MODEL_TYPES:
        raise ValueError(
            f"{folder}: model_type {config.model_type!r} is not a segmentation model "
            f"(expected one of {SEG_MODEL_TYPES})"
        )

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
    native: torch.Tensor | None
    crop: tuple[int, int, int, int, int, int]


def preprocess(volume, img_size: Sequence[int], preset, native: bool = True) -> Preprocessed:
    """Apply the preset (a name, a stored record or a ``Preset``) at network size and, with ``native``,
    again at the crop's own size."""

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


def _roi(mask: torch.Tensor, window: Sequence[int]) -> tuple[slice, ...] | None:
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


def check_seg_prompts(model, prompts: Sequence[str]) -> list[str]:
    """The prompts, stripped; an empty one, or one longer than the model's text tower takes, is refused
    (the tower would otherwise fail deep inside, or the mask would be labelled "")."""

    prompts = check_prompts(prompts, "--prompt")
    encoder = getattr(model, "text_encoder", None)
    tokenizer = getattr(model, "tokenizer", None)
    if encoder is not None and tokenizer is not None:
        limit = text_position_limit(getattr(encoder, "model", encoder), tokenizer)
        check_text_length(
            tokenizer, [model.prompt_text(p) for p in prompts], limit, "--prompt", what="the model's text encoder"
        )
    return prompts


def _text_prompts(model, texts: Sequence[str], device) -> dict[str, torch.Tensor]:
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
def segment_prepared(
    model,
    volume: torch.Tensor,
    texts: Sequence[str],
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    progress: bool = False,
    return_logits: bool = False,
) -> np.ndarray:
    """Probabilities ``(K, D, H, W)`` float32 of K text prompts on an already prepared volume
    ``(1, 1, D, H, W)`` in [0, 1] (a prepared ``.npy``): sliding windows of the model's input size (one
    window when the volume is that size), each window encoded once and decoded for every prompt.
    ``return_logits=True``: the logits instead (what the presence score reads)."""

    param = next(model.parameters())
    prompts = text_prompts(model, list(texts))
    index = torch.zeros(len(texts), dtype=torch.long, device=param.device)

    def predictor(windows, origins):
        outs = []
        for w in windows:
            low = model.decode(model.encode_image(w[None]), prompts, image_index=index)
            outs.append(upsample_logits(low, w.shape[1:])[:, 0])
        return torch.stack(outs)

    logits = sliding_window_inference(
        volume.to(param.device, param.dtype),
        tuple(model.config.img_size),
        predictor,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        progress=progress,
    )
    return (logits[0].float() if return_logits else torch.sigmoid(logits[0].float())).cpu().numpy()


def _signature(p: Prompts) -> tuple:
    """Which fields of a ``Prompts`` are set, and their per-row shapes: rows of one signature can be
    stacked and decoded together without padding (padding points would change the decode)."""
    return tuple(
        None if getattr(p, f.name) is None else tuple(getattr(p, f.name).shape[1:]) for f in dataclasses.fields(Prompts)
    )


def _stack_prompts(rows: Sequence[Prompts]) -> Prompts:
    return Prompts(
        **{
            f.name: None if getattr(rows[0], f.name) is None else torch.cat([getattr(r, f.name) for r in rows])
            for f in dataclasses.fields(Prompts)
        }
    )


def decode_rows(model, features, rows: Sequence[tuple[int, Prompts]]) -> list[torch.Tensor]:
    """Low-resolution logits ``(1, d', h', w')`` of each ``(image index, one-row Prompts)``: rows of one
    signature (same prompt kinds, same number of points) are decoded as one batch."""

    device = next(model.parameters()).device
    groups: dict[tuple, list[int]] = {}
    for i, (_, row) in enumerate(rows):
        groups.setdefault(_signature(row), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(rows)
    for members in groups.values():
        index = torch.as_tensor([rows[i][0] for i in members], dtype=torch.long, device=device)
        low = model.decode(features, _stack_prompts([rows[i][1] for i in members]), image_index=index)
        for i, row in zip(members, low):
            out[i] = row
    return out


class _PromptRows:
    """The prompts of one call, ready for any frame: texts encoded once, spatial parts mapped per frame
    (:func:`~LaMed.inference.spatial_prompts.prompt_in_frame`)."""

    def __init__(self, model, queries: Sequence[SegPrompt], crop_start: Sequence[int]):
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.queries, self.crop_start = list(queries), tuple(crop_start)
        texts = [q.text for q in self.queries if q.text is not None]
        self.text = None
        if texts:
            self.text = text_prompts(model, texts)
        order = iter(range(len(texts)))
        self.text_row = [None if q.text is None else next(order) for q in self.queries]

    def row(self, k: int, frame: Frame) -> Prompts | None:
        t = self.text_row[k]
        text = None if t is None else _index_prompts(self.text, [t])
        if not self.queries[k].spatial:
            return text
        return prompt_in_frame(self.queries[k], frame, text, self.device, self.dtype)

    def window(self, k: int, origin: Sequence[int], size: Sequence[int]) -> Prompts | None:
        return self.row(k, window_frame(self.crop_start, origin, size))


@torch.no_grad()
def zoom_out_zoom_in(
    model,
    pre: Preprocessed,
    texts: Sequence,
    zoom_in: bool = True,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    progress: bool = False,
) -> tuple[torch.Tensor, list[str]]:
    """Logits ``(K, *crop_shape)`` for K prompts (texts or :class:`SegPrompt`; see the module
    docstring); second value: the labels of the prompts whose zoom-in was skipped because the
    zoom-out found nothing."""

    queries = [as_prompt(t) for t in texts]
    param = next(model.parameters())
    device, dtype = param.device, param.dtype  # inputs follow the weights (loaded in bf16 -> computed in bf16)
    img_size = tuple(model.config.img_size)
    rows = _PromptRows(model, queries, pre.crop[:3])
    frame = zoom_out_frame(pre.crop, img_size)
    first = [rows.row(k, frame) for k in range(len(queries))]
    for q, r in zip(queries, first):
        if r is None:
            raise ValueError(
                f"{q.origin or f'prompt {q.label!r}'}: its box / points lie outside the body (foreground crop "
                f"{pre.crop[:3]}-{pre.crop[3:]} in canonical voxels), where nothing is segmented"
            )
    features = model.encode_image(pre.zoom_out.to(device, dtype))
    low = torch.stack(decode_rows(model, features, [(0, r) for r in first]))
    crop_shape = tuple(b - a for a, b in zip(pre.crop[:3], pre.crop[3:]))
    logits = upsample_logits(upsample_logits(low, img_size), crop_shape)[:, 0].float()
    fallback: list[str] = []
    if not zoom_in or pre.native is None:
        return logits, fallback
    native = pre.native.to(device, dtype)
    thr = float(model.config.threshold)
    logit_thr = float(np.log(thr / (1.0 - thr)))
    rois: list[tuple[slice, ...] | None] = []
    for i, q in enumerate(queries):
        rois.append(_roi(logits[i] > logit_thr, img_size))
        if rois[-1] is None:
            logger.info("zoom-in skipped for %r: the zoom-out prediction is empty", q.label)
            fallback.append(q.label)
    todo = [i for i, r in enumerate(rois) if r is not None]
    if todo:
        regions = zoom_in_regions(
            model,
            native,
            [rois[i] for i in todo],
            None,
            overlap,
            sw_batch_size,
            progress,
            window_prompt=lambda k, origin: rows.window(todo[k], origin, img_size),
            base=[logits[i] for i in todo],
        )
        for i, region in zip(todo, regions):
            logits[i][rois[i]] = region
    return logits, fallback


def _index_prompts(prompts, rows: Sequence[int]):
    """The ``Prompts`` of the given rows (every field that is set)."""

    idx = torch.as_tensor(list(rows), dtype=torch.long)
    return Prompts(
        **{
            f.name: (
                None
                if getattr(prompts, f.name) is None
                else getattr(prompts, f.name)[idx.to(getattr(prompts, f.name).device)]
            )
            for f in dataclasses.fields(Prompts)
        }
    )


def _windows_of(roi: tuple[slice, ...], window: Sequence[int], overlap: float) -> list[tuple[int, int, int]]:
    """Window starts, in native-crop voxels, that sliding-window inference over ``native[roi]`` visits
    (the placement rule of :func:`~LaMed.inference.sliding_window.sliding_window_inference`)."""

    size = [s.stop - s.start for s in roi]
    pad = [max(w - n, 0) // 2 for w, n in zip(window, size)]
    padded = [max(w, n) for w, n in zip(window, size)]
    return [
        tuple(s.start + w.start - p for s, w, p in zip(roi, win, pad))
        for win in dense_windows(padded, list(window), overlap)
    ]


@torch.no_grad()
def zoom_in_regions(
    model,
    native: torch.Tensor,
    rois: Sequence[tuple[slice, ...]],
    prompts,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    progress: bool = False,
    window_prompt=None,
    base: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Zoom-in logits of K prompts at once: entry k is ``roi_k``-shaped, the result of sliding windows
    over ``native[..., roi_k]`` with prompt k (``prompts``: K rows, ``native``: ``(1, 1, *crop)``).

    Every window position that any prompt's sliding window visits is cut and encoded once, and all
    prompts whose region visits it are decoded in one batch; each prompt's windows are then blended
    exactly as :func:`zoom_in_region` would blend them, so the result equals K calls of it (within
    float round-off of a batched decode) at the cost of one encoding per distinct window.
    A region narrower than the window on some axis spans the whole crop on it (the rule of
    :func:`_roi`), so its padded windows are the same for every prompt.

    Box / point prompts differ per window: ``window_prompt(k, origin)`` gives prompt k's row in the
    window at ``origin`` (crop voxels), or ``None`` when nothing of it reaches the window, which then
    keeps ``base[k]`` (the crop-shaped zoom-out logits) there. ``prompts`` (K rows, the same in every
    window) is used when ``window_prompt`` is not given.
    """
    if window_prompt is None:

        def window_prompt(k, origin):
            return _index_prompts(prompts, [k])

    window = tuple(int(w) for w in model.config.img_size)
    crop = native.shape[2:]
    for roi in rois:
        for s, w, n in zip(roi, window, crop):
            if s.stop - s.start < w and (s.start, s.stop) != (0, n):
                raise ValueError(
                    f"zoom_in_regions: region {roi} is narrower than the window {window} "
                    "without spanning the crop (use _roi)"
                )
    users: dict[tuple[int, int, int], list[int]] = {}
    for k, roi in enumerate(rois):
        for origin in _windows_of(roi, window, overlap):
            users.setdefault(origin, []).append(k)
    pad_before = [max(w - n, 0) // 2 for w, n in zip(window, crop)]
    pads = []
    for w, n, p in zip(reversed(window), reversed(list(crop)), reversed(pad_before)):
        pads += [p, max(w - n, 0) - p]
    padded = torch.nn.functional.pad(native, pads) if any(pads) else native
    cache: dict[tuple[tuple[int, int, int], int], torch.Tensor] = {}
    padded_base: dict[int, torch.Tensor] = {}
    origins = list(users)
    step = max(int(sw_batch_size), 1)
    iterator = range(0, len(origins), step)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="windows", leave=False)
    for start in iterator:
        chunk = origins[start : start + step]
        batch = torch.cat(
            [
                padded[
                    (slice(None), slice(None))
                    + tuple(slice(o + p, o + p + w) for o, p, w in zip(origin, pad_before, window))
                ]
                for origin in chunk
            ]
        )
        pairs = [(j, k, window_prompt(k, origin)) for j, origin in enumerate(chunk) for k in users[origin]]
        for j, k, row in pairs:
            if row is None:  # nothing of prompt k in this window: it keeps the zoom-out logits there
                if k not in padded_base:
                    padded_base[k] = torch.nn.functional.pad(base[k][None, None].float(), pads)[0]
                o = [a + p for a, p in zip(chunk[j], pad_before)]
                cache[(chunk[j], k)] = padded_base[k][
                    (slice(None),) + tuple(slice(c, c + w) for c, w in zip(o, window))
                ]
        decodable = [(j, k, row) for j, k, row in pairs if row is not None]
        if decodable:
            features = model.encode_image(batch)
            low = decode_rows(model, features, [(j, row) for j, _, row in decodable])
            up = upsample_logits(torch.stack(low), window).float()
            for (j, k, _), row in zip(decodable, up):
                cache[(chunk[j], k)] = row
    out = []
    for k, roi in enumerate(rois):
        start = tuple(s.start for s in roi)

        def predictor(windows, rel, k=k, start=start):
            return torch.stack([cache.pop((tuple(a + o for a, o in zip(start, r)), k)) for r in rel])

        region = native[(slice(None), slice(None)) + tuple(roi)]
        out.append(
            sliding_window_inference(
                region, window, predictor, overlap=overlap, sw_batch_size=len(_windows_of(roi, window, overlap))
            )[0, 0]
        )
    return out


def zoom_in_region(
    model,
    native: torch.Tensor,
    roi: tuple[slice, ...],
    prompt,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    progress: bool = False,
) -> torch.Tensor:
    """Logits ``roi``-shaped of one prompt (a one-row ``Prompts``) by sliding windows of the model's
    input size over ``native[..., roi]`` (``native``: the crop at native resolution, ``(1, 1, *crop)``);
    :func:`zoom_in_regions` with one region."""
    return zoom_in_regions(model, native, [roi], prompt, overlap, sw_batch_size, progress)[0]


@dataclass
class SegPrediction:
    """Result of :func:`predict_volume` on the canonical grid of the input ``Volume``.

    ``probabilities`` ``(K, D, H, W)`` float16; ``masks`` name -> bool ``(D, H, W)``;
    ``label_map`` ``(D, H, W)`` uint8/uint16 (0 background, k = ``prompts[k - 1]``, the most probable
    prompt above the threshold, among the prompts reported present: where prompts overlap the
    highest probability wins); ``legend`` ``{k: prompt}``; ``fallback``: prompts whose zoom-in was
    skipped; ``presence`` prompt -> presence probability and ``present`` prompt -> bool
    (:mod:`LaMed.inference.presence`): a prompt reported absent has an empty mask; ``queries``: the
    checked prompts (text, box, points in canonical voxels). ``prompts`` are their labels.
    """

    prompts: list[str]
    probabilities: np.ndarray
    masks: dict[str, np.ndarray]
    label_map: np.ndarray
    legend: dict[int, str]
    fallback: list[str] = field(default_factory=list)
    presence: dict[str, float] = field(default_factory=dict)
    present: dict[str, bool] = field(default_factory=dict)
    queries: list[SegPrompt] = field(default_factory=list)


def check_queries(model, prompts: Sequence, volume) -> list[SegPrompt]:
    """The prompts (texts or :class:`SegPrompt`) as checked ``SegPrompt`` in canonical voxels of
    ``volume``: texts as :func:`check_seg_prompts` wants them, boxes / points inside the volume and
    only for a model with point / box embeddings, labels distinct (they name the masks)."""

    queries = [check_prompt(as_prompt(p), volume, f"prompt {i + 1}") for i, p in enumerate(prompts)]
    texts = check_seg_prompts(model, [q.text for q in queries if q.text is not None])
    it = iter(texts)
    queries = [q if q.text is None else dataclasses.replace(q, text=next(it)) for q in queries]
    if any(q.spatial for q in queries) and not getattr(model.config, "point_prompts", True):
        raise ValueError(
            f"{type(model).__name__} was built without point / box prompt embeddings "
            "(config.point_prompts = false, as R1Seg-3D's decoder): give text prompts only"
        )
    seen: set[str] = set()
    for q in queries:
        if q.label in seen:
            raise ValueError(f"two prompts are labelled {q.label!r}: give each a distinct name (it names the mask)")
        seen.add(q.label)
    return queries


def predict_volume(
    model,
    volume,
    prompts: Sequence,
    zoom_in: bool = True,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    threshold: float | None = None,
    progress: bool = False,
    preset=None,
) -> SegPrediction:
    """Segment ``prompts`` in ``volume`` (a ``LaMed.data.io.Volume``): structure names or sentences, or
    :class:`~LaMed.inference.spatial_prompts.SegPrompt` (text, box, points; in canonical voxels, file
    voxels or RAS / LPS mm).
    Outputs are keyed by each prompt's label (its text, or its name).

    ``preset``: the preprocessing (a name, a record or a ``Preset``); default: the one the model stores.
    """

    if not list(prompts):
        raise ValueError("predict_volume: give at least one prompt")
    queries = check_queries(model, list(prompts), volume)
    labels = [q.label for q in queries]
    overlap = check_overlap(overlap, "overlap")
    thr = float(model.config.threshold if threshold is None else check_threshold(threshold, "threshold"))
    pre = preprocess(volume, model.config.img_size, model_preset(model, preset), native=zoom_in)
    logits, fallback = zoom_out_zoom_in(model, pre, queries, zoom_in, overlap, sw_batch_size, progress)
    probs = np.zeros((len(queries),) + tuple(volume.shape), np.float16)
    box = tuple(slice(a, b) for a, b in zip(pre.crop[:3], pre.crop[3:]))
    probs[(slice(None),) + box] = torch.sigmoid(logits).cpu().numpy().astype(np.float16)

    # The calibration is fitted on text prompts; a box or points assert where the structure is, so such
    # a prompt is present exactly when its mask is non-empty (the uncalibrated rule).
    spatial = np.array([q.spatial for q in queries])
    presence, present = decide(model.config, presence_scores(logits), thr, calibrated=~spatial)
    # absent prompts take no part in the label map: their probabilities are kept, their masks are empty
    voting = np.where(present[:, None, None, None], probs, np.float16(0))
    best = voting.argmax(0)
    label_map = np.where(voting.max(0) > thr, best + 1, 0).astype(np.uint8 if len(queries) < 255 else np.uint16)
    masks = {p: (voting[i] > thr) for i, p in enumerate(labels)}
    return SegPrediction(
        labels,
        probs,
        masks,
        label_map,
        {i + 1: p for i, p in enumerate(labels)},
        fallback,
        {p: float(presence[i]) for i, p in enumerate(labels)},
        {p: bool(present[i]) for i, p in enumerate(labels)},
        queries,
    )
