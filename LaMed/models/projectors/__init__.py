"""Multimodal projectors. Importing this package registers every built-in variant."""

from LaMed.models.projectors.registry import PROJECTORS, create_projector, list_projectors, register_projector

__all__ = ["PROJECTORS", "create_projector", "list_projectors", "register_projector"]
