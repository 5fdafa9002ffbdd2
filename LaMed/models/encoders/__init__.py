"""3D vision encoders.

Importing this package imports every module in it, and each module registers its variants with
``register_encoder``; ``create_encoder(name)`` / ``list_encoders()`` are the public entry points.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from LaMed.models.encoders.registry import ENCODERS, create_encoder, list_encoders, register_encoder

for _info in _pkgutil.iter_modules(__path__):
    if _info.name != "registry":
        _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["ENCODERS", "create_encoder", "list_encoders", "register_encoder"]
