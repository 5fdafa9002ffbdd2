"""Text generation front end for LaMed multimodal LLMs: volumes + questions in, answers out.

    model, processor = load_mllm("runs/tiny_lamed")
    texts = generate_texts(model, processor, images (B, 1, D, H, W), ["Describe the findings."] * B)

Batched with left padding and the KV cache (the volume is encoded once per prompt). Decoding
presets (:data:`DECODING`) reproduce the published settings: ``greedy`` (default; M3D Bench,
HSENet, FLARE reports), ``m3d_demo`` (sampling, top-p 0.9, T 1), ``med3dvlm`` (pure sampling at
T 1, the setting of Med3DVLM's reported numbers), ``flare_vqa`` (sampling, top-p 0.9). Sampling is
reproducible: the generator is seeded before every batch from ``seed`` and the batch index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from LaMed.models.mllm import LaMedForCausalLM, LaMedProcessor
from LaMed.utils.atomic import atomic_write_text

DECODING: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False},
    "m3d_demo": {"do_sample": True, "temperature": 1.0, "top_p": 0.9},
    "med3dvlm": {"do_sample": True, "temperature": 1.0, "top_p": None},
    "flare_vqa": {"do_sample": True, "temperature": 1.0, "top_p": 0.9},
}


def decoding_kwargs(preset: str = "greedy", **overrides) -> dict[str, Any]:
    """Generation kwargs of a named preset, with overrides (e.g. ``max_new_tokens``)."""
    if preset not in DECODING:
        raise KeyError(f"unknown decoding preset {preset!r}; known: {sorted(DECODING)}")
    out = dict(DECODING[preset])
    out.update(overrides)
    if not out.get("do_sample"):
        out.pop("temperature", None)
        out.pop("top_p", None)
    elif out.get("top_p") is None:
        out["top_p"] = 1.0
    return out


def load_lamed_model(model_class, path: str | Path, dtype=None, device: str = "cpu", **from_pretrained):
    """``(model, processor)`` of a saved LaMed language-model folder (model + ``lamed_processor.json``).

    ``model_class``: :class:`LaMedForCausalLM` or the reasoning-segmentation subclass. ``dtype``: the
    dtype the weights are loaded in (built once in it, see ``LaMed.models.checkpoint_files.load_pretrained``).
    ``from_pretrained``: ``device_map="auto"`` or a ``quantization_config`` go through transformers'
    loader, and with a ``device_map`` the model is not moved to ``device``.
    """
    import torch

    from LaMed.models.checkpoint_files import load_pretrained

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (not a saved LaMed model folder)")
    if from_pretrained:
        model = model_class.from_pretrained(str(path), dtype=dtype or torch.float32, **from_pretrained)
    else:
        model = load_pretrained(model_class, path, dtype or torch.float32)
    model = (model if "device_map" in from_pretrained else model.to(device)).eval()
    processor = LaMedProcessor.from_pretrained(path)
    if processor.num_image_tokens != model.num_image_tokens:
        raise ValueError(
            f"{path}: processor expects {processor.num_image_tokens} image tokens, the model gives "
            f"{model.num_image_tokens}"
        )
    return model, processor


def load_mllm(path: str | Path, dtype=None, device: str = "cpu", **from_pretrained):
    """``(model, processor)`` of a saved report / VQA model folder (see :func:`load_lamed_model`)."""
    return load_lamed_model(LaMedForCausalLM, path, dtype, device, **from_pretrained)


def generate_texts(
    model,
    processor,
    images,
    questions: Sequence[str],
    max_new_tokens: int = 256,
    decoding: str = "greedy",
    seed: int = 0,
    batch_size: int = 8,
    use_cache: bool = True,
    slice_features=None,
    **gen_kwargs,
) -> list[str]:
    """Answers (decoded new tokens, special tokens removed) for ``images[i]`` + ``questions[i]``.

    ``images``: ``(N, C, D, H, W)`` tensor / array, or a list of ``(C, D, H, W)``.
    """
    import torch

    n = len(questions)
    if len(images) != n:
        raise ValueError(f"{len(images)} volume(s) for {n} question(s)")
    kw = decoding_kwargs(decoding, max_new_tokens=max_new_tokens, **gen_kwargs)
    tok = processor.tokenizer
    param = next(model.parameters())
    device, dtype = param.device, param.dtype  # inputs follow the weights' dtype
    out: list[str] = []
    model.eval()
    for b, start in enumerate(range(0, n, batch_size)):
        stop = min(start + batch_size, n)
        vols = torch.stack([torch.as_tensor(images[i]) for i in range(start, stop)]).to(device, dtype)
        batch = processor(list(questions[start:stop]), padding_side="left")
        extra = {}
        if slice_features is not None:
            extra["slice_features"] = torch.stack([torch.as_tensor(slice_features[i]) for i in range(start, stop)]).to(
                device, dtype
            )
        if kw.get("do_sample"):
            torch.manual_seed(seed * 100_003 + b)
        with torch.no_grad():
            ids = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                images=vols,
                pad_token_id=processor.pad_token_id,
                eos_token_id=tok.eos_token_id,
                use_cache=use_cache,
                **extra,
                **kw,
            )
        new = ids[:, batch["input_ids"].shape[1] :]
        out.extend(processor.decode(new))
    return out


def time_generation(
    model, processor, image, question: str, max_new_tokens: int, use_cache: bool = True
) -> tuple[float, float, int]:
    """``(time to first token s, tokens per second after it, new tokens)`` for one greedy generation
    that is forced to run ``max_new_tokens`` steps (EOS ignored)."""
    import time

    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class _Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    batch = processor([question])
    vol = torch.as_tensor(image).float()[None]
    start = time.perf_counter()
    with torch.no_grad():
        ids = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            images=vol,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=processor.pad_token_id,
            stopping_criteria=StoppingCriteriaList([_Stamp()]),
        )
    new = ids.shape[1] - batch["input_ids"].shape[1]
    ttft = stamps[0] - start
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")
    return ttft, rate, new


def predict_dataset(
    model,
    processor,
    dataset,
    max_new_tokens: int = 256,
    decoding: str = "greedy",
    seed: int = 0,
    batch_size: int = 8,
    limit: int | None = None,
    **gen_kwargs,
) -> list[dict[str, Any]]:
    """Run ``generate_texts`` over an evaluation :class:`~LaMed.data.mllm_dataset.MLLMDataset`
    (built with ``train=False``); returns its records with a ``"prediction"`` field added.
    Volumes are read one batch at a time."""
    import torch

    n = len(dataset) if limit is None else min(limit, len(dataset))
    out: list[dict[str, Any]] = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        recs = [dataset.record(i) for i in idx]
        vols = torch.stack([dataset.load_image(i) for i in idx])
        texts = generate_texts(
            model,
            processor,
            vols,
            [r["question"] for r in recs],
            max_new_tokens=max_new_tokens,
            decoding=decoding,
            seed=seed * 7 + start,
            batch_size=len(idx),
            **gen_kwargs,
        )
        for r, t in zip(recs, texts):
            out.append({**r, "prediction": t})
    return out


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> Path:
    """Write ``rows`` (only ``keys``) as JSON lines; returns the path."""
    import json

    text = "".join(json.dumps({k: r[k] for k in keys if k in r}) + "\n" for r in rows)
    return atomic_write_text(path, text)


__all__ = [
    "DECODING",
    "decoding_kwargs",
    "load_mllm",
    "generate_texts",
    "time_generation",
    "predict_dataset",
    "write_jsonl",
]
