"""Per-token projectors: identity, linear and MLP (no change in token count).

``(B, N, in_dim) -> (B, N, out_dim)`` with ``N = d*h*w + num_prefix_tokens`` of the configured
``grid_size``. Parameters live in ``projector`` (an ``nn.Sequential`` of Linear [+ GELU] layers), so
an M3D "mlp" projector loads as ``projector.{0,2}.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from LaMed.models.projectors.base import Projector, Tokens, grid_tokens, make_mlp, register_variant


@dataclass
class TokenMLPConfig:
    """``num_layers`` Linear layers (0 = identity) with ``act`` between them."""

    in_dim: int = 768
    out_dim: int | None = 3072  # None (identity only): the input width
    grid_size: tuple = (8, 16, 16)
    num_prefix_tokens: int = 0
    num_layers: int = 2
    act: str = "gelu"

    def __post_init__(self):
        self.grid_size = tuple(self.grid_size)
        if len(self.grid_size) != 3:
            raise ValueError(f"TokenMLPConfig.grid_size must be (d, h, w), got {self.grid_size}")
        if self.num_layers < 0:
            raise ValueError(f"TokenMLPConfig.num_layers must be >= 0, got {self.num_layers}")
        if self.out_dim is None and self.num_layers == 0:
            self.out_dim = self.in_dim
        if self.out_dim is None:
            raise ValueError("TokenMLPConfig.out_dim is required when num_layers > 0")
        if self.num_layers == 0 and self.out_dim != self.in_dim:
            raise ValueError(f"identity projector: out_dim ({self.out_dim}) must equal in_dim ({self.in_dim})")


class TokenMLPProjector(Projector):
    """Identity / linear / MLP applied to every token independently."""

    def __init__(self, config: TokenMLPConfig):
        super().__init__()
        self.config = config
        c = config
        self.projector = make_mlp(c.in_dim, c.out_dim, c.num_layers, c.act) if c.num_layers else nn.Identity()

    @property
    def num_tokens(self) -> int:
        return grid_tokens(self.config.grid_size) + self.config.num_prefix_tokens

    def forward(self, x: Tokens) -> torch.Tensor:
        (x,) = self._streams(x, [(self.num_tokens, self.config.in_dim)])
        return self.projector(x)


register_variant(
    "identity", TokenMLPProjector, TokenMLPConfig, "Tokens passed through unchanged.", num_layers=0, out_dim=None
)
register_variant(
    "linear", TokenMLPProjector, TokenMLPConfig, "One Linear per token (M3D 'linear', 2048 tokens).", num_layers=1
)
register_variant("mlp", TokenMLPProjector, TokenMLPConfig, "Linear, GELU, Linear per token (n layers via num_layers).")
register_variant(
    "mlp_test",
    TokenMLPProjector,
    TokenMLPConfig,
    "Tiny MLP projector for tests.",
    in_dim=32,
    out_dim=64,
    grid_size=(1, 2, 2),
)
