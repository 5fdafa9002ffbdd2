"""A name -> factory registry, the one mechanism behind every ``create_*`` / ``list_*`` pair."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a variant name to a factory.

    ``kind`` only shapes error messages ("unknown encoder 'vit3d_bse'; did you mean 'vit3d_base'?").
    Registering the same name twice is an error, because silently replacing a variant would make
    a model's meaning depend on import order.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None, factory: Callable[..., T] | None = None):
        """Use as ``@REG.register("name")`` / ``@REG.register()`` or call ``REG.register(name, fn)``."""

        def add(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            self._entries[key] = fn
            return fn

        return add(factory) if factory is not None else add

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(self._entries)) or 'none'})"
            ) from None

    def create(self, name: str, **overrides) -> T:
        return self.get(name)(**overrides)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
