"""Mappings given as text on a command line (``--config '{...}'``, ``--text_config '{hidden_size: 64}'``)."""

from __future__ import annotations

from typing import Any


def parse_mapping(text: str, what: str) -> dict[str, Any]:
    """``text`` read as YAML (JSON is YAML too) -> a dict; empty text -> ``{}``.

    Raises ``ValueError`` naming ``what`` (e.g. ``"--config"``) when the text does not parse or is
    not a mapping.
    """
    import yaml

    if not text or not text.strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{what}: not a YAML / JSON mapping: {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a mapping like '{{key: value}}', got {type(value).__name__} {text!r}")
    return value
