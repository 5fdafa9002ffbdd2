"""Published checkpoint layouts -> LaMed layouts, one small module per family.

``convert_state_dict(family, state_dict)`` renames / reshapes the keys of a published checkpoint
into ours. Each family module registers a converter with ``@register_converter("name")``; the
converter is a pure function ``dict -> dict`` (no I/O). ``load_converted`` loads the result with
strict key checking and raises a readable report of missing / unexpected / mis-shaped keys.
"""

from LaMed.models.convert.base import (
    CONVERTERS,
    KeyReport,
    convert_state_dict,
    list_converters,
    load_converted,
    register_converter,
)

__all__ = ["CONVERTERS", "KeyReport", "convert_state_dict", "list_converters", "load_converted", "register_converter"]
