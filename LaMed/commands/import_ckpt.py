"""``lamed import FAMILY SRC DST``: a published checkpoint (as downloaded) -> a LaMed model folder.

    lamed import m3d_clip  ~/hf/M3D-CLIP            models/m3d_clip   --tokenizer bert-base-uncased
    lamed import segvol    ~/hf/SegVol              models/segvol
    lamed import m3d_lamed ~/hf/M3D-LaMed-Phi-3-4B  models/m3d_lamed_phi3
    lamed import med3dvlm  ~/hf/Med3DVLM-Qwen-2.5-7B models/med3dvlm
    lamed import m3d_lamed_seg ~/hf/M3D-LaMed-Phi-3-4B models/m3d_lamed_seg_phi3
    lamed import r1seg_llm ~/hf/R1Seg-3D-Phi-3-4B   models/r1seg3d_phi3

``SRC`` is the downloaded folder (or one weights file); ``DST`` receives ``config.json``,
``model.safetensors`` and the tokenizer (plus ``lamed_processor.json`` for report / VQA and
reasoning-segmentation models),
loadable with ``from_pretrained`` (no ``trust_remote_code``) and runnable with ``lamed predict``.
The weights go through the family's converter (``LaMed.models.convert``) and load **strictly**;
the key report (missing / unexpected / mis-shaped keys) is printed, and a mismatch is an error.
``--config JSON`` replaces fields of the config derived for the family (e.g. a smaller published
variant, or sizes the checkpoint does not reveal).

Families (:data:`RELEASES`): CLIP ``m3d_clip``, ``hsenet_clip_stage1``, ``hsenet_clip_stage2``,
``med3dvlm_siglip``; segmentation ``segvol``, ``text3dsam``, ``r1seg_sam``; report / VQA
``m3d_lamed``, ``med3dvlm``, ``hsenet`` (the HSENet VLM release holds only the packers and LoRA
tensors: give ``--base`` = a LaMed model folder with Phi-4-mini and the 2E3 towers, built by the
HSENet recipes); reasoning segmentation (``[SEG]`` -> mask, loaded with
``LaMed.models.reasoning.LaMedSegForCausalLM``) ``m3d_lamed_seg`` (M3D-LaMed with its SegVol module,
a separate encoder) and ``r1seg_llm`` (R1Seg-3D Phi-3 / Llama-3, one ViT shared by the LLM and the
mask decoder; ``num_clicks`` of its config.json, else 2, sets the refinement passes).
Published models that splice image features by position are imported with
``image_insertion="legacy_offset"`` so that they reproduce their published outputs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from LaMed.models.card import write_model_card
from LaMed.models.convert.published import RELEASE_TOKENS, quirks_on
from LaMed.models.convert.releases import (
    RELEASES,
    TOKENIZER_FILES,
    _load_tokenizer,
    _overrides,
    build_release,
    read_published,
)
from LaMed.utils.atomic import write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", help=f"published checkpoint family: {', '.join(RELEASES)}")
    parser.add_argument("src", help="downloaded checkpoint folder (config.json + weights) or a weights file")
    parser.add_argument("dst", help="output folder (LaMed format)")
    parser.add_argument("--config", default="", help="JSON object of config fields replacing the derived ones")
    parser.add_argument(
        "--tokenizer", default="", help="tokenizer folder / hub id when SRC has none (M3D-CLIP: bert-base-uncased)"
    )
    parser.add_argument("--base", default="", help="hsenet: LaMed model folder the partial release is loaded over")
    parser.add_argument(
        "--lora-scaling", type=float, default=2.0, help="alpha / r for unmerged LoRA pairs (published 2)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="after importing, check what can be checked without the reference code (key report, "
        "published value count, a phantom forward pass, an LLM's greedy continuation) and "
        "print a one-screen report; exit status 1 when a check fails",
    )


def _model_card(family: str, report, quirks: list[str], overrides: Mapping, src: str) -> list[str]:
    """The import part of the model card: origin, key report, quirks switched on."""
    lines = [
        f"Imported with `lamed import {family}` from `{src}`.",
        "",
        "## Key report",
        "",
        f"- {report.consumed} of {report.source_keys} published tensors loaded strictly ({report}).",
    ]
    groups = report.dropped_by_reason()
    if groups:
        lines.append(f"- {len(report.dropped)} published tensors dropped on purpose:")
        for reason, keys in groups.items():
            lines.append(f"  - {reason} ({len(keys)}): " + ", ".join(f"`{k}`" for k in keys))
    else:
        lines.append("- no published tensor dropped.")
    lines += ["", "## Published quirks switched on", ""]
    lines += [f"- `{q.split(': ', 1)[0]}`: {q.split(': ', 1)[1]}" for q in quirks] or ["- none"]
    if overrides:
        lines += ["", "## Config overrides given with --config", "", f"`{json.dumps(dict(overrides))}`"]
    return lines


def import_checkpoint(
    family: str,
    src: str | Path,
    dst: str | Path,
    config: str | Mapping = "",
    tokenizer: str = "",
    base: str = "",
    lora_scaling: float = 2.0,
    overwrite: bool = False,
):
    """Convert ``src`` (published ``family``) into a LaMed folder ``dst``; returns ``(model, KeyReport)``.

    ``dst`` receives the model, its tokenizer / processor, ``lamed_import.json`` (the full key report)
    and ``README.md`` (a model card listing the dropped keys and the published quirks switched on).
    """

    if family not in RELEASES:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(RELEASES)}")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst}: exists and is not empty (pass --overwrite)")
    args = argparse.Namespace(src=str(src), tokenizer=tokenizer, base=base, lora_scaling=lora_scaling)
    importer = RELEASES[family]
    sd, published = read_published(src)
    overrides = dict(config) if isinstance(config, Mapping) else _overrides(config)
    model, report = build_release(family, sd, published, overrides, args)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    tok = _load_tokenizer(args)
    if importer.kind == "mllm":
        from LaMed.models.mllm import LaMedProcessor

        LaMedProcessor(tok, model.num_image_tokens, lamed_tokens=RELEASE_TOKENS[family]).save_pretrained(dst)
    elif tok is not None:
        tok.save_pretrained(dst)
    quirks = quirks_on(model)
    write_json_atomic(
        dst / "lamed_import.json",
        {
            "family": family,
            "published_as": importer.description,
            "source": str(src),
            "config_overrides": overrides,
            "key_report": str(report),
            "published_keys": report.source_keys,
            "consumed_keys": report.consumed,
            "dropped_keys": [{"key": k, "reason": r} for k, r in report.dropped],
            "quirks": quirks,
        },
    )
    write_model_card(
        model,
        dst,
        f"{importer.description}, imported into LaMed",
        _model_card(family, report, quirks, overrides, str(src)),
    )
    return model, report


def run(args: argparse.Namespace) -> int:
    if args.family not in RELEASES:
        raise ValueError(f"family {args.family!r}: expected one of {', '.join(RELEASES)}")
    try:
        model, report = import_checkpoint(
            args.family, args.src, args.dst, args.config, args.tokenizer, args.base, args.lora_scaling, args.overwrite
        )
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    if getattr(args, "verify", False):
        from LaMed.commands.import_verify import verify_import

        result = verify_import(args.family, model, report, args.dst)
        print(result.render())
        return 0 if result.ok else 1
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.family}: {n / 1e6:.1f} M parameters; key report: {report.summary()}")
    tok_note = (
        ""
        if any((Path(args.dst) / f).is_file() for f in TOKENIZER_FILES)
        else " (no tokenizer: pass --tokenizer to save one beside the model)"
    )
    print(f"written {args.dst}{tok_note}; load with from_pretrained or run with `lamed predict --model {args.dst} ...`")
    return 0
