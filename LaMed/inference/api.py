"""The Python API: load any LaMed model folder (or hub id) and run it on a scan.

    import LaMed
    seg = LaMed.load("models/segvol")                      # folder or hub id; family from its config
    result = seg.segment("ct.nii.gz", ["liver", "spleen"])  # masks on the source grid of ct.nii.gz
    result.masks["liver"]                                   # bool (D, H, W), canonical order of the scan
    result.save("out/")                                     # NIfTI (or .nrrd, ...) in the source geometry

    vlm = LaMed.load("models/m3d_lamed", dtype="bf16")
    vlm.generate("ct.nii.gz", "Describe the findings.")     # -> str
    clip = LaMed.load("models/m3d_clip")
    clip.similarity("ct.nii.gz", ["hepatomegaly", "normal liver"])  # -> {text: cosine}

Every model applies the preprocessing stored with it (``preset=`` chooses another, with a warning),
in the dtype it was loaded in (``dtype="bf16"`` loads bf16 weights: half the memory of fp32). A
volume is a path (NIfTI, DICOM series folder, NRRD/MHA, prepared ``.npy``) or a
:class:`LaMed.data.io.Volume`. ``lamed predict`` is a thin command over these classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch

from LaMed.data.io import Volume, load_volume
from LaMed.data.prompts import CAPTION_TEMPLATES
from LaMed.inference.checks import check_device, check_prompts, check_text_length, text_position_limit
from LaMed.inference.classify import EncodedPromptSet, classify_from_spec
from LaMed.inference.generate import generate_texts
from LaMed.inference.hub import resolve_model
from LaMed.inference.outputs import write_segmentation
from LaMed.inference.preprocessing import model_input, model_preset
from LaMed.inference.reasoning import load_reasoning_model, predict_question
from LaMed.inference.segment import predict_volume

__all__ = [
    "load",
    "DTYPES",
    "LaMedModel",
    "SegmentationModel",
    "ReportModel",
    "ReasoningModel",
    "ClipModel",
    "Segmentation",
    "resolve_dtype",
]

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

VolumeLike = Union[str, Path, "Volume"]  # noqa: F821  (LaMed.data.io.Volume)


def resolve_dtype(dtype: str | torch.dtype | None, device: str = "cpu", option: str = "dtype") -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` (or a torch dtype) -> ``torch.dtype``; fp16 only on a GPU."""
    if dtype is None:
        return torch.float32
    out = dtype if isinstance(dtype, torch.dtype) else DTYPES.get(str(dtype).lower())
    if out is None:
        raise ValueError(f"{option}: expected one of fp32, bf16, fp16, got {dtype!r}")
    if out == torch.float16 and torch.device(device).type == "cpu":
        raise ValueError(
            f"{option}: fp16 needs a GPU (the CPU lacks float16 kernels for 3D convolutions); use bf16 on the CPU"
        )
    return out


def _volume(volume: VolumeLike, series_uid: str | None = None):

    if isinstance(volume, Volume):
        return volume
    if isinstance(volume, (str, Path)):
        return load_volume(volume, series_uid=series_uid)
    raise TypeError(f"expected a volume path or a LaMed.data.io.Volume, got {type(volume).__name__}")


@dataclasses.dataclass
class Segmentation:
    """Masks of one volume on its source grid (canonical ``(D, H, W)`` order of :class:`Volume`).

    ``masks``: prompt -> bool mask; ``probabilities``: ``(K, D, H, W)`` float16; ``label_map``:
    ``(D, H, W)`` (0 background, k = ``prompts[k - 1]``, the most probable prompt above the threshold);
    ``volume``: the source volume (its geometry is what :meth:`save` writes back).
    """

    prediction: object  # LaMed.inference.segment.SegPrediction
    volume: object

    @property
    def prompts(self) -> list[str]:
        return list(self.prediction.prompts)

    @property
    def masks(self) -> dict[str, np.ndarray]:
        return self.prediction.masks

    @property
    def probabilities(self) -> np.ndarray:
        return self.prediction.probabilities

    @property
    def label_map(self) -> np.ndarray:
        return self.prediction.label_map

    def save(self, out: str | Path, fmt: str = ".nii.gz", overlay: bool = False) -> dict[str, Path]:
        """Write the mask (one prompt) or label map + legend in the source geometry (see
        :func:`LaMed.inference.outputs.write_segmentation`); returns the written paths."""

        return write_segmentation(self.prediction, self.volume, out, fmt=fmt, overlay=overlay)


class LaMedModel:
    """A loaded model, its family's methods, and the preprocessing it applies."""

    model_types: Sequence[str] = ()

    def __init__(self, model, folder: Path, preset=None, processor=None, tokenizer=None):
        self.model = model
        self.folder = folder
        self.processor = processor
        self.tokenizer = tokenizer
        self.requested_preset = preset

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def preprocessing(self):
        """The :class:`~LaMed.data.presets.Preset` this model applies to a scan."""

        return model_preset(self.model, self.requested_preset)

    def prepare(self, volume: VolumeLike, series_uid: str | None = None) -> torch.Tensor:
        """The network input ``(1, 1, D, H, W)`` of ``volume``: the model's preprocessing at its size, on
        its device and in its dtype."""

        preset = self.preprocessing
        return model_input(_volume(volume, series_uid), preset.size, preset).to(self.device, self.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.folder}, {self.model.config.model_type}, {self.dtype})"


class SegmentationModel(LaMedModel):
    """Text-prompted segmentation (SegVol, Text3DSAM, RefSAM3D): :meth:`segment`."""

    model_types = ("lamed_segvol", "lamed_text3dsam", "lamed_refsam3d")

    def segment(
        self,
        volume: VolumeLike,
        prompts: str | Sequence[str],
        zoom_in: bool = True,
        overlap: float = 0.5,
        threshold: float | None = None,
        progress: bool = False,
        series_uid: str | None = None,
    ) -> Segmentation:
        """Masks of ``prompts`` (structure names or sentences) on ``volume``'s source grid."""

        vol = _volume(volume, series_uid)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        pred = predict_volume(
            self.model,
            vol,
            prompts,
            zoom_in=zoom_in,
            overlap=overlap,
            threshold=threshold,
            progress=progress,
            preset=self.requested_preset,
        )
        return Segmentation(pred, vol)


class ReportModel(LaMedModel):
    """Report generation / VQA (M3D-LaMed, Med3DVLM, HSENet): :meth:`generate`."""

    model_types = ("lamed",)

    def generate(
        self,
        volume: VolumeLike,
        question: str | Sequence[str] | None = None,
        max_new_tokens: int = 256,
        decoding: str = "greedy",
        series_uid: str | None = None,
    ):
        """The answer to ``question`` (a string), or to each of several (a list); no question: a report."""

        single = question is None or isinstance(question, str)
        questions = [CAPTION_TEMPLATES[0] if question is None else question] if single else list(question)
        questions = check_prompts(questions, "question")
        x = self.prepare(volume, series_uid)
        answers = generate_texts(
            self.model,
            self.processor,
            x.expand(len(questions), -1, -1, -1, -1),
            questions,
            max_new_tokens=max_new_tokens,
            decoding=decoding,
        )
        return answers[0] if single else answers


class ReasoningModel(LaMedModel):
    """Reasoning segmentation (M3D-LaMed with its seg module, R1Seg-3D): :meth:`ask`."""

    model_types = ("lamed_seg",)

    def ask(
        self,
        volume: VolumeLike,
        question: str,
        zoom_in: bool = True,
        overlap: float = 0.5,
        threshold: float = 0.5,
        max_new_tokens: int = 64,
        series_uid: str | None = None,
    ):
        """``(answer text, [bool mask (D, H, W) per [SEG] of the answer])`` on the source grid."""

        question = check_prompts([question], "question")[0]
        pred = predict_question(
            self.model,
            self.processor,
            _volume(volume, series_uid),
            question,
            zoom_in=zoom_in,
            overlap=overlap,
            threshold=threshold,
            max_new_tokens=max_new_tokens,
            preset=self.requested_preset,
        )
        return pred.answer, list(pred.masks)


class ClipModel(LaMedModel):
    """3D CLIP (M3D-CLIP, Med3DVLM SigLIP, HSENet): :meth:`embed`, :meth:`embed_text`, :meth:`similarity`."""

    model_types = ("lamed_clip",)

    @torch.no_grad()
    def embed(self, volume: VolumeLike, series_uid: str | None = None) -> np.ndarray:
        """The volume's embedding ``(projection_dim,)`` float32 (not normalised)."""
        return self.model.encode_image(self.prepare(volume, series_uid)).float().cpu().numpy()[0]

    @torch.no_grad()
    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Text embeddings ``(N, projection_dim)`` float32; a text longer than the tower takes is refused."""

        texts = check_prompts([texts] if isinstance(texts, str) else list(texts), "texts")
        check_text_length(
            self.tokenizer,
            texts,
            text_position_limit(self.model.text_model, self.tokenizer),
            "texts",
            what="the CLIP text tower",
        )
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        emb = self.model.encode_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        return emb.float().cpu().numpy()

    @torch.no_grad()
    def classify(self, volume: VolumeLike, prompt_set: str = "ct_rate", series_uid: str | None = None) -> dict:
        """Zero-shot per-finding probabilities with a prompt set (``"ct_rate"``, ``"phantom"``, a YAML path;
        ``"SET:STYLE"`` picks a prompt style): see :mod:`LaMed.inference.classify`."""

        return classify_from_spec(
            self.model, self.tokenizer, self.prepare(volume, series_uid), prompt_set, device=self.device
        )

    def classifier(self, prompt_set: str = "ct_rate") -> EncodedPromptSet:
        """The prompt set embedded once (``.score(self.embed(volume))`` per volume): what
        :meth:`classify` computes, without re-encoding the prompts for every volume."""
        return EncodedPromptSet.from_spec(self.model, self.tokenizer, prompt_set, device=self.device)

    def similarity(
        self, volume: VolumeLike, texts: str | Sequence[str], series_uid: str | None = None
    ) -> dict[str, float]:
        """Cosine similarity of the volume with each text, in the order given."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        image = torch.from_numpy(self.embed(volume, series_uid))[None]
        text = torch.from_numpy(self.embed_text(texts))
        sims = torch.nn.functional.cosine_similarity(image, text).tolist()
        return dict(zip([t.strip() for t in texts], sims))


FAMILIES = (SegmentationModel, ReportModel, ReasoningModel, ClipModel)


def _llm_kwargs(device_map: str | None, load_in: str | None) -> dict:
    kwargs: dict = {}
    if device_map:
        kwargs["device_map"] = device_map
    if load_in:
        import importlib.util

        if load_in not in ("4bit", "8bit"):
            raise ValueError(f"load_in: expected '4bit' or '8bit', got {load_in!r}")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                f"load_in={load_in!r} needs the optional package bitsandbytes (pip install bitsandbytes; GPU only)"
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=load_in == "4bit", load_in_8bit=load_in == "8bit"
        )
        kwargs.setdefault("device_map", "auto")
    return kwargs


def load(
    path_or_id: str | Path,
    device: str = "cpu",
    dtype: str | torch.dtype | None = "fp32",
    preset=None,
    device_map: str | None = None,
    load_in: str | None = None,
) -> LaMedModel:
    """Load a LaMed model folder (or a hub id, read from the local cache when offline).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` (ignored for an LLM given ``device_map``).
        dtype: ``fp32`` / ``bf16`` / ``fp16``: the dtype the weights are *loaded* in (and computed in).
        preset: a preprocessing preset to use instead of the stored one (a warning names both).
        device_map: for report / reasoning models, ``"auto"`` spreads the LLM over the visible GPUs
            and offloads what does not fit to the CPU (accelerate).
        load_in: ``"4bit"`` / ``"8bit"`` LLM weights through bitsandbytes (optional, GPU only).
    """
    from transformers import AutoConfig

    import LaMed.models.clip  # noqa: F401  (each import registers its model_type with the Auto classes)
    import LaMed.models.mllm  # noqa: F401
    import LaMed.models.reasoning  # noqa: F401
    import LaMed.models.segmentation  # noqa: F401

    folder = resolve_model(path_or_id)
    check_device(device, "device")
    torch_dtype = resolve_dtype(dtype, device)
    model_type = AutoConfig.from_pretrained(folder).model_type
    family = next((f for f in FAMILIES if model_type in f.model_types), None)
    if family is None:
        known = sorted(t for f in FAMILIES for t in f.model_types)
        raise ValueError(f"{folder}: model_type {model_type!r} is not a LaMed model (known: {', '.join(known)})")
    llm = family in (ReportModel, ReasoningModel)
    if (device_map or load_in) and not llm:
        raise ValueError("device_map / load_in apply to report and reasoning models (their LLM) only")
    extra = _llm_kwargs(device_map, load_in) if llm else {}
    if family is SegmentationModel:
        from LaMed.inference.segment import load_seg_model

        model = load_seg_model(folder, device=device, dtype=torch_dtype)
        return SegmentationModel(model, folder, preset, tokenizer=model.tokenizer)
    if family is ClipModel:
        from LaMed.inference.retrieval import load_clip

        model, tokenizer = load_clip(folder, device=device, dtype=torch_dtype)
        return ClipModel(model.eval(), folder, preset, tokenizer=tokenizer)
    if family is ReportModel:
        from LaMed.inference.generate import load_mllm

        model, processor = load_mllm(folder, dtype=torch_dtype, device=device, **extra)
        return ReportModel(model, folder, preset, processor=processor)

    model, processor = load_reasoning_model(folder, device=device, dtype=torch_dtype, **extra)
    return ReasoningModel(model, folder, preset, processor=processor)
