"""Published checkpoint layouts -> LaMed layouts, one small module per family.

``convert_state_dict(family, state_dict)`` renames / reshapes the keys of a published checkpoint
into ours. Each family module registers a converter with ``@register_converter("name")``; the
converter is a pure function ``dict -> dict`` (no I/O). ``load_converted`` loads the result with
strict key checking and raises a readable report of missing / unexpected / mis-shaped keys.
Converters pass the published tensor objects on; what they fold into new tensors or leave out on
purpose they record with ``note_derived`` / ``note_dropped``, so that :func:`account` can name every
published key the conversion did not consume (``lamed import`` refuses a file with such keys).
"""

from LaMed.models.convert.base import (
    CONVERTERS,
    Accounting,
    KeyReport,
    account,
    conversion_log,
    convert_state_dict,
    list_converters,
    load_converted,
    note_derived,
    note_dropped,
    register_converter,
)

__all__ = [
    "CONVERTERS",
    "Accounting",
    "KeyReport",
    "account",
    "conversion_log",
    "convert_state_dict",
    "list_converters",
    "load_converted",
    "note_derived",
    "note_dropped",
    "register_converter",
]
