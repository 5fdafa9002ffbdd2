"""``lamed import --verify``: the checks of an imported release that need no reference code.

1. keys: every published tensor loaded strictly or dropped on purpose (named, with the reason);
2. size: the number of values in the released file against the published count
   (:data:`LaMed.models.convert.published.PUBLISHED`; a difference means another variant, e.g. a
   fine-tune of other sizes, or a damaged download: reported, not an error);
3. forward: one synthetic CT phantom (``LaMed.data.phantom``) at the model's input size through the
   model; every output must be finite;
4. LLM releases: a short greedy continuation of a report prompt (new tokens decoded, logits finite).

The result renders as a one-screen report; ``ok`` is False when a check of 1, 3 or 4 fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LaMed.data.phantom import make_phantom
from LaMed.inference.generate import generate_texts
from LaMed.models.convert.published import PUBLISHED, quirks_on
from LaMed.models.convert.releases import RELEASES, TOKENIZER_FILES
from LaMed.models.mllm import LaMedProcessor

PROMPT = "Describe the findings of the medical image you see."


@dataclass
class VerifyResult:
    family: str
    checks: list[tuple[str, str, str]] = field(default_factory=list)  # (name, PASS | FAIL | WARN, detail)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append((name, status, detail))

    @property
    def ok(self) -> bool:
        return all(status != "FAIL" for _, status, _ in self.checks)

    def render(self) -> str:
        lines = [f"lamed import --verify: {self.family}"]
        for name, status, detail in self.checks:
            first, *rest = detail.split("\n")
            lines.append(f"  [{status}] {name:8s} {first}")
            lines += [f"  {'':16s}{r}" for r in rest]
        lines.append("  result: " + ("all checks passed" if self.ok else "FAILED"))
        return "\n".join(lines)


def phantom_volume(size: Sequence[int], seed: int = 0):
    """``(1, 1, D, H, W)`` float32 in [0, 1]: a synthetic abdominal CT, HU window [-1000, 1000]."""
    import torch

    hu = torch.from_numpy(make_phantom(seed, shape=tuple(int(s) for s in size)).image.astype("float32"))
    return ((hu.clamp(-1000, 1000) + 1000) / 2000)[None, None]


def _finite(name: str, values: Any) -> str:
    import torch

    tensors = [v for v in (values if isinstance(values, (list, tuple)) else [values]) if isinstance(v, torch.Tensor)]
    if not tensors:
        raise ValueError(f"{name}: no output")
    bad = [tuple(t.shape) for t in tensors if not torch.isfinite(t.float()).all()]
    if bad:
        raise ValueError(f"{name}: non-finite values in outputs of shape {bad}")
    return ", ".join(f"{tuple(t.shape)}" for t in tensors)


def _img_size(module) -> tuple[int, int, int]:
    size = getattr(getattr(module, "config", None), "img_size", None)
    if size is None:
        raise ValueError(f"{type(module).__name__}: no config.img_size to size the phantom")
    return tuple(int(s) for s in size)


def _tokenizer(dst: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dst)) if any((dst / f).is_file() for f in TOKENIZER_FILES) else None


def _forward_clip(model, dst: Path) -> str:
    import torch

    tok = _tokenizer(dst)
    if tok is not None:
        enc = tok(["The liver is enlarged."], return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
    else:  # no tokenizer saved (M3D-CLIP ships none): a few in-vocabulary ids
        ids = torch.arange(1, 9)[None] % model.text_model.config.vocab_size
        mask = torch.ones_like(ids)
    with torch.no_grad():
        image = model.encode_image(phantom_volume(_img_size(model.vision_model)))
        text = model.encode_text(ids, mask)
    return "image / text embeddings " + _finite("CLIP", [image, text])


def _forward_seg(model, dst: Path) -> str:
    import torch

    volume = phantom_volume(model.img_size)
    tok = _tokenizer(dst)
    kwargs = {}
    if getattr(model, "text_encoder", None) is not None:
        if tok is None:
            raise ValueError("the model has a text encoder but no tokenizer was saved (pass --tokenizer)")
        enc = tok([model.prompt_text("liver")], return_tensors="pt")
        kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    else:
        kwargs = {"text_embedding": torch.zeros(1, int(model.config.embed_dim))}
    with torch.no_grad():
        out = model(volume, **kwargs)
    logits = out["logits"] if isinstance(out, dict) else getattr(out, "logits", out)
    return "mask logits " + _finite("segmentation", logits)


def _forward_llm(model, dst: Path, max_new_tokens: int = 8) -> tuple[str, str]:
    import torch

    processor = LaMedProcessor.from_pretrained(dst)
    volume = phantom_volume(_img_size(model.towers[0]))
    batch = processor([PROMPT], images=volume)
    with torch.no_grad():
        logits = model(**batch).logits
    forward = "logits " + _finite("LLM", logits)
    text = generate_texts(model, processor, volume, [PROMPT], max_new_tokens=max_new_tokens, decoding="greedy")[0]
    return forward, f"{max_new_tokens} greedy tokens: {text!r}"


def verify_import(family: str, model, report, dst) -> VerifyResult:
    """Run the checks on an imported ``model`` (with its key ``report``) saved in ``dst``."""

    dst = Path(dst)
    result = VerifyResult(family)
    dropped = report.dropped_by_reason()
    detail = f"{report.consumed} of {report.source_keys} published keys loaded strictly, {len(report.dropped)} dropped"
    detail += "".join(f"\n{len(keys)} x {reason} (e.g. {keys[0]})" for reason, keys in dropped.items())
    result.add("keys", "PASS" if report.ok else "FAIL", detail)
    published = PUBLISHED.get(family)
    if published is None or report.source_values is None:
        result.add("size", "WARN", f"{report.source_values} values; no published count for {family}")
    else:
        same = report.source_values == published.values
        result.add(
            "size",
            "PASS" if same else "WARN",
            f"{report.source_values:,} values, published {published.release}: {published.values:,}"
            + ("" if same else " (another variant or a damaged download)"),
        )
    model = model.eval()
    kind = RELEASES[family].kind
    try:
        if kind == "clip":
            result.add("forward", "PASS", _forward_clip(model, dst))
        elif kind == "seg":
            result.add("forward", "PASS", _forward_seg(model, dst))
        else:
            forward, text = _forward_llm(model, dst)
            result.add("forward", "PASS", forward)
            result.add("generate", "PASS", text)
    except (ValueError, RuntimeError) as exc:
        result.add("forward", "FAIL", f"{type(exc).__name__}: {exc}")
    quirks = quirks_on(model)
    result.add("quirks", "PASS", "; ".join(q.split(":", 1)[0] for q in quirks) if quirks else "none")
    return result


__all__ = ["VerifyResult", "phantom_volume", "verify_import"]
