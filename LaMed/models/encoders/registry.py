"""Registry of 3D vision encoders: ``create_encoder(name, **overrides)``, ``list_encoders()``.

Variants are data: each registered name maps to a factory (usually a few lines that build one
generic class from a config). Tiny ``*_test`` variants live in the same registry.
Encoder modules register themselves on import; ``LaMed.models.encoders`` imports them all.
"""

from __future__ import annotations

from LaMed.utils.registry import Registry

ENCODERS: Registry = Registry("encoder")
register_encoder = ENCODERS.register


def create_encoder(name: str, **overrides):
    """Build the encoder variant ``name``; ``overrides`` replace fields of its config."""
    import LaMed.models.encoders  # noqa: F401  (registers every built-in variant)

    return ENCODERS.create(name, **overrides)


def list_encoders() -> list[str]:
    import LaMed.models.encoders  # noqa: F401

    return ENCODERS.names()
