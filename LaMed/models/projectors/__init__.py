"""Multimodal projectors (vision tokens -> LLM tokens).

Importing this package imports every module in it, and each module registers its variants with
``register_projector``; ``create_projector(name)`` / ``list_projectors()`` are the public entry points.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from LaMed.models.projectors.registry import PROJECTORS, create_projector, list_projectors, register_projector

for _info in _pkgutil.iter_modules(__path__):
    if _info.name != "registry":
        _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["PROJECTORS", "create_projector", "list_projectors", "register_projector"]
