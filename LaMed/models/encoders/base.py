"""The interface every 3D vision encoder implements (docs/architecture.md, Contracts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class VisionEncoder(nn.Module):
    """Base class of the 3D encoders.

    Input volumes are ``(B, C, D, H, W)`` floats (C = 1 for CT/MR, intensities in [0, 1]).

    Subclasses set:
      * ``hidden_size``: channel width ``C_out`` of :meth:`forward_features` tokens;
      * ``grid_size``: token grid ``(d, h, w)`` of :meth:`forward_features` for the configured
        input size (without any CLS token);
      * ``num_prefix_tokens``: tokens prepended to the grid (1 with a CLS token, else 0);
    and implement :meth:`forward_features` and :meth:`forward_intermediates`.
    """

    hidden_size: int
    grid_size: tuple[int, int, int]
    num_prefix_tokens: int = 0
    grad_checkpointing: bool = False

    @property
    def num_tokens(self) -> int:
        """Tokens returned by :meth:`forward_features` (grid tokens plus prefix tokens)."""
        d, h, w = self.grid_size
        return d * h * w + self.num_prefix_tokens

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W) -> (B, N, hidden_size)`` with ``N = num_tokens``."""
        raise NotImplementedError

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Feature maps of several depths, each ``(B, C_i, d_i, h_i, w_i)``.

        ``indices`` selects blocks / stages (default: every stage of a hierarchical encoder, every
        block of a plain ViT); negative indices count from the end.
        """
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
