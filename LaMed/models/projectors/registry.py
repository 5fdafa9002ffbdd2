"""Registry of multimodal projectors (vision tokens -> LLM tokens): ``create_projector(name, **overrides)``, ``list_projectors()``.

Variants are data: each registered name maps to a factory (usually a few lines that build one
generic class from a config). Tiny ``*_test`` variants live in the same registry.
Projector modules register themselves on import; ``LaMed.models.projectors`` imports them all.
"""

from __future__ import annotations

from LaMed.utils.registry import Registry

PROJECTORS: Registry = Registry("projector")
register_projector = PROJECTORS.register


def create_projector(name: str, **overrides):
    """Build the projector variant ``name``; ``overrides`` replace fields of its config."""
    import LaMed.models.projectors  # noqa: F401  (registers every built-in variant)

    return PROJECTORS.create(name, **overrides)


def list_projectors() -> list[str]:
    import LaMed.models.projectors  # noqa: F401

    return PROJECTORS.names()
