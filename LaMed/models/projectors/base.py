"""Common interface of the multimodal projectors and the small helpers they share.

A projector maps vision tokens to LLM input embeddings:
``forward(tokens (B, N, C_in) or [tokens_s (B, N_s, C_s), ...]) -> (B, T, out_hidden_size)``.
``T = num_tokens`` is computed from the config (input grid, pooling, token schedule), never passed by
hand, and every forward checks that the incoming token counts match the configured grids, so a
projector built for one encoder geometry fails loudly on another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import torch
from torch import nn

from LaMed.models.projectors.registry import register_projector

Tokens = torch.Tensor | Sequence[torch.Tensor]
ACTIVATIONS = ("gelu", "none")


def grid_tokens(grid: Sequence[int]) -> int:
    d, h, w = grid
    return int(d) * int(h) * int(w)


def make_mlp(in_dim: int, out_dim: int, num_layers: int = 2, act: str = "gelu") -> nn.Sequential:
    """``Linear(in, out)`` then ``num_layers - 1`` x ``[GELU,] Linear(out, out)``.

    With GELU the Linear layers sit at indices 0, 2, 4, ... (M3D's ``projector.{0,2}``); with
    ``act="none"`` they are consecutive (M3D's "linear" layer type).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs num_layers >= 1, got {num_layers}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(num_layers - 1):
        if act == "gelu":
            layers.append(nn.GELU())
        layers.append(nn.Linear(out_dim, out_dim))
    return nn.Sequential(*layers)


class Projector(nn.Module):
    """Base class: subclasses set ``self.config`` and implement :meth:`forward` and :attr:`num_tokens`."""

    num_streams: int = 1

    @property
    def num_tokens(self) -> int:
        """Output tokens ``T`` per sample."""
        raise NotImplementedError

    @property
    def out_hidden_size(self) -> int:
        """Output width (the LLM hidden size)."""
        return self.config.out_dim

    def _streams(self, x: Tokens, expected: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Normalise ``x`` to a list of ``(B, N_s, C_s)`` and check it against ``expected`` (N_s, C_s)."""
        xs = [x] if isinstance(x, torch.Tensor) else list(x)
        name = type(self).__name__
        if len(xs) != len(expected):
            raise ValueError(f"{name} takes {len(expected)} token stream(s), got {len(xs)}")
        for i, (t, (n, c)) in enumerate(zip(xs, expected)):
            if t.ndim != 3 or t.shape[1] != n or t.shape[2] != c:
                raise ValueError(
                    f"{name} stream {i}: expected tokens (B, {n}, {c}) from its config "
                    f"(grid / in_dim), got {tuple(t.shape)}"
                )
        return xs


def projector_inputs(encoder, indices: Sequence[int] | None = None) -> dict:
    """Config fields describing what ``encoder`` feeds a projector (so nobody types token counts).

    Without ``indices``: ``{"in_dim": hidden_size, "grid_size": grid_size}`` of
    ``forward_features``. With stage ``indices`` of a hierarchical encoder (one that has
    ``stage_channels`` and ``stage_grid_size``, e.g. DCFormer): ``{"in_dims": (...), "grid_sizes": (...)}``.
    """
    if indices is None:
        return {"in_dim": int(encoder.hidden_size), "grid_size": tuple(encoder.grid_size)}
    if not hasattr(encoder, "stage_grid_size"):
        raise TypeError(f"{type(encoder).__name__} has no stages; call projector_inputs(encoder) without indices")
    return {
        "in_dims": tuple(int(encoder.stage_channels[i]) for i in indices),
        "grid_sizes": tuple(tuple(encoder.stage_grid_size(i)) for i in indices),
    }


def register_variant(name: str, cls, config_cls, doc: str, **fixed):
    """Register ``name`` -> ``cls(config_cls(**fixed, **overrides))``; unknown override names are refused."""
    known = {f.name for f in fields(config_cls)}

    def factory(**overrides):
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown field(s) for projector '{name}': {sorted(unknown)} (known: {sorted(known)})")
        return cls(config_cls(**{**fixed, **overrides}))

    factory.__name__ = name
    factory.__doc__ = doc
    register_projector(name, factory)
    return factory
