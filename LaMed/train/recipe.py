"""Recipes: one YAML file per published training stage, plus ``--key value`` overrides.

A recipe names its task and holds one section per argument dataclass::

    task: clip                       # a registered task (LaMed.train.tasks)
    base: m3d_clip.yaml              # optional: start from another recipe (relative path; a list merges in order)
    description: M3D-CLIP, 3D ViT-B + BERT, InfoNCE with all-gather
    model:    {...}                  # the task's ModelArguments
    data:     {...}                  # the task's DataArguments
    training: {...}                  # LaMedTrainingArguments (HF TrainingArguments + LaMed fields)
    stage:                           # StageArguments
      freeze: ["*"]
      trainable: [mm_projector]
      lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: [qkv_proj, o_proj]}

Parsing goes through ``HfArgumentParser`` over the four dataclasses: the recipe values become the
parser defaults and the command line wins (``--learning_rate 5e-5``, ``--lora.r 8``,
``--training.max_steps=10``). Unknown keys, in the file or on the command line, are errors that name
the recipe file and the key, with close matches suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LaMed.data.presets import list_presets
from LaMed.models.encoders.registry import list_encoders
from LaMed.models.projectors.registry import list_projectors
from LaMed.models.segmentation.variants import list_seg_models
from LaMed.train.args import LaMedTrainingArguments, StageArguments
from LaMed.train.tasks import get_task
from LaMed.utils.mapping import parse_mapping

SECTIONS = ("model", "data", "training", "stage")
TOP_LEVEL_KEYS = ("task", "base", "description") + SECTIONS


class RecipeError(ValueError):
    """A recipe or an override is invalid; the message starts with the recipe path."""


@dataclass
class Recipe:
    """A parsed recipe: the task name and the four argument dataclass instances."""

    path: Path | None
    task: str
    model_args: Any
    data_args: Any
    training_args: Any
    stage_args: Any
    raw: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Resolved values per section (what actually runs), e.g. to save next to the checkpoints."""

        def plain(v):
            if isinstance(v, enum.Enum):
                return plain(v.value)
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {str(k): plain(x) for k, x in v.items()}
            if v is None or type(v) in (str, int, float, bool):
                return v
            return str(v)

        def values(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}

        # Keep the training section readable: what the recipe or the command line set, plus the
        # essentials; every other field has its stock TrainingArguments default.
        named = set(self.raw.get("training", {})) | {"output_dir", "seed", "resume"}
        named |= {
            tok[2:].split("=")[0].replace(".", "_").replace("-", "_").removeprefix("training_")
            for tok in self.overrides
            if tok.startswith("--")
        }
        training = {k: v for k, v in values(self.training_args).items() if k in named}
        return {
            "task": self.task,
            "model": values(self.model_args),
            "data": values(self.data_args),
            "training": training,
            "stage": values(self.stage_args),
        }


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file, following ``base:`` (relative to the file) with a deep merge.

    ``base`` is one file or a list of files, merged left to right, then this file's values on top
    (``base: [m3d_clip.yaml, _tiny_cpu.yaml]``: the full recipe, then the shared CPU block).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    if path.resolve() in _seen:
        raise RecipeError(f"{path}: 'base' chain loops back to this file ({' -> '.join(map(str, _seen))})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise RecipeError(
                f"{path}: unknown top-level key '{key}'{_hint(key, TOP_LEVEL_KEYS)} "
                f"(expected {', '.join(TOP_LEVEL_KEYS)})"
            )
    for section in SECTIONS:
        if data.get(section) is None:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise RecipeError(f"{path}: section '{section}' must be a mapping, got {type(data[section]).__name__}")
    base = data.pop("base", None)
    bases = base if isinstance(base, list) else [base] if base else []
    merged: dict[str, Any] = {}
    for name in bases:
        if not isinstance(name, str) or not name:
            raise RecipeError(f"{path}: 'base' must be a file name or a list of file names, got {base!r}")
        merged = _deep_merge(merged, load_recipe_yaml(path.parent / name, _seen + (path.resolve(),)))
    return _deep_merge(merged, data) if bases else data


def _hint(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _unwrap_optional(hint):
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if str in args and len(args) > 1:
            return Any  # "dict | str", "str | list[str]": anything goes, the dataclass checks
        return args[0] if len(args) == 1 else Any
    return hint


def _check_value(where: str, name: str, value: Any, hint) -> Any:
    """Type-check a non-string YAML value against a field's annotation (strings are parsed by argparse)."""
    if value is None or isinstance(value, str):
        return value
    hint = _unwrap_optional(hint)
    origin = typing.get_origin(hint) or hint
    bad = None
    if hint is Any or origin is typing.Literal:
        return value
    if origin in (list, tuple, Sequence):
        value = list(value) if isinstance(value, (list, tuple)) else [value]
    elif origin is bool:
        bad = not isinstance(value, bool)
    elif origin is int:
        bad = isinstance(value, bool) or not isinstance(value, int)
    elif origin is float:
        bad = isinstance(value, bool) or not isinstance(value, (int, float))
        value = value if bad else float(value)
    elif origin is str:
        bad = not isinstance(value, (int, float))  # numbers given for a str field are accepted as text
        value = value if bad else str(value)
    elif origin is dict:
        bad = not isinstance(value, dict)
    if bad:
        expected = getattr(origin, "__name__", str(origin))
        raise RecipeError(f"{where}: '{name}' expects {expected}, got {type(value).__name__} {value!r}")
    return value


def _field_map(classes: Sequence[type], task_name: str) -> dict[str, tuple[int, Any]]:
    """field name -> (index of its dataclass, type hint); names must be unique across the classes."""
    owners: dict[str, tuple[int, Any]] = {}
    for i, cls in enumerate(classes):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.name in owners:
                other = classes[owners[f.name][0]].__name__
                raise RecipeError(
                    f"task '{task_name}': field '{f.name}' is defined by both {other} and "
                    f"{cls.__name__}; rename one (fields share one command-line namespace)"
                )
            owners[f.name] = (i, hints[f.name])
    return owners


def _flatten_section(
    where: str, section: str, values: dict[str, Any], cls: type, fields: dict[str, tuple[int, Any]], index: int
) -> dict[str, Any]:
    own = {n for n, (i, _) in fields.items() if i == index}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in own:
            out[key] = value
        elif isinstance(value, dict) and value and all(f"{key}_{k}" in own for k in value):
            out.update({f"{key}_{k}": v for k, v in value.items()})  # lora: {r: 16} -> lora_r
        else:
            nested = [f"{key}_{k}" for k in value if f"{key}_{k}" not in own] if isinstance(value, dict) else []
            shown = f"{section}.{key}" + (f" ({', '.join(nested)})" if nested else "")
            elsewhere = ""
            if key in fields and fields[key][0] != index:
                elsewhere = f"; '{key}' belongs to the '{SECTIONS[fields[key][0]]}' section"
            raise RecipeError(
                f"{where}: unknown key '{shown}': not a field of {cls.__name__}{_hint(key, own)}{elsewhere}"
            )
    return {k: _check_value(where, f"{section}.{k}", v, fields[k][1]) for k, v in out.items()}


def _is_mapping(hint) -> bool:
    hint = _unwrap_optional(hint)
    return (typing.get_origin(hint) or hint) is dict


def _mapping_override(where: str, name: str):
    """argparse ``type`` of a dict field: the command-line value is read as YAML (JSON is YAML too)."""

    def parse(text: str) -> dict[str, Any]:
        try:
            return parse_mapping(text, f"--{name}")
        except ValueError as exc:
            raise RecipeError(f"{where}: {exc}") from None

    parse.__name__ = "mapping"
    return parse


def _normalise_overrides(where: str, overrides: Sequence[str], fields: dict[str, Any]) -> list[str]:
    """``--training.lr=1e-4`` / ``--lora.r 8`` / ``--lora-r 8`` -> ``--lora_r 8`` (argparse form)."""
    out: list[str] = []
    for tok in overrides:
        if not tok.startswith("--") or tok == "--":
            out.append(tok)
            continue
        name, eq, val = tok[2:].partition("=")
        parts = name.split(".")
        if len(parts) > 1 and parts[0] in SECTIONS:
            parts = parts[1:]
        flat = "_".join(parts).replace("-", "_")
        no_flat = flat[3:] if flat.startswith("no_") else None
        if flat not in fields and no_flat not in fields:
            raise RecipeError(f"{where}: unknown override '--{name}'{_hint(flat, fields)}")
        out.append(f"--{flat}")
        if eq:
            out.append(val)
    return out


def _has_accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    for name in ("mps", "xpu", "npu", "mlu", "musa", "hpu"):
        backend = getattr(torch, name, None) or getattr(torch.backends, name, None)
        try:
            if backend is not None and backend.is_available():
                return True
        except Exception:  # noqa: BLE001 - a half-installed backend is no accelerator
            pass
    return False


def _registry_fields():
    """``(field, kind, names())`` for every recipe field whose value must name a registered variant.

    The registries are imported here, not at module level: parsing a recipe must not import the
    model code of every family until it is needed, and ``--check`` stays quick.
    """

    return (
        ("vision_encoder", "encoder", list_encoders),
        ("vision_tower", "encoder", list_encoders),
        ("projector", "projector", list_projectors),
        ("variant", "segmentation variant", list_seg_models),
        ("seg_variant", "segmentation variant", list_seg_models),
        ("preprocess_preset", "preprocessing preset", list_presets),
    )


def check_registry_names(where: str, **sections: Any) -> None:
    """Refuse a recipe that names an encoder / projector / segmentation variant / preset that is
    not registered, before any model is built, with the valid choices in the message.

    Raises:
        RecipeError: ``"<recipe>: model.projector: unknown projector 'sppp'; did you mean 'spp'?
            (known: ...)"``.
    """
    for section, obj in sections.items():
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        overrides = values.get("config_overrides")
        for name, kind, known in _registry_fields():
            candidates = []
            if isinstance(values.get(name), str) and values[name]:
                candidates.append((f"{section}.{name}", values[name]))
            elif isinstance(values.get(name), (list, tuple)):
                candidates.extend((f"{section}.{name}", v) for v in values[name])
            if isinstance(overrides, dict) and isinstance(overrides.get(name), str):
                candidates.append((f"{section}.config_overrides.{name}", overrides[name]))
            if not candidates:
                continue
            choices = known()
            for label, value in candidates:
                if value not in choices:
                    close = difflib.get_close_matches(str(value), choices, n=3)
                    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                    raise RecipeError(f"{where}: {label}: unknown {kind} {value!r}{hint} (known: {', '.join(choices)})")


def parse_recipe(path: str | Path | None, overrides: Sequence[str] = (), data: dict[str, Any] | None = None) -> Recipe:
    """Parse a recipe file (or an already-loaded ``data`` mapping) plus command-line overrides.

    Returns a :class:`Recipe` whose ``training_args`` is a ``LaMedTrainingArguments`` (built once,
    after the overrides, so its ``__post_init__`` sees the final values).

    Raises:
        RecipeError: unknown key or override, wrong value type, missing ``task``; the message
            starts with the recipe path.
    """
    from transformers import HfArgumentParser

    where = str(path) if path is not None else "<recipe>"
    if data is None:
        data = load_recipe_yaml(path)
    else:
        data = _deep_merge({s: {} for s in SECTIONS}, data)
    task_name = data.get("task")
    if not task_name or not isinstance(task_name, str):
        raise RecipeError(f"{where}: missing 'task:' (the name of a registered training task)")
    try:
        spec = get_task(task_name)
    except KeyError as exc:
        raise RecipeError(f"{where}: {exc.args[0]}") from None

    classes = (spec.model_args, spec.data_args, LaMedTrainingArguments, StageArguments)
    fields = _field_map(classes, task_name)
    defaults: dict[str, Any] = {}
    for i, section in enumerate(SECTIONS):
        defaults.update(_flatten_section(where, section, data[section], classes[i], fields, i))

    if "use_cpu" not in defaults and not _has_accelerator():
        # Without a GPU the Trainer trains on the CPU anyway; use_cpu only lifts its refusal of
        # bf16 / fp16 there ("Your setup doesn't support bf16/gpu"), so full recipes still parse,
        # --check works and tiny twins with bf16 run. An explicit use_cpu (file or CLI) wins.
        defaults["use_cpu"] = True

    class _Parser(HfArgumentParser):
        def error(self, message):  # argparse would print usage and exit(2)
            raise RecipeError(f"{where}: {message}")

    parser = _Parser(classes)
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False  # the recipe provides it
        if action.dest in fields and _is_mapping(fields[action.dest][1]):
            action.type = _mapping_override(where, action.dest)  # '--text_config {hidden_size: 64}'
    argv = _normalise_overrides(where, list(overrides), fields)
    try:
        model_args, data_args, training_args, stage_args, rest = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True, look_for_args_file=False
        )
    except RecipeError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{where}: {exc}") from exc
    if rest:
        raise RecipeError(f"{where}: unexpected command-line values {rest} (overrides are '--name value' pairs)")
    check_registry_names(where, model=model_args, data=data_args)
    return Recipe(
        Path(path) if path is not None else None,
        task_name,
        model_args,
        data_args,
        training_args,
        stage_args,
        raw=data,
        overrides=list(overrides),
    )
