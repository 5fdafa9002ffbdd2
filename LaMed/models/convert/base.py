"""Converter registry and strict loading with a readable key report."""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from LaMed.utils.registry import Registry

CONVERTERS: Registry = Registry("checkpoint family")
register_converter = CONVERTERS.register


def _load_family_modules() -> None:
    """Import every module of this package so their converters register."""
    import LaMed.models.convert as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def list_converters() -> list[str]:
    _load_family_modules()
    return CONVERTERS.names()


def convert_state_dict(family: str, state_dict: Mapping, **options) -> dict:
    """Return ``state_dict`` (published layout of ``family``) renamed into LaMed's layout."""
    _load_family_modules()
    return CONVERTERS.get(family)(dict(state_dict), **options)


# ---- which published tensors a conversion consumed ---------------------------------------------
# Converters rename keys and pass the *same tensor objects* on; a tensor of the published file that is
# in no converted value was either folded into a new tensor (a LoRA merge, a cast scalar: noted with
# ``note_derived``) or left out on purpose (``note_dropped`` with the reason the reference gives). Any
# other tensor left out is an error of the import: :func:`account` names it.
_LOG: contextvars.ContextVar[ConversionLog | None] = contextvars.ContextVar("lamed_conversion_log", default=None)

# Top-level entries of a training checkpoint that hold training state, not the model.
TRAINING_STATE = ("optimizer", "optimizer_state", "scheduler", "lr_scheduler", "scaler", "amp")


@dataclass
class ConversionLog:
    """Tensors (by identity) a conversion folded into others or dropped on purpose, with the reason."""

    derived: dict[int, str] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)


def note_dropped(value: Any, reason: str) -> None:
    """Record that published tensor ``value`` is left out on purpose (aliases, unused heads, buffers)."""
    log = _LOG.get()
    if log is not None:
        log.dropped[id(value)] = reason


def note_derived(*values: Any, how: str = "") -> None:
    """Record that published tensors ``values`` were folded into a new tensor (LoRA merge, dtype cast)."""
    log = _LOG.get()
    if log is not None:
        for v in values:
            log.derived[id(v)] = how


@contextlib.contextmanager
def conversion_log() -> Iterator[ConversionLog]:
    """Collect the ``note_*`` calls of the conversions run inside the ``with`` block."""
    log = ConversionLog()
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


def _tensors(sd: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, tensor)`` of every tensor in a (possibly nested) checkpoint mapping."""
    for key, value in sd.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _tensors(value, f"{name}.")
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            yield name, value


@dataclass
class Accounting:
    """Every tensor of a published file: consumed (loaded, possibly renamed or folded), dropped on
    purpose (with the reason) or unaccounted (an error)."""

    source_keys: int = 0
    source_values: int = 0
    consumed: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (published key, reason)
    unaccounted: list[str] = field(default_factory=list)


def account(published: Mapping, converted: Mapping, log: ConversionLog) -> Accounting:
    """Sort the tensors of ``published`` by what the conversion to ``converted`` did with them."""
    kept = {id(v) for v in converted.values()}
    out = Accounting()
    for key, value in _tensors(published):
        out.source_keys += 1
        out.source_values += int(value.numel())
        if id(value) in kept or id(value) in log.derived:
            out.consumed.append(key)
        elif id(value) in log.dropped:
            out.dropped.append((key, log.dropped[id(value)]))
        elif key.split(".", 1)[0] in TRAINING_STATE:
            out.dropped.append((key, "training state (optimizer / scheduler), not part of the model"))
        else:
            out.unaccounted.append(key)
    return out


@dataclass
class KeyReport:
    """What did not match when loading a converted state dict, and (for an import) what happened to
    every key of the published file."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint shape, model shape)
    source_keys: int | None = None  # tensors in the published file (import only)
    consumed: int | None = None
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (published key, documented reason)
    source_values: int | None = None  # values (parameters + buffers) in the published file

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def dropped_by_reason(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for key, reason in self.dropped:
            groups.setdefault(reason, []).append(key)
        return groups

    def summary(self, max_names: int = 6) -> str:
        """Short report: consumed / dropped counts and the dropped keys by reason (``max_names`` each)."""
        lines = [str(self)]
        if self.source_keys is not None:
            lines[0] += f"; {self.consumed} of {self.source_keys} published keys consumed, {len(self.dropped)} dropped"
        for reason, keys in self.dropped_by_reason().items():
            shown = ", ".join(keys[:max_names]) + (
                f", ... ({len(keys) - max_names} more)" if len(keys) > max_names else ""
            )
            lines.append(f"  dropped {len(keys)} ({reason}): {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        if self.ok:
            return "all keys matched"
        lines = []
        for title, keys in (("missing in checkpoint", self.missing), ("unexpected in checkpoint", self.unexpected)):
            if keys:
                lines.append(f"{len(keys)} {title}:")
                lines += [f"  {k}" for k in keys[:50]] + (
                    [f"  ... and {len(keys) - 50} more"] if len(keys) > 50 else []
                )
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} with a different shape (checkpoint vs model):")
            lines += [f"  {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:50]]
        return "\n".join(lines)


def load_converted(module, state_dict: Mapping, strict: bool = True, source: str = "checkpoint") -> KeyReport:
    """Load ``state_dict`` into ``module``; with ``strict`` any mismatch raises with the full report."""
    own = module.state_dict()
    report = KeyReport(
        missing=sorted(k for k in own if k not in state_dict),
        unexpected=sorted(k for k in state_dict if k not in own),
        mismatched=[
            (k, tuple(state_dict[k].shape), tuple(own[k].shape))
            for k in sorted(own)
            if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
        ],
    )
    if strict and not report.ok:
        raise KeyError(f"{source} does not match {type(module).__name__}:\n{report}")
    usable = {k: v for k, v in state_dict.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    # A model built on the meta device (a key / shape check without memory) takes the tensors as they are.
    on_meta = any(t.is_meta for t in own.values())
    module.load_state_dict(usable, strict=False, assign=on_meta)
    return report
