"""Converter registry and strict loading with a readable key report."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Tuple

from LaMed.utils.registry import Registry

CONVERTERS: Registry = Registry("checkpoint family")
register_converter = CONVERTERS.register


def _load_family_modules() -> None:
    """Import every module of this package so their converters register."""
    import LaMed.models.convert as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def list_converters() -> List[str]:
    _load_family_modules()
    return CONVERTERS.names()


def convert_state_dict(family: str, state_dict: Mapping, **options) -> Dict:
    """Return ``state_dict`` (published layout of ``family``) renamed into LaMed's layout."""
    _load_family_modules()
    return CONVERTERS.get(family)(dict(state_dict), **options)


@dataclass
class KeyReport:
    """What did not match when loading a converted state dict."""

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint shape, model shape)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        if self.ok:
            return "all keys matched"
        lines = []
        for title, keys in (("missing in checkpoint", self.missing), ("unexpected in checkpoint", self.unexpected)):
            if keys:
                lines.append(f"{len(keys)} {title}:")
                lines += [f"  {k}" for k in keys[:50]] + ([f"  ... and {len(keys) - 50} more"] if len(keys) > 50 else [])
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
    module.load_state_dict(usable, strict=False)
    return report
