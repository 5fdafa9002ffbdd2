"""``lamed merge-lora CHECKPOINT OUT``: fold a LoRA run into a plain HF checkpoint.

``CHECKPOINT`` is a ``save_trainable_only`` folder of a LoRA stage (``trainable.safetensors`` +
``trainable_manifest.json``, written by ``lamed train``; the final output folder or a
``checkpoint-N``). The frozen base is rebuilt from the manifest's base checkpoint (the stage-1
output, or the ``base_model`` folder an assembled run saved), the same LoRA adapters are attached
(the manifest's ``stage`` section), the trained tensors (adapters and fully trained modules) are
loaded strictly, the adapters are merged, and the result is written with ``save_pretrained``
(safetensors) plus the processor: a folder ``AutoModelForCausalLM.from_pretrained`` loads directly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from LaMed.models.mllm import LaMedProcessor
from LaMed.train.args import StageArguments
from LaMed.train.checkpoint import TRAINABLE_MANIFEST, load_trainable
from LaMed.train.stages import apply_lora


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="LoRA run folder with trainable.safetensors and trainable_manifest.json")
    parser.add_argument("out", help="output folder for the merged model")
    parser.add_argument("--base", default=None, help="base model folder (default: the manifest's base checkpoint)")


def merge_lora(checkpoint: str | Path, out: str | Path, base: str | Path | None = None):
    """Merge and save; returns the merged plain model (``LaMedForCausalLM`` or its ``[SEG]`` subclass)."""
    from transformers import AutoModelForCausalLM

    import LaMed.models.reasoning  # noqa: F401  (registers lamed_seg, so a [SEG] model merges with its head)

    checkpoint, out = Path(checkpoint), Path(out)
    manifest_path = checkpoint / TRAINABLE_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: not found (merge-lora needs a save_trainable_only LoRA checkpoint)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    base = Path(base) if base else Path(manifest.get("base_checkpoints", {}).get("", ""))
    if not str(base) or not (base / "config.json").is_file():
        raise FileNotFoundError(f"{manifest_path}: base checkpoint {str(base)!r} has no config.json; pass --base")
    stage_values = manifest.get("stage", {})
    stage = StageArguments(**{k: v for k, v in stage_values.items() if k in StageArguments.__dataclass_fields__})
    if not stage.lora_enabled:
        raise ValueError(f"{manifest_path}: stage.lora_r is {stage.lora_r}; this run has no LoRA to merge")
    model = AutoModelForCausalLM.from_pretrained(str(base))  # LaMed or LaMed-seg, by config
    peft_model = apply_lora(model, stage)
    load_trainable(peft_model, checkpoint)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out)
    proc_dir = checkpoint if (checkpoint / "lamed_processor.json").is_file() else base
    if (proc_dir / "lamed_processor.json").is_file():
        LaMedProcessor.from_pretrained(proc_dir).save_pretrained(out)
    return merged


def run(args: argparse.Namespace) -> int:
    merge_lora(args.checkpoint, args.out, args.base)
    print(f"merged {args.checkpoint} into {args.out}")
    return 0
