"""The task registry (this package also holds the task modules): how a model family plugs into ``lamed train``.

A *task* knows how to build a model, its datasets and its collator from three argument
dataclasses. Everything else (recipe parsing, stage switches, the Trainer, checkpoints, resume,
bad-sample handling, launchers) is shared. A task is registered by decorating its build function::

    @dataclass
    class ClipModelArguments:
        vision_encoder: str = "vit3d_base"

    @dataclass
    class ClipDataArguments:
        train_manifest: str = "data/m3d_cap/train.json"

    @register_task("clip", model_args=ClipModelArguments, data_args=ClipDataArguments)
    def build_clip(model_args, data_args, training_args) -> TaskBundle:
        ...
        return TaskBundle(model=model, train_dataset=train, eval_dataset=val, data_collator=collate)

A recipe then says ``task: clip``. Task modules are imported lazily, on first lookup, so that
``lamed --help`` and the recipe checks stay cheap: ``get_task("clip")`` imports, in order,
``LaMed.train.tasks.clip`` (the home of the tasks the other issues add), the module named in
``TASK_MODULES`` for aliases, or, for ``task: some.module:name``, ``some.module`` (a task
defined outside the package, e.g. in a user's project or in the test-suite).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from LaMed.data.prepared import manifest_preprocessing
from LaMed.utils.registry import Registry


@dataclass
class NoArguments:
    """Placeholder argument dataclass for a task that needs no model or data fields."""


@dataclass
class TaskBundle:
    """What a task's build function returns; the entry point turns it into a Trainer.

    Attributes:
        model: the ``torch.nn.Module`` to train. Its ``forward(**batch)`` returns a dict or
            ``ModelOutput`` with ``loss`` (a scalar tensor) and optionally named parts
            ``loss_<name>`` (detached or not; they are only logged).
        train_dataset / eval_dataset: map-style datasets. Items that cannot be read should raise
            (``LaMed.train.data.SampleError`` ideally); the entry point wraps the datasets so
            that such items are skipped, counted and reported, not replaced.
        data_collator: ``list[item] -> batch dict``; ``None`` uses ``torch.utils.data.default_collate``.
        compute_metrics: the evaluation hook (``EvalPrediction -> dict``) run at each evaluation.
        preprocess_logits_for_metrics: optional reduction of logits before they are gathered.
        callbacks: extra ``TrainerCallback`` instances (e.g. an evaluation callback).
        base_checkpoints: where the frozen parts came from, ``{module prefix: path or hub id}``;
            written in the manifest of a ``save_trainable_only`` checkpoint so that it can be
            rebuilt (frozen base + saved trainable parts).
        processing_class: tokenizer / processor saved next to the checkpoints.
    """

    model: Any
    train_dataset: Any = None
    eval_dataset: Any = None
    data_collator: Callable | None = None
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    callbacks: Sequence[Any] = ()
    base_checkpoints: dict[str, str] = field(default_factory=dict)
    processing_class: Any = None


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its argument dataclasses and its build function."""

    name: str
    model_args: type
    data_args: type
    build: Callable[..., TaskBundle]
    description: str = ""


_TASKS: Registry[TaskSpec] = Registry("training task")

# Task names whose module is not ``LaMed.train.tasks.<name>`` (several tasks in one module).
# The issues that add tasks extend this table, e.g. "m3d_clip": "LaMed.train.tasks.clip".
TASK_MODULES: dict[str, str] = {}


def register_task(name: str, model_args: type = NoArguments, data_args: type = NoArguments, description: str = ""):
    """Decorator registering ``build(model_args, data_args, training_args) -> TaskBundle`` as ``name``.

    ``model_args`` / ``data_args`` are dataclasses whose fields become the ``model:`` / ``data:``
    sections of a recipe and ``--field value`` command-line overrides. Their field names must not
    repeat a field of ``LaMedTrainingArguments`` or ``StageArguments`` (checked at parse time).
    """
    for kind, cls in (("model_args", model_args), ("data_args", data_args)):
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"register_task('{name}'): {kind} must be a dataclass, got {cls!r}")

    def add(build: Callable[..., TaskBundle]) -> Callable[..., TaskBundle]:
        first_doc_line = next(iter((build.__doc__ or "").strip().splitlines()), "")
        spec = TaskSpec(name, model_args, data_args, build, description or first_doc_line)
        _TASKS.register(name, lambda: spec)
        return build

    return add


def _import_for(name: str) -> None:
    """Import the module expected to register ``name`` (see the module docstring)."""
    if ":" in name:
        module = name.split(":", 1)[0]
    else:
        module = TASK_MODULES.get(name, f"LaMed.train.tasks.{name}")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only "the task module itself does not exist" means "unknown task"; a missing
        # dependency inside an existing task module must surface as it is.
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise


def get_task(name: str) -> TaskSpec:
    """Return the registered task ``name`` (``"clip"`` or ``"package.module:name"``), importing it if needed."""
    key = name.split(":", 1)[-1]
    if key not in _TASKS:
        _import_for(name)
    return _TASKS.get(key)()


def list_tasks() -> tuple[str, ...]:
    """Names of the tasks registered so far (task modules are imported lazily, so this is what
    has been imported, plus every module under ``LaMed/train/tasks/``)."""
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return tuple(_TASKS.names())


def store_preprocessing(model, train_manifest: str) -> None:
    """Record in ``model.config.preprocessing`` how the training data was prepared (when the manifest
    says), so inference feeds scanner volumes the same way. The data a model is trained on decides:
    a record inherited from a checkpoint it started from is replaced."""

    config = getattr(model, "config", None)
    if config is None:
        return
    record = manifest_preprocessing(train_manifest) if train_manifest else None
    if record is not None:
        config.preprocessing = record
